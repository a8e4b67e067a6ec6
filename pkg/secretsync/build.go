package secretsync

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kvnode/kvnode/pkg/spc"
)

// ManagedLabel is the label, with the value "true", on every Secret kvdriver
// syncs. The upstream driver sets it too, so kvdriver takes over the Secrets
// it synced; the chart's admission policy lets kvdriver write no Secret
// without it.
const ManagedLabel = "secrets-store.csi.k8s.io/managed"

// DefaultTypes returns the Secret types kvdriver syncs unless told
// otherwise: the types the upstream driver documents, except
// kubernetes.io/service-account-token (the token controller would fill such
// a Secret with a token of whichever ServiceAccount its annotation names)
// and bootstrap.kubernetes.io/token (a credential that joins nodes to the
// cluster).
func DefaultTypes() []corev1.SecretType {
	return []corev1.SecretType{
		corev1.SecretTypeOpaque,
		corev1.SecretTypeBasicAuth,
		corev1.SecretTypeDockercfg,
		corev1.SecretTypeDockerConfigJson,
		corev1.SecretTypeSSHAuth,
		corev1.SecretTypeTLS,
	}
}

// maxListedFiles caps how many mounted file names an error lists.
const maxListedFiles = 10

// desired is the Secret one entry of spec.secretObjects describes: its
// settings, validated, and the files it is built from.
type desired struct {
	field       string // secretObjects[i]
	name        string
	typ         corev1.SecretType
	labels      map[string]string
	annotations map[string]string
	items       []dataItem
	// sum digests everything the Secret is built from, so that a republish
	// that would write the same Secret again sends no request and does not
	// even build it (splitting a TLS key costs a key parse). Only this
	// digest is kept between publishes, never the values.
	sum [sha256.Size]byte
	// data is the Secret's data, once render has built it.
	data map[string][]byte
}

// dataItem is one entry of data[]: a file of the volume under a key.
type dataItem struct {
	sub  string // .data[j]
	file string // the objectName, trimmed
	key  string // trimmed
	raw  []byte // the file as mounted
}

// build turns spec.secretObjects and the volume's files into the Secrets to
// write, validating each entry on its own: for each i, exactly one of
// results[i] and errs[i] (a *FieldError) is set.
func build(objects []spc.SecretObject, files map[string][]byte, types []corev1.SecretType) (results []*desired, errs []error) {
	results = make([]*desired, len(objects))
	errs = make([]error, len(objects))
	firstIndex := map[string]int{}
	for i, obj := range objects {
		d, err := buildOne(i, obj, files, types)
		if err != nil {
			errs[i] = err
			continue
		}
		if j, dup := firstIndex[d.name]; dup {
			errs[i] = &FieldError{Field: d.field + ".secretName", Secret: d.name,
				Reason: fmt.Sprintf("%q is also the name of secretObjects[%d]; each Secret is described once", d.name, j)}
			continue
		}
		firstIndex[d.name] = i
		results[i] = d
	}
	return results, errs
}

// buildOne builds entry i. Names are trimmed of spaces, as by the upstream
// driver.
func buildOne(i int, obj spc.SecretObject, files map[string][]byte, types []corev1.SecretType) (*desired, error) {
	field := "secretObjects[" + strconv.Itoa(i) + "]"
	d := &desired{field: field, name: strings.TrimSpace(obj.SecretName), typ: corev1.SecretType(strings.TrimSpace(obj.Type))}
	fail := func(sub, format string, args ...any) error {
		return &FieldError{Field: field + sub, Secret: d.name, Reason: fmt.Sprintf(format, args...)}
	}

	if d.name == "" {
		return nil, fail(".secretName", "required")
	}
	if msgs := validation.IsDNS1123Subdomain(d.name); len(msgs) > 0 {
		return nil, fail(".secretName", "%q is not a valid Secret name: %s", d.name, strings.Join(msgs, "; "))
	}
	switch {
	case d.typ == "":
		return nil, fail(".type", "required (for example Opaque or kubernetes.io/tls)")
	case !slices.Contains(types, d.typ):
		return nil, fail(".type", "%q is not a type kvdriver syncs; it syncs %s", d.typ, typeList(types))
	}

	d.labels = make(map[string]string, len(obj.Labels)+1)
	for _, k := range sortedKeys(obj.Labels) {
		v := obj.Labels[k]
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			return nil, fail(".labels", "%q is not a valid label key: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 && k != ManagedLabel {
			return nil, fail(".labels["+k+"]", "%q is not a valid label value: %s", v, strings.Join(msgs, "; "))
		}
		d.labels[k] = v
	}
	d.labels[ManagedLabel] = "true" // whatever the class says, as upstream

	if len(obj.Annotations) > 0 {
		for _, k := range sortedKeys(obj.Annotations) {
			if msgs := validation.IsQualifiedName(strings.ToLower(k)); len(msgs) > 0 {
				return nil, fail(".annotations", "%q is not a valid annotation key: %s", k, strings.Join(msgs, "; "))
			}
		}
		if err := apivalidation.ValidateAnnotationsSize(obj.Annotations); err != nil {
			return nil, fail(".annotations", "%v", err)
		}
		d.annotations = obj.Annotations
	}

	if len(obj.Data) == 0 {
		return nil, fail(".data", "required: at least one objectName and key")
	}
	keyIndex := make(map[string]int, len(obj.Data))
	for j, item := range obj.Data {
		sub := ".data[" + strconv.Itoa(j) + "]"
		name, key := strings.TrimSpace(item.ObjectName), strings.TrimSpace(item.Key)
		switch {
		case name == "":
			return nil, fail(sub+".objectName", "required: the file name of a mounted object (its objectAlias, else its objectName)")
		case key == "":
			return nil, fail(sub+".key", "required")
		}
		if msgs := validation.IsConfigMapKey(key); len(msgs) > 0 {
			return nil, fail(sub+".key", "%q is not a valid Secret key: %s", key, strings.Join(msgs, "; "))
		}
		if k, dup := keyIndex[key]; dup {
			return nil, fail(sub+".key", "%q is also the key of data[%d]", key, k)
		}
		keyIndex[key] = j
		if d.typ == corev1.SecretTypeTLS && key != corev1.TLSPrivateKeyKey && key != corev1.TLSCertKey {
			return nil, fail(sub+".key", "%q: a kubernetes.io/tls Secret takes only %s and %s", key, corev1.TLSPrivateKeyKey, corev1.TLSCertKey)
		}
		content, ok := files[name]
		if !ok {
			return nil, fail(sub+".objectName", "%q is not a file of the volume (the objectAlias, else the objectName, of an object in spec.parameters.objects); the volume has %s", name, fileList(files))
		}
		d.items = append(d.items, dataItem{sub: sub, file: name, key: key, raw: content})
	}
	if err := checkTypeKeys(d.typ, keyIndex, fail); err != nil {
		return nil, err
	}
	d.sum = inputSum(d)
	return d, nil
}

// checkTypeKeys applies the API server's rules for the keys of a Secret of
// typ, so that a class that breaks them gets an error naming its field
// rather than an API error naming the Secret's.
func checkTypeKeys(typ corev1.SecretType, keys map[string]int, fail func(sub, format string, args ...any) error) error {
	need := func(want ...string) error {
		for _, k := range want {
			if _, ok := keys[k]; !ok {
				if len(want) == 1 {
					return fail(".data", "a %s Secret needs the key %s", typ, k)
				}
				return fail(".data", "a %s Secret needs the keys %s; %s is missing", typ, strings.Join(want, " and "), k)
			}
		}
		return nil
	}
	switch typ {
	case corev1.SecretTypeTLS:
		return need(corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	case corev1.SecretTypeDockerConfigJson:
		return need(corev1.DockerConfigJsonKey)
	case corev1.SecretTypeDockercfg:
		return need(corev1.DockerConfigKey)
	case corev1.SecretTypeSSHAuth:
		return need(corev1.SSHAuthPrivateKey)
	case corev1.SecretTypeBasicAuth:
		_, user := keys[corev1.BasicAuthUsernameKey]
		_, pass := keys[corev1.BasicAuthPasswordKey]
		if !user && !pass {
			return fail(".data", "a %s Secret needs the key %s or %s", typ, corev1.BasicAuthUsernameKey, corev1.BasicAuthPasswordKey)
		}
	}
	return nil
}

// render builds d's data from its files: the files as they are, except for
// kubernetes.io/tls, whose tls.key and tls.crt are split out of a
// certificate-backed secret as the upstream driver does. It checks what
// depends on the files' content: TLS parts, JSON of docker configurations,
// the size limit. It is idempotent.
func (d *desired) render() error {
	if d.data != nil {
		return nil
	}
	fail := func(it dataItem, format string, args ...any) error {
		return &FieldError{Field: d.field + it.sub + ".objectName", Secret: d.name, Reason: fmt.Sprintf(format, args...)}
	}
	data := make(map[string][]byte, len(d.items))
	size := 0
	for _, it := range d.items {
		content := it.raw
		switch {
		case d.typ == corev1.SecretTypeTLS:
			part, err := tlsPart(content, it.key)
			if err != nil {
				return fail(it, "file %q %v", it.file, err)
			}
			content = part
		case d.typ == corev1.SecretTypeDockerConfigJson && it.key == corev1.DockerConfigJsonKey,
			d.typ == corev1.SecretTypeDockercfg && it.key == corev1.DockerConfigKey:
			if !json.Valid(content) { // json's own errors quote the content
				return fail(it, "file %q is not valid JSON, which the %s key of a %s Secret must be", it.file, it.key, d.typ)
			}
		}
		data[it.key] = content
		size += len(content)
	}
	if size > corev1.MaxSecretSize {
		return &FieldError{Field: d.field + ".data", Secret: d.name,
			Reason: fmt.Sprintf("the Secret would hold %d bytes; Kubernetes takes at most %d", size, corev1.MaxSecretSize)}
	}
	d.data = data
	return nil
}

// inputSum digests everything d is built from, each string and value
// length-prefixed so that no two inputs share a digest by concatenation.
func inputSum(d *desired) [sha256.Size]byte {
	h := sha256.New()
	writeString(h, d.name)
	writeString(h, string(d.typ))
	for _, m := range []map[string]string{d.labels, d.annotations} {
		writeLen(h, len(m))
		for _, k := range sortedKeys(m) {
			writeString(h, k)
			writeString(h, m[k])
		}
	}
	items := slices.Clone(d.items)
	slices.SortFunc(items, func(a, b dataItem) int { return strings.Compare(a.key, b.key) })
	writeLen(h, len(items))
	for _, it := range items {
		writeString(h, it.key)
		writeLen(h, len(it.raw))
		h.Write(it.raw)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

func writeLen(h hash.Hash, n int) {
	var b [binary.MaxVarintLen64]byte
	h.Write(b[:binary.PutUvarint(b[:], uint64(n))])
}

func writeString(h hash.Hash, s string) {
	writeLen(h, len(s))
	h.Write([]byte(s))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func typeList(types []corev1.SecretType) string {
	s := make([]string, len(types))
	for i, t := range types {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}

// fileList names some of the volume's files, for an error message (names,
// never contents).
func fileList(files map[string][]byte) string {
	if len(files) == 0 {
		return "no files"
	}
	names := sortedKeys(files)
	more := ""
	if len(names) > maxListedFiles {
		more = fmt.Sprintf(" and %d more", len(names)-maxListedFiles)
		names = names[:maxListedFiles]
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = strconv.Quote(n)
	}
	return strings.Join(quoted, ", ") + more
}
