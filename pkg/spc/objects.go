package spc

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kvnode/kvnode/pkg/keyvault"
)

// MaxVersionHistory bounds objectVersionHistory. Every version is one more
// GET per pod per rotation (about every two minutes) against a vault limit of
// 4,000 per 10 s shared by the whole region's workloads, and the history
// needs one more list call; 20 versions cover any rotation scheme we know
// (current + previous, or a day of hourly keys) with room to spare.
const MaxVersionHistory = 20

// Key Vault object names: 1-127 characters of [0-9a-zA-Z-].
const maxObjectNameLen = 127

// maxSegmentLen is the longest file name Linux allows (NAME_MAX).
const maxSegmentLen = 255

// Keys of one entry of the objects array.
const (
	keyObjectName           = "objectName"
	keyObjectAlias          = "objectAlias"
	keyObjectType           = "objectType"
	keyObjectVersion        = "objectVersion"
	keyObjectVersionHistory = "objectVersionHistory"
	keyObjectFormat         = "objectFormat"
	keyObjectEncoding       = "objectEncoding"
	keyFilePermission       = "filePermission"
	// keyObjectNotAfter is a newer upstream key kvnode does not implement.
	keyObjectNotAfter = "objectNotAfter"
)

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
// as sigs.k8s.io/yaml would read it as the YAML 1.1 octal number 384).
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
		p.add(ParamObjects+".array", "must list at least one object")
		return nil
	}
	if array.Kind != yaml.SequenceNode {
		p.add(ParamObjects+".array", "must be a list of YAML strings, one per object")
		return nil
	}

	objects := make([]keyvault.Object, 0, len(array.Content))
	var files []fileEntry
	for i, item := range array.Content {
		obj, file, ok := parseObject(i, resolve(item), p)
		if ok {
			objects = append(objects, obj)
		}
		if file != nil {
			files = append(files, *file)
		}
	}
	checkCollisions(files, p)
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

// fileEntry is where one object is written, for the collision check.
type fileEntry struct {
	index int
	field string // objects[i].objectAlias or objects[i].objectName
	path  string
	// dir is true for a version history: the object owns the directory
	// path and writes path/0 ... path/N-1 in it.
	dir bool
}

// parseObject parses and checks entry i of the array. It returns the object
// when the entry is valid, and where it is written whenever its file name is
// valid (so that collisions are reported even next to other problems).
func parseObject(i int, item *yaml.Node, p *problems) (keyvault.Object, *fileEntry, bool) {
	prefix := fmt.Sprintf("%s[%d]", ParamObjects, i)
	before := len(*p)
	bad := func(key, detail string) { p.add(prefix+"."+key, detail) }

	if item.Kind != yaml.ScalarNode {
		p.add(prefix, `must be a YAML string holding the object's fields (start the entry with "- |")`)
		return keyvault.Object{}, nil, false
	}
	if isNull(item) || strings.TrimSpace(item.Value) == "" {
		p.add(prefix, "is empty")
		return keyvault.Object{}, nil, false
	}
	n, err := parseYAML(item.Value)
	if err != nil {
		p.add(prefix, "is not valid YAML: "+err.Error())
		return keyvault.Object{}, nil, false
	}
	if n == nil || n.Kind != yaml.MappingNode {
		p.add(prefix, "must be a mapping of object fields (objectName, objectType, ...)")
		return keyvault.Object{}, nil, false
	}

	fields := map[string]string{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := resolve(n.Content[j]), resolve(n.Content[j+1])
		if k.Kind != yaml.ScalarNode {
			p.add(prefix, "has a key that is not a string")
			continue
		}
		key := k.Value
		switch key {
		case keyObjectName, keyObjectAlias, keyObjectType, keyObjectVersion,
			keyObjectVersionHistory, keyObjectFormat, keyObjectEncoding, keyFilePermission:
		case keyObjectNotAfter:
			bad(key, "is not supported by kvnode")
			continue
		default:
			bad(key, "is not a known object field (keys are case-sensitive)")
			continue
		}
		if _, dup := fields[key]; dup {
			bad(key, "is set twice")
			continue
		}
		if v.Kind != yaml.ScalarNode {
			bad(key, "must be a single value, not a list or mapping")
			fields[key] = ""
			continue
		}
		if isNull(v) {
			fields[key] = ""
			continue
		}
		fields[key] = strings.TrimSpace(v.Value)
	}

	var obj keyvault.Object

	obj.Name = fields[keyObjectName]
	switch {
	case obj.Name == "":
		bad(keyObjectName, "must be set")
	case !isObjectName(obj.Name):
		bad(keyObjectName, fmt.Sprintf("%q must be 1-127 letters, digits and hyphens", obj.Name))
	}

	typeOK := false
	switch t := fields[keyObjectType]; t {
	case "":
		bad(keyObjectType, "must be set to secret, key or cert")
	case string(keyvault.TypeSecret), string(keyvault.TypeKey), string(keyvault.TypeCert):
		obj.Type = keyvault.ObjectType(t)
		typeOK = true
	default:
		bad(keyObjectType, fmt.Sprintf("%q is not one of secret, key, cert", t))
	}

	obj.Version = fields[keyObjectVersion]
	if strings.EqualFold(obj.Version, "latest") {
		obj.Version = ""
	}
	if !isAlphanumeric(obj.Version) {
		bad(keyObjectVersion, fmt.Sprintf("%q must contain only letters and digits", obj.Version))
	}

	if h := fields[keyObjectVersionHistory]; h != "" {
		n, err := strconv.Atoi(h)
		var ne *strconv.NumError
		switch {
		case errors.As(err, &ne) && ne.Err == strconv.ErrRange && strings.HasPrefix(h, "-"):
			bad(keyObjectVersionHistory, fmt.Sprintf("%s must not be negative", h))
		case errors.As(err, &ne) && ne.Err == strconv.ErrRange:
			bad(keyObjectVersionHistory, fmt.Sprintf("%s exceeds the maximum of %d", h, MaxVersionHistory))
		case err != nil:
			bad(keyObjectVersionHistory, fmt.Sprintf("%q is not an integer", h))
		case n < 0:
			bad(keyObjectVersionHistory, fmt.Sprintf("%d must not be negative", n))
		case n > MaxVersionHistory:
			bad(keyObjectVersionHistory, fmt.Sprintf("%d exceeds the maximum of %d", n, MaxVersionHistory))
		default:
			obj.VersionHistory = n
		}
	}
	if obj.VersionHistory > 1 && obj.Version != "" {
		bad(keyObjectVersion, "cannot be combined with objectVersionHistory > 1 (the history starts at the latest version)")
	}

	switch f := strings.ToLower(fields[keyObjectFormat]); f {
	case "":
	case string(keyvault.FormatPEM):
		obj.Format = keyvault.FormatPEM
	case string(keyvault.FormatPFX):
		if typeOK && obj.Type != keyvault.TypeSecret {
			bad(keyObjectFormat, "pfx applies only to objectType secret")
		}
		obj.Format = keyvault.FormatPFX
	default:
		bad(keyObjectFormat, fmt.Sprintf("%q is not one of pem, pfx", fields[keyObjectFormat]))
	}

	if e := fields[keyObjectEncoding]; e != "" {
		switch strings.ToLower(e) {
		case string(keyvault.EncodingUTF8), string(keyvault.EncodingHex), string(keyvault.EncodingBase64):
			obj.Encoding = keyvault.Encoding(strings.ToLower(e))
			if typeOK && obj.Type != keyvault.TypeSecret {
				bad(keyObjectEncoding, "applies only to objectType secret")
			}
		default:
			bad(keyObjectEncoding, fmt.Sprintf("%q is not one of utf-8, hex, base64", e))
		}
	}

	if fp := fields[keyFilePermission]; fp != "" {
		mode, err := strconv.ParseUint(fp, 8, 32)
		switch {
		case err != nil:
			bad(keyFilePermission, fmt.Sprintf("%q is not an octal number such as \"0600\"", fp))
		case mode > 0o777:
			bad(keyFilePermission, fmt.Sprintf("%q must be at most 0777 (no setuid, setgid or sticky bits)", fp))
		case mode == 0:
			bad(keyFilePermission, fmt.Sprintf("%q gives the file no permissions; use at least 0400", fp))
		default:
			obj.FileMode = os.FileMode(mode)
		}
	}

	// Where the object is written: objectAlias, else objectName (valid as a
	// file name whenever it is a valid object name).
	var file *fileEntry
	obj.Alias = fields[keyObjectAlias]
	if obj.Alias != "" {
		if detail := checkFileName(obj.Alias); detail != "" {
			bad(keyObjectAlias, detail)
		} else {
			file = &fileEntry{field: prefix + "." + keyObjectAlias}
		}
	} else if isObjectName(obj.Name) {
		file = &fileEntry{field: prefix + "." + keyObjectName}
	}
	if file != nil {
		file.index, file.path, file.dir = i, obj.FileName(), obj.VersionHistory > 1
	}
	return obj, file, len(*p) == before
}

// isObjectName reports whether s is a valid Key Vault object name.
func isObjectName(s string) bool {
	if s == "" || len(s) > maxObjectNameLen {
		return false
	}
	for _, r := range s {
		if !isASCIILetter(r) && !isASCIIDigit(r) && r != '-' {
			return false
		}
	}
	return true
}

func isAlphanumeric(s string) bool {
	for _, r := range s {
		if !isASCIILetter(r) && !isASCIIDigit(r) {
			return false
		}
	}
	return true
}

// checkFileName returns what is wrong with name as a path relative to the
// mount, or "". Kubelet's atomic writer keeps its own entries (..data and
// ..<timestamp> directories) under names starting with "..", so no segment
// may start with "..".
func checkFileName(name string) string {
	const outside = "must be a relative path inside the mount"
	if strings.HasPrefix(name, "/") {
		return fmt.Sprintf("%q %s", name, outside)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Sprintf("%q must not contain control characters", name)
		}
	}
	segments := strings.Split(name, "/")
	for _, seg := range segments {
		if seg == ".." {
			return fmt.Sprintf("%q %s", name, outside)
		}
	}
	for _, seg := range segments {
		switch {
		case seg == "":
			return fmt.Sprintf("%q must not contain empty path segments", name)
		case seg == ".":
			return fmt.Sprintf("%q must not contain \".\" path segments", name)
		case strings.HasPrefix(seg, ".."):
			return fmt.Sprintf("%q must not have a path segment starting with \"..\" (reserved by the atomic writer)", name)
		case len(seg) > maxSegmentLen:
			return fmt.Sprintf("%q has a path segment longer than %d bytes", name, maxSegmentLen)
		}
	}
	return ""
}

// checkCollisions refuses two objects that write the same path, and one
// object whose path is a directory of another's: a file cannot also be a
// directory, and a version history owns its whole directory.
func checkCollisions(files []fileEntry, p *problems) {
	byPath := map[string]fileEntry{} // paths written (files and history dirs)
	asDir := map[string]fileEntry{}  // directories needed, by the first object needing them
	for _, f := range files {
		if detail := collision(f, byPath, asDir); detail != "" {
			p.add(f.field, detail)
			continue
		}
		byPath[f.path] = f
		for i := strings.LastIndexByte(f.path, '/'); i > 0; i = strings.LastIndexByte(f.path[:i], '/') {
			if _, ok := asDir[f.path[:i]]; !ok {
				asDir[f.path[:i]] = f
			}
		}
	}
}

func collision(f fileEntry, byPath, asDir map[string]fileEntry) string {
	if other, ok := byPath[f.path]; ok {
		return fmt.Sprintf("%q is also written by objects[%d]", f.path, other.index)
	}
	for i := strings.LastIndexByte(f.path, '/'); i > 0; i = strings.LastIndexByte(f.path[:i], '/') {
		other, ok := byPath[f.path[:i]]
		switch {
		case !ok:
		case other.dir:
			return fmt.Sprintf("%q is inside the version-history directory %q of objects[%d]", f.path, other.path, other.index)
		default:
			return fmt.Sprintf("%q needs %q to be a directory, but objects[%d] writes a file there", f.path, other.path, other.index)
		}
	}
	if other, ok := asDir[f.path]; ok {
		if f.dir {
			return fmt.Sprintf("version-history directory %q would also hold %q of objects[%d]", f.path, other.path, other.index)
		}
		return fmt.Sprintf("%q is needed as a directory for %q of objects[%d]", f.path, other.path, other.index)
	}
	return ""
}
