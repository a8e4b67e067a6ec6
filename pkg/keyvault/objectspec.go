package keyvault

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
)

// The fields of an object, named as the SecretProviderClass objects array
// names them; the FlexVolume front door maps them to its own options.
const (
	FieldName           = "objectName"
	FieldAlias          = "objectAlias"
	FieldType           = "objectType"
	FieldVersion        = "objectVersion"
	FieldVersionHistory = "objectVersionHistory"
	FieldFormat         = "objectFormat"
	FieldEncoding       = "objectEncoding"
	FieldFilePermission = "filePermission"
	// FieldOptional is kvnode's own: an object that may be missing from
	// the vault (the upstream provider has no such key).
	FieldOptional = "optional"
	// FieldKeyVaultName, on an object, names another vault than the
	// class's (kvnode's own key); its name rules are the class's.
	FieldKeyVaultName = "keyvaultName"
)

// RecommendedMaxVersionHistory is the version history above which a warning
// says what it costs: every version is one more GET per pod per rotation
// (about every two minutes) against a vault limit of 4,000 per 10 s shared
// by the region's workloads, plus a list call; 20 versions cover any
// rotation scheme we know (current + previous, or a day of hourly keys).
const RecommendedMaxVersionHistory = 20

// Key Vault object names: 1-127 characters of [0-9a-zA-Z-].
const maxObjectNameLen = 127

// maxSegmentLen is the longest file name Linux allows (NAME_MAX).
const maxSegmentLen = 255

// ObjectSpec is one object as a front door read it, every field as text,
// before any check. Empty fields are unset.
type ObjectSpec struct {
	Name, Type, Version, VersionHistory, Alias, Format, Encoding, FilePermission, Optional string
	// KeyVaultName is the object's own vault, checked by the front door
	// (which knows the cloud); empty is the class's.
	KeyVaultName string
}

// Problem is one thing wrong with one field of one object.
type Problem struct {
	// Object is the object's position in the list, from 0.
	Object int
	// Field is one of the Field constants.
	Field  string
	Detail string
	// Tolerated is set when the upstream Azure provider mounts the object
	// anyway: the object ParseObjects returns is then the one upstream
	// mounts, and the problem is a warning unless the caller is strict.
	Tolerated bool
	// Other is the position of another object the problem is about (two
	// objects writing one path), or -1.
	Other int
}

// otherObject marks where Detail names the Other object.
const otherObject = "\x00other\x00"

// Render returns the detail with the other object, if any, named by name
// (each front door names objects in its own vocabulary: objects[1], or
// keyvaultobjectnames[1]).
func (p Problem) Render(name func(i int) string) string {
	if p.Other < 0 {
		return p.Detail
	}
	return strings.ReplaceAll(p.Detail, otherObject, name(p.Other))
}

// ParseObjects checks every spec and returns the objects to mount, in
// order, with every problem found. It is the one owner of the rules for an
// object (name, type, version, history, format, encoding, mode and file
// name), which both front doors and Fetch apply.
//
// Where the upstream provider accepts a likely mistake, the object is kept
// as upstream uses it and the problem is Tolerated: a negative
// objectVersionHistory (a single version), a history above
// RecommendedMaxVersionHistory, an objectFormat given in another letter case
// on a key or cert (ignored there), file names with empty or "." segments
// (cleaned, as kubelet's atomic writer cleans them), and two objects writing
// one file (the later one wins; the earlier is dropped). Everything else
// refuses the object; among those, filePermission outside 0001-0777 (setuid,
// setgid and sticky bits; 0, which upstream also gives a non-octal value)
// and control characters in file names, which upstream writes as given,
// are refused because what upstream does with them is unsafe.
func ParseObjects(specs []ObjectSpec) ([]Object, []Problem) {
	var problems []Problem
	objects := make([]Object, 0, len(specs))
	kept := make([]int, 0, len(specs)) // spec index of objects[i]
	for i, spec := range specs {
		before := len(problems)
		obj := parseObject(i, spec, &problems)
		if !refused(problems[before:]) {
			objects = append(objects, obj)
			kept = append(kept, i)
		}
	}
	objects, kept = dropShadowed(objects, kept, &problems)
	objects = checkDirectories(objects, kept, &problems)
	return objects, problems
}

func refused(ps []Problem) bool {
	for _, p := range ps {
		if !p.Tolerated {
			return true
		}
	}
	return false
}

func parseObject(i int, s ObjectSpec, ps *[]Problem) Object {
	bad := func(field, format string, args ...any) {
		*ps = append(*ps, Problem{Object: i, Field: field, Detail: fmt.Sprintf(format, args...), Other: -1})
	}
	warn := func(field, format string, args ...any) {
		*ps = append(*ps, Problem{Object: i, Field: field, Detail: fmt.Sprintf(format, args...), Tolerated: true, Other: -1})
	}
	var obj Object

	obj.Name = s.Name
	switch {
	case obj.Name == "":
		bad(FieldName, "must be set")
	case !isObjectName(obj.Name):
		bad(FieldName, "%q must be 1-127 letters, digits and hyphens", obj.Name)
	}

	typeOK := false
	switch s.Type {
	case "":
		bad(FieldType, "must be set to secret, key or cert")
	case string(TypeSecret), string(TypeKey), string(TypeCert):
		obj.Type = ObjectType(s.Type)
		typeOK = true
	default:
		bad(FieldType, "%q is not one of secret, key, cert", s.Type)
	}

	obj.Version = s.Version
	if strings.EqualFold(obj.Version, "latest") {
		obj.Version = ""
	}
	if !isAlphanumeric(obj.Version) {
		bad(FieldVersion, "%q must contain only letters and digits", obj.Version)
	}

	if h := s.VersionHistory; h != "" {
		n, err := strconv.ParseInt(h, 10, 32)
		switch {
		case errors.Is(err, strconv.ErrRange):
			bad(FieldVersionHistory, "%s is out of range", h)
		case err != nil:
			bad(FieldVersionHistory, "%q is not an integer", h)
		case n < 0:
			warn(FieldVersionHistory, "%d is negative; read as 1 (the one version named by objectVersion), as the upstream provider reads it", n)
		case n > RecommendedMaxVersionHistory:
			warn(FieldVersionHistory, "%d versions cost %d Key Vault requests per pod per rotation; %d cover common rotation schemes", n, n+1, RecommendedMaxVersionHistory)
			obj.VersionHistory = int(n)
		default:
			obj.VersionHistory = int(n)
		}
	}

	switch f := s.Format; strings.ToLower(f) {
	case "":
	case string(FormatPEM):
		obj.Format = FormatPEM
	case string(FormatPFX):
		switch {
		case !typeOK || obj.Type == TypeSecret:
			obj.Format = FormatPFX
		case f == string(FormatPFX):
			bad(FieldFormat, "pfx applies only to objectType secret")
		default:
			// Upstream compares "pfx" exactly here: other spellings pass
			// and are ignored for keys and certs.
			warn(FieldFormat, "%q applies only to objectType secret; ignored for objectType %s, as the upstream provider ignores it", f, obj.Type)
		}
	default:
		bad(FieldFormat, "%q is not one of pem, pfx", f)
	}

	if e := s.Encoding; e != "" {
		switch strings.ToLower(e) {
		case string(EncodingUTF8), string(EncodingHex), string(EncodingBase64):
			obj.Encoding = Encoding(strings.ToLower(e))
			if typeOK && obj.Type != TypeSecret {
				bad(FieldEncoding, "applies only to objectType secret")
			}
		default:
			bad(FieldEncoding, "%q is not one of utf-8, hex, base64", e)
		}
	}

	if fp := s.FilePermission; fp != "" {
		mode, err := strconv.ParseUint(fp, 8, 32)
		switch {
		case err != nil:
			bad(FieldFilePermission, "%q is not an octal number such as \"0600\" (the upstream provider would write the file with mode 0)", fp)
		case mode > 0o777:
			bad(FieldFilePermission, "%q must be at most 0777: setuid, setgid and sticky bits are refused", fp)
		case mode == 0:
			bad(FieldFilePermission, "%q gives the file no permissions; use at least 0400", fp)
		default:
			obj.FileMode = os.FileMode(mode)
		}
	}

	if o := s.Optional; o != "" {
		v, err := strconv.ParseBool(o)
		if err != nil {
			bad(FieldOptional, "%q is not true or false", o)
		}
		obj.Optional = v
	}

	obj.KeyVaultName = s.KeyVaultName

	obj.Alias = s.Alias
	if obj.Alias != "" {
		clean, detail, tolerated := fileName(obj.Alias)
		switch {
		case detail == "":
		case tolerated:
			warn(FieldAlias, "%s; written as %q", detail, clean)
			obj.Alias = clean
		default:
			bad(FieldAlias, "%s", detail)
		}
	}
	return obj
}

// CheckFileName returns what is wrong with name as the path of a file
// relative to the mount, or "" when it is valid as it stands: relative,
// clean, no segment starting with ".." (kubelet's atomic writer keeps its
// own ..data entries), no control characters, no segment longer than 255
// bytes.
func CheckFileName(name string) string {
	clean, detail, _ := fileName(name)
	if detail == "" && clean != name {
		return fmt.Sprintf("%q is not a clean path", name)
	}
	return detail
}

// fileName checks name and returns the path to write it at, what is wrong
// with it, and whether upstream tolerates that (the path is then cleaned).
func fileName(name string) (clean, detail string, tolerated bool) {
	const outside = "must be a relative path inside the mount"
	if name == "" {
		return "", "must not be empty", false
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Sprintf("%q %s", name, outside), false
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Sprintf("%q must not contain control characters", name), false
		}
	}
	segments := strings.Split(name, "/")
	for _, seg := range segments {
		if seg == ".." {
			return "", fmt.Sprintf("%q %s", name, outside), false
		}
	}
	for _, seg := range segments {
		switch {
		case strings.HasPrefix(seg, ".."):
			return "", fmt.Sprintf("%q must not have a path segment starting with \"..\" (reserved by the atomic writer)", name), false
		case len(seg) > maxSegmentLen:
			return "", fmt.Sprintf("%q has a path segment longer than %d bytes", name, maxSegmentLen), false
		}
	}
	clean = path.Clean(name)
	if clean == "." {
		return "", fmt.Sprintf("%q names the mount itself, not a file in it", name), false
	}
	if clean != name {
		return clean, fmt.Sprintf("%q has empty or \".\" path segments", name), true
	}
	return name, "", false
}

// dropShadowed keeps the last of several objects writing one file, as
// upstream's writer keeps the last, and reports the others.
func dropShadowed(objects []Object, kept []int, ps *[]Problem) ([]Object, []int) {
	last := map[string]int{} // file name -> position in objects of its last writer
	for j, o := range objects {
		last[o.FileName()] = j
	}
	outObjects, outKept := objects[:0:0], kept[:0:0]
	for j, o := range objects {
		if w := last[o.FileName()]; w != j {
			*ps = append(*ps, Problem{Object: kept[j], Field: fileField(o), Tolerated: true, Other: kept[w],
				Detail: fmt.Sprintf("%q is also written by %s, which wins, as with the upstream provider; this object is not mounted", o.FileName(), otherObject)})
			continue
		}
		outObjects, outKept = append(outObjects, o), append(outKept, kept[j])
	}
	return outObjects, outKept
}

// checkDirectories refuses (drops and reports) an object whose file is a directory an earlier
// object needs, or that needs a directory where an earlier object writes a
// file (a file cannot also be a directory; a version history owns its whole
// directory). Upstream fails such mounts when it writes them.
func checkDirectories(objects []Object, kept []int, ps *[]Problem) []Object {
	byPath := map[string]int{} // files and history directories written, by position in objects
	asDir := map[string]int{}  // directories needed, by the first object needing them
	out := objects[:0:0]
	for j, o := range objects {
		if detail, other := directoryConflict(o, objects, byPath, asDir); detail != "" {
			*ps = append(*ps, Problem{Object: kept[j], Field: fileField(o), Detail: detail, Other: kept[other]})
			continue
		}
		out = append(out, o)
		p := o.FileName()
		byPath[p] = j
		for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
			if _, ok := asDir[p[:i]]; !ok {
				asDir[p[:i]] = j
			}
		}
	}
	return out
}

// directoryConflict says how o conflicts with an earlier object, and which.
func directoryConflict(o Object, objects []Object, byPath, asDir map[string]int) (string, int) {
	p := o.FileName()
	for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
		other, ok := byPath[p[:i]]
		switch {
		case !ok:
		case objects[other].VersionHistory > 1:
			return fmt.Sprintf("%q is inside the version-history directory %q of %s", p, p[:i], otherObject), other
		default:
			return fmt.Sprintf("%q needs %q to be a directory, but %s writes a file there", p, p[:i], otherObject), other
		}
	}
	if other, ok := asDir[p]; ok {
		if o.VersionHistory > 1 {
			return fmt.Sprintf("version-history directory %q would also hold %q of %s", p, objects[other].FileName(), otherObject), other
		}
		return fmt.Sprintf("%q is needed as a directory for %q of %s", p, objects[other].FileName(), otherObject), other
	}
	return "", -1
}

// fileField is the field an object's file name comes from.
func fileField(o Object) string {
	if o.Alias != "" {
		return FieldAlias
	}
	return FieldName
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

func isASCIILetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isASCIIDigit(r rune) bool  { return r >= '0' && r <= '9' }

// ValidateObjects checks what the front doors have already checked with
// ParseObjects: Fetch is the last stop before names become URL paths and
// file names, so it refuses anything ParseObjects would not return.
func ValidateObjects(objs []Object) error {
	if len(objs) == 0 {
		return errors.New("no objects")
	}
	seen := make(map[string]bool, len(objs))
	for _, o := range objs {
		if !isObjectName(o.Name) {
			return fmt.Errorf("object name %q: must be 1-127 letters, digits and hyphens", o.Name)
		}
		switch o.Type {
		case TypeSecret, TypeKey, TypeCert:
		default:
			return fmt.Errorf("object %s: type %q is not secret, key or cert", o.Name, o.Type)
		}
		if !isAlphanumeric(o.Version) {
			return fmt.Errorf("object %s: version %q must contain only letters and digits", o.Name, o.Version)
		}
		if _, err := normalizeFormat(o.Format); err != nil {
			return fmt.Errorf("object %s: %w", o.Name, err)
		}
		if _, err := normalizeEncoding(o.Encoding); err != nil {
			return fmt.Errorf("object %s: %w", o.Name, err)
		}
		if o.VersionHistory < 0 {
			return fmt.Errorf("object %s: objectVersionHistory %d is negative", o.Name, o.VersionHistory)
		}
		if o.FileMode&^os.ModePerm != 0 {
			return fmt.Errorf("object %s: file permission %o is not a permission", o.Name, o.FileMode)
		}
		name := o.FileName()
		if detail := CheckFileName(name); detail != "" {
			return fmt.Errorf("object %s: file name %s", o.Name, detail)
		}
		if seen[name] {
			return fmt.Errorf("object %s: file name %q is used by another object", o.Name, name)
		}
		seen[name] = true
	}
	return nil
}
