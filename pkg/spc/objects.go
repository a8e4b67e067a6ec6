package spc

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kvnode/kvnode/pkg/keyvault"
)

// keyObjectNotAfter is a key some upstream versions documented, which
// kvnode does not implement; like any unknown key it is ignored with a
// warning.
const keyObjectNotAfter = "objectNotAfter"

// objectKeys are the keys of one entry of the objects array, each setting
// one field of a keyvault.ObjectSpec.
var objectKeys = map[string]func(*keyvault.ObjectSpec) *string{
	keyvault.FieldName:           func(o *keyvault.ObjectSpec) *string { return &o.Name },
	keyvault.FieldAlias:          func(o *keyvault.ObjectSpec) *string { return &o.Alias },
	keyvault.FieldType:           func(o *keyvault.ObjectSpec) *string { return &o.Type },
	keyvault.FieldVersion:        func(o *keyvault.ObjectSpec) *string { return &o.Version },
	keyvault.FieldVersionHistory: func(o *keyvault.ObjectSpec) *string { return &o.VersionHistory },
	keyvault.FieldFormat:         func(o *keyvault.ObjectSpec) *string { return &o.Format },
	keyvault.FieldEncoding:       func(o *keyvault.ObjectSpec) *string { return &o.Encoding },
	keyvault.FieldFilePermission: func(o *keyvault.ObjectSpec) *string { return &o.FilePermission },
	keyvault.FieldOptional:       func(o *keyvault.ObjectSpec) *string { return &o.Optional },
	keyvault.FieldKeyVaultName:   func(o *keyvault.ObjectSpec) *string { return &o.KeyVaultName },
}

// parseObjects reads the objects parameter:
//
//	array:
//	  - |
//	    objectName: secret1
//	    objectType: secret
//
// The YAML is read with yaml.v3, the parser upstream uses, walking its node
// tree instead of decoding into a struct so that keys match exactly, unknown
// keys are found, and unquoted values keep their text (yaml.v3 decodes
// "filePermission: 0600" into the string "0600"; a YAML-to-JSON decoder such
// as sigs.k8s.io/yaml would read it as the YAML 1.1 octal number 384). The
// objects' own rules are keyvault.ParseObjects'.
func parseObjects(s string, p *problems) []keyvault.Object {
	if s == "" {
		p.add(ParamObjects, "must be set")
		return nil
	}
	root, err := parseYAML(s)
	if err != nil {
		p.add(ParamObjects, "is not valid YAML: "+err.Error())
		return nil
	}
	if root == nil || root.Kind != yaml.MappingNode {
		p.add(ParamObjects, `must be a YAML mapping with an "array" list`)
		return nil
	}
	var array *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "array" {
			array = resolve(root.Content[i+1])
		}
	}
	if array == nil || isNull(array) || array.Kind == yaml.SequenceNode && len(array.Content) == 0 {
		// Upstream mounts an empty volume.
		p.warn(ParamObjects+".array", "lists no object: the volume is mounted empty")
		return nil
	}
	if array.Kind != yaml.SequenceNode {
		p.add(ParamObjects+".array", "must be a list of YAML strings, one per object")
		return nil
	}

	specs := make([]keyvault.ObjectSpec, len(array.Content))
	unreadable := map[int]bool{}
	for i, item := range array.Content {
		spec, ok := readObject(i, resolve(item), p)
		specs[i] = spec
		if !ok {
			unreadable[i] = true
		}
	}
	objects, problems := keyvault.ParseObjects(specs)
	name := func(i int) string { return fmt.Sprintf("%s[%d]", ParamObjects, i) }
	for i, spec := range specs {
		if spec.KeyVaultName == "" || unreadable[i] {
			continue
		}
		if detail, tolerated := VaultNameProblem(spec.KeyVaultName); detail != "" {
			if tolerated {
				p.warn(name(i)+"."+keyvault.FieldKeyVaultName, detail)
			} else {
				p.add(name(i)+"."+keyvault.FieldKeyVaultName, detail)
			}
		}
	}
	for _, op := range problems {
		if unreadable[op.Object] {
			continue // already reported as a whole
		}
		field := name(op.Object) + "." + op.Field
		if op.Tolerated {
			p.warn(field, op.Render(name))
		} else {
			p.add(field, op.Render(name))
		}
	}
	if len(unreadable) > 0 {
		return nil
	}
	return objects
}

// parseYAML returns the root node of a one-document YAML text, nil when the
// text is empty.
func parseYAML(s string) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		return nil, err
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		return resolve(doc.Content[0]), nil
	}
	return nil, nil
}

// resolve follows an alias (*anchor) to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// readObject reads entry i of the array into a spec, trimming values as
// upstream does. It reports false when the entry cannot be read at all.
func readObject(i int, item *yaml.Node, p *problems) (keyvault.ObjectSpec, bool) {
	prefix := fmt.Sprintf("%s[%d]", ParamObjects, i)
	var spec keyvault.ObjectSpec
	if item.Kind != yaml.ScalarNode {
		p.add(prefix, `must be a YAML string holding the object's fields (start the entry with "- |")`)
		return spec, false
	}
	if isNull(item) || strings.TrimSpace(item.Value) == "" {
		p.add(prefix, "is empty")
		return spec, false
	}
	n, err := parseYAML(item.Value)
	if err != nil {
		p.add(prefix, "is not valid YAML: "+err.Error())
		return spec, false
	}
	if n == nil || n.Kind != yaml.MappingNode {
		p.add(prefix, "must be a mapping of object fields (objectName, objectType, ...)")
		return spec, false
	}
	seen := map[string]bool{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := resolve(n.Content[j]), resolve(n.Content[j+1])
		if k.Kind != yaml.ScalarNode {
			p.add(prefix, "has a key that is not a string")
			continue
		}
		key := k.Value
		field, known := objectKeys[key]
		switch {
		case seen[key]:
			// yaml.v3 refuses a repeated key when upstream decodes the entry.
			p.add(prefix+"."+key, "is set twice")
			continue
		case key == keyObjectNotAfter:
			p.warn(prefix+"."+key, "is not supported by kvnode; ignored")
			continue
		case !known:
			p.warn(prefix+"."+key, unknownKeyDetail(key))
			continue
		case v.Kind != yaml.ScalarNode:
			p.add(prefix+"."+key, "must be a single value, not a list or mapping")
			continue
		case isNull(v):
			seen[key] = true
			continue
		}
		seen[key] = true
		*field(&spec) = strings.TrimSpace(v.Value)
	}
	return spec, true
}

// unknownKeyDetail says that an object key is ignored and, when it is a
// known key misspelt or in the wrong case, which one was meant.
func unknownKeyDetail(key string) string {
	const ignored = "is not an object field; ignored, as the upstream provider ignores it"
	for _, known := range slices.Sorted(maps.Keys(objectKeys)) {
		if strings.EqualFold(known, key) || editDistance(strings.ToLower(known), strings.ToLower(key)) <= 2 {
			return ignored + " (did you mean " + known + "?)"
		}
	}
	return ignored
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
