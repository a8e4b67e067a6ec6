package flexvolume

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/spc"
)

// Options of the azure/kv driver, as the Key Vault FlexVolume driver's
// documentation spells them in a pod's flexVolume.options. Names are
// case-sensitive (kubelet passes them as written).
const (
	optKeyVaultName              = "keyvaultname"
	optObjectNames               = "keyvaultobjectnames"
	optObjectTypes               = "keyvaultobjecttypes"
	optObjectVersions            = "keyvaultobjectversions"
	optObjectAliases             = "keyvaultobjectaliases"
	optObjectName                = "keyvaultobjectname"
	optObjectType                = "keyvaultobjecttype"
	optObjectVersion             = "keyvaultobjectversion"
	optTenantID                  = "tenantid"
	optCloudName                 = "cloudname"
	optUsePodIdentity            = "usepodidentity"
	optUseVMManagedIdentity      = "usevmmanagedidentity"
	optVMManagedIdentityClientID = "vmmanagedidentityclientid"
	optResourceGroup             = "resourcegroup"
	optSubscriptionID            = "subscriptionid"

	// listSeparator separates the entries of the plural options.
	listSeparator = ";"
)

// Options kubelet adds (see the FlexVolume specification): the secretRef
// Secret's keys, base64-encoded, under kubernetes.io/secret/, the pod, and
// the volume's fsType, readwrite and fsGroup.
const (
	kubeletPrefix         = "kubernetes.io/"
	secretPrefix          = kubeletPrefix + "secret/"
	optSecretClientID     = secretPrefix + "clientid"
	optSecretClientSecret = secretPrefix + "clientsecret"
	optPodName            = kubeletPrefix + "pod.name"
	optPodNamespace       = kubeletPrefix + "pod.namespace"
	optPodUID             = kubeletPrefix + "pod.uid"
	optPodUIDLegacy       = kubeletPrefix + "pod.UID" // as the FlexVolume document spells it
	optServiceAccount     = kubeletPrefix + "serviceAccount.name"
	optFSGroup            = kubeletPrefix + "mounterArgs.FsGroup"
	optFSGroupLegacy      = kubeletPrefix + "fsGroup" // as the FlexVolume document spells it
	optFSType             = kubeletPrefix + "fsType"
	optReadWrite          = kubeletPrefix + "readwrite"
	optPVOrVolumeName     = kubeletPrefix + "pvOrVolumeName"
	optMountsDir          = kubeletPrefix + "mountsDir"
)

// driverOptions are the non-kubelet options mount accepts. resourcegroup and
// subscriptionid are accepted and ignored, as the original driver has
// ignored them since v0.0.14 (the vault URL comes from the name and cloud).
var driverOptions = map[string]bool{
	optKeyVaultName: true, optObjectNames: true, optObjectTypes: true, optObjectVersions: true,
	optObjectAliases: true, optObjectName: true, optObjectType: true, optObjectVersion: true,
	optTenantID: true, optCloudName: true, optUsePodIdentity: true, optUseVMManagedIdentity: true,
	optVMManagedIdentityClientID: true, optResourceGroup: true, optSubscriptionID: true,
}

// kubeletKeys are the kubernetes.io/ keys kubelet adds (besides the
// Secret's). The pod and fsGroup are read; the rest are ignored, as the
// FlexVolume specification allows: fsType is for block devices, readwrite is
// kubelet's own concern (it applies fsGroup ownership itself on a read-write
// volume), and the volume name and mounts directory tell nothing the target
// path does not.
var kubeletKeys = map[string]bool{
	optFSType: true, optReadWrite: true, optPVOrVolumeName: true, optMountsDir: true,
	optPodName: true, optPodNamespace: true, optPodUID: true, optPodUIDLegacy: true,
	optServiceAccount: true, optFSGroup: true, optFSGroupLegacy: true,
}

// Pod is the pod a volume is mounted for, from kubelet's kubernetes.io/pod.*
// options.
type Pod struct {
	Name, Namespace, UID, ServiceAccount string
}

// Volume is a parsed, validated mount call: what to fetch, from which vault,
// as whom, and for which pod.
type Volume struct {
	// VaultURL is https://<keyvaultname>.<the cloud's vault suffix>/.
	VaultURL string
	// Objects are the objects to write, in the order listed.
	Objects  []keyvault.Object
	Identity identity.Request
	Pod      Pod
	// Owner gives the files to the pod's fsGroup, when kubelet passes one.
	Owner *atomicwriter.Owner
	// Warnings are tolerated mistakes in the options, for the log.
	Warnings []Problem
}

// Problem is one thing wrong with one option.
type Problem struct {
	// Option is the option's name, with [i] for the i-th entry (from 0) of a
	// ';'-separated list: "keyvaultobjecttypes[1]".
	Option string
	Detail string
}

// OptionsError is every problem ParseOptions found.
type OptionsError struct {
	Problems []Problem
}

func (e *OptionsError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Option + ": " + p.Detail
	}
	return "invalid azure/kv options: " + strings.Join(msgs, "; ")
}

// problems collects what ParseOptions finds: errors refuse the call,
// warnings are mistakes it tolerates (the mount goes ahead as the upstream
// Azure provider would mount the same objects).
type problems struct {
	errors, warnings []Problem
}

func (p *problems) add(option, detail string) {
	p.errors = append(p.errors, Problem{Option: option, Detail: detail})
}

func (p *problems) warn(option, detail string) {
	p.warnings = append(p.warnings, Problem{Option: option, Detail: detail})
}

// ParseOptions reads the JSON options argument of a mount call, as kubelet
// passes it: the pod's flexVolume.options, the secretRef Secret's keys under
// kubernetes.io/secret/ (values base64-encoded), and kubelet's own
// kubernetes.io/ keys. On failure it returns an *OptionsError listing every
// problem, naming each option; secret values never appear in it. Mistakes
// the upstream Azure provider tolerates in the same objects are listed in
// Volume.Warnings, or with strict refuse the call too.
//
// The vault name and tenant are checked as the SecretProviderClass parser
// checks them (package spc), and the objects by the rules every front door
// shares (keyvault.ParseObjects), so both front doors accept the same
// names, versions and file names.
func ParseOptions(raw string, strict bool) (*Volume, error) {
	opts, err := decodeOptions(raw)
	if err != nil {
		return nil, err
	}
	get := func(key string) string { return strings.TrimSpace(opts[key]) }

	var p problems
	checkKeys(opts, &p)

	v := &Volume{Pod: Pod{
		Name: get(optPodName), Namespace: get(optPodNamespace),
		UID: get(optPodUID), ServiceAccount: get(optServiceAccount),
	}}
	if v.Pod.UID == "" {
		v.Pod.UID = get(optPodUIDLegacy)
	}

	cloud := parseCloud(get(optCloudName), &p)
	lists := readLists(opts, &p)
	checkVault(get(optKeyVaultName), get(optTenantID), &p)
	if lists.aligned() {
		v.Objects = checkObjects(lists, &p)
	}
	if cloud != nil {
		v.VaultURL = cloud.VaultURL(get(optKeyVaultName))
		v.Identity.AuthorityHost = cloud.ActiveDirectoryEndpoint
	}
	id := parseIdentity(opts, v.Pod, &p)
	id.TenantID, id.AuthorityHost = get(optTenantID), v.Identity.AuthorityHost
	v.Identity = id
	v.Owner = parseFSGroup(opts, &p)

	if len(p.errors) > 0 || strict && len(p.warnings) > 0 {
		return nil, &OptionsError{Problems: append(p.errors, p.warnings...)}
	}
	v.Warnings = p.warnings
	return v, nil
}

// decodeOptions decodes the JSON object of strings kubelet passes. Its
// problems never quote the input, which holds the Secret's values.
func decodeOptions(raw string) (map[string]string, error) {
	var values map[string]any
	if err := json.Unmarshal([]byte(raw), &values); err != nil || values == nil {
		detail := "null"
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			detail = fmt.Sprintf("syntax error at byte %d", syn.Offset)
		case errors.As(err, &typ):
			detail = "the argument is a JSON " + typ.Value
		case err != nil:
			detail = "cannot decode"
		}
		return nil, &OptionsError{Problems: []Problem{{Option: "options", Detail: "not a JSON object of string values: " + detail}}}
	}
	opts := make(map[string]string, len(values))
	var p problems
	for k, v := range values {
		s, ok := v.(string)
		if !ok {
			p.add(k, fmt.Sprintf("must be a JSON string, not %s", jsonKind(v)))
			continue
		}
		opts[k] = s
	}
	if len(p.errors) > 0 {
		sort.Slice(p.errors, func(i, j int) bool { return p.errors[i].Option < p.errors[j].Option })
		return nil, &OptionsError{Problems: p.errors}
	}
	return opts, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case []any:
		return "an array"
	}
	return "an object"
}

// checkKeys refuses options the driver does not know: a misspelt
// "keyvaultobjectalias" would otherwise silently write the wrong file names.
func checkKeys(opts map[string]string, p *problems) {
	var unknown []string
	for k := range opts {
		if driverOptions[k] || kubeletKeys[k] || strings.HasPrefix(k, secretPrefix) {
			continue
		}
		unknown = append(unknown, k)
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		detail := "is not an azure/kv option"
		if driverOptions[strings.ToLower(k)] {
			detail += fmt.Sprintf(" (option names are lower case: %s)", strings.ToLower(k))
		} else if !strings.HasPrefix(k, kubeletPrefix) {
			detail += " (see the README's FlexVolume options table)"
		}
		p.add(k, detail)
	}
}

// parseCloud returns the cloud named by cloudname (empty: the public
// cloud), as the original driver accepts the names.
func parseCloud(name string, p *problems) *spc.Cloud {
	if name == "" {
		name = spc.AzurePublicCloud
	}
	if c, ok := spc.CloudByName(name); ok {
		return &c
	}
	if strings.EqualFold(name, spc.AzureStackCloud) {
		p.add(optCloudName, "AzureStackCloud needs an environment file, which the FlexVolume options cannot name; use the CSI driver with cloudEnvFileName")
		return nil
	}
	p.add(optCloudName, fmt.Sprintf("%q is not one of %s, %s, %s", name, spc.AzurePublicCloud, spc.AzureUSGovernmentCloud, spc.AzureChinaCloud))
	return nil
}

// objectList is one of the four per-object lists and the option it came from.
type objectList struct {
	option string // the option it was read from
	single bool   // from a singular option: one entry, no index in messages
	values []string
}

// field names entry i of the list in a message.
func (l objectList) field(i int) string {
	if l.single {
		return l.option
	}
	return fmt.Sprintf("%s[%d]", l.option, i)
}

// lists are the per-object lists of a mount.
type lists struct {
	names, types, versions, aliases objectList
}

// aligned reports whether there is at least one object and every list that
// is set has one entry per object (types must be set).
func (l lists) aligned() bool {
	n := len(l.names.values)
	ok := func(o objectList, required bool) bool {
		return len(o.values) == n || !required && len(o.values) == 0
	}
	return n > 0 && ok(l.types, true) && ok(l.versions, false) && ok(l.aliases, false)
}

// readLists reads the object lists and reports lists that do not line up.
func readLists(opts map[string]string, p *problems) lists {
	names, namesOK := readList(opts, optObjectNames, optObjectName, p)
	types, _ := readList(opts, optObjectTypes, optObjectType, p)
	versions, _ := readList(opts, optObjectVersions, optObjectVersion, p)
	aliases, _ := readList(opts, optObjectAliases, "", p)
	l := lists{names: names, types: types, versions: versions, aliases: aliases}
	n := len(names.values)
	if n == 0 {
		if namesOK {
			p.add(optObjectNames, "must be set: the ';'-separated names of the Key Vault objects to mount")
		}
		return l
	}
	if len(types.values) == 0 {
		p.add(optObjectTypes, fmt.Sprintf("must be set: one type (secret, key or cert) per object, separated by ';' (%d objects)", n))
	}
	for _, other := range []objectList{types, versions, aliases} {
		if m := len(other.values); m > 0 && m != n {
			p.add(other.option, fmt.Sprintf("has %s but %s has %s: give one entry per object, separated by ';' (an empty entry means the default)",
				entries(m), names.option, entries(n)))
		}
	}
	return l
}

func entries(n int) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}

// readList reads a ';'-separated list from plural, or a one-entry list from
// singular. An unset or empty option is an empty list; entries are trimmed.
// It reports false when both options are set.
func readList(opts map[string]string, plural, singular string, p *problems) (objectList, bool) {
	pv, sv := strings.TrimSpace(opts[plural]), ""
	if singular != "" {
		sv = strings.TrimSpace(opts[singular])
	}
	switch {
	case pv != "" && sv != "":
		p.add(plural, fmt.Sprintf("cannot be combined with %s; use one of them", singular))
		return objectList{option: plural}, false
	case sv != "":
		return objectList{option: singular, single: true, values: []string{sv}}, true
	case pv == "":
		return objectList{option: plural}, true
	}
	values := strings.Split(pv, listSeparator)
	for i := range values {
		values[i] = strings.TrimSpace(values[i])
	}
	return objectList{option: plural, values: values}, true
}

// checkVault checks the vault name and the tenant as the SecretProviderClass
// parser does, so both front doors accept the same ones.
func checkVault(vault, tenant string, p *problems) {
	if detail, tolerated := spc.VaultNameProblem(vault); detail != "" {
		if tolerated {
			p.warn(optKeyVaultName, detail)
		} else {
			p.add(optKeyVaultName, detail)
		}
	}
	switch {
	case tenant == "":
		p.add(optTenantID, "must be set")
	case !spc.IsTenantID(tenant):
		p.add(optTenantID, fmt.Sprintf("%q must be a tenant ID (GUID) or a domain name", tenant))
	}
}

// checkObjects turns the lists into objects with the rules every front
// door shares (keyvault.ParseObjects), naming each problem by the option
// and entry it came from. The lists must be aligned.
func checkObjects(l lists, p *problems) []keyvault.Object {
	at := func(o objectList, i int) string {
		if i < len(o.values) {
			return o.values[i]
		}
		return ""
	}
	specs := make([]keyvault.ObjectSpec, len(l.names.values))
	for i := range specs {
		specs[i] = keyvault.ObjectSpec{Name: at(l.names, i), Type: at(l.types, i), Version: at(l.versions, i), Alias: at(l.aliases, i)}
	}
	objects, problems := keyvault.ParseObjects(specs)
	for _, op := range problems {
		option := l.names.field(op.Object)
		switch op.Field {
		case keyvault.FieldType:
			option = l.types.field(op.Object)
		case keyvault.FieldVersion:
			option = l.versions.field(op.Object)
		case keyvault.FieldAlias:
			option = l.aliases.field(op.Object)
		}
		if op.Tolerated {
			p.warn(option, op.Render(l.names.field))
		} else {
			p.add(option, op.Render(l.names.field))
		}
	}
	return objects
}

// parseIdentity chooses the identity as the original driver does:
// usepodidentity, else usevmmanagedidentity, else the service principal in
// the secretRef Secret.
func parseIdentity(opts map[string]string, pod Pod, p *problems) identity.Request {
	get := func(key string) string { return strings.TrimSpace(opts[key]) }
	usePod := parseBool(optUsePodIdentity, get(optUsePodIdentity), p)
	useVM := parseBool(optUseVMManagedIdentity, get(optUseVMManagedIdentity), p)
	miID := get(optVMManagedIdentityClientID)
	if usePod && useVM {
		p.add(optUsePodIdentity, "cannot be combined with usevmmanagedidentity; choose one identity")
	}
	if miID != "" && !useVM {
		p.add(optVMManagedIdentityClientID, `is used only with usevmmanagedidentity "true"`)
	}

	var r identity.Request
	switch {
	case usePod:
		r.Mode = identity.PodIdentity
		r.Namespace, r.ServiceAccount, r.PodName = pod.Namespace, pod.ServiceAccount, pod.Name
		if pod.Name == "" || pod.Namespace == "" {
			p.add(optPodName, "kubelet passed no pod name and namespace, which pod identity needs")
		}
	case useVM:
		r.Mode = identity.VMManagedIdentity
		r.ManagedIdentityID = miID
	default:
		r.Mode = identity.ServicePrincipal
		r.ClientID = strings.TrimSpace(secretValue(opts, optSecretClientID,
			`missing: set secretRef to a Secret of type azure/kv with keys "clientid" and "clientsecret", or set usevmmanagedidentity or usepodidentity`, p))
		// Trailing line breaks are dropped, as the original driver's shell
		// script dropped them; a Secret made from a file often has one.
		r.ClientSecret = strings.TrimRight(secretValue(opts, optSecretClientSecret,
			`missing: the secretRef Secret needs the key "clientsecret" next to "clientid"`, p), "\r\n")
	}
	return r
}

// secretValue decodes a Secret value kubelet passed base64-encoded, and
// reports it missing (with the given detail), undecodable or empty. Like the
// original driver's shell script, it tolerates white space in the encoding.
// Problems never quote the value.
func secretValue(opts map[string]string, key, missing string, p *problems) string {
	raw, ok := opts[key]
	if !ok {
		p.add(key, missing)
		return ""
	}
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(raw), ""))
	switch {
	case err != nil:
		p.add(key, "is not valid base64 (kubelet passes Secret values base64-encoded; the value is not shown)")
		return ""
	case strings.TrimSpace(string(b)) == "":
		p.add(key, "is empty in the secretRef Secret")
		return ""
	}
	return string(b)
}

// parseBool reads a boolean option: empty is false, else strconv.ParseBool.
func parseBool(option, value string, p *problems) bool {
	if value == "" {
		return false
	}
	b, err := strconv.ParseBool(value)
	if err != nil {
		p.add(option, fmt.Sprintf("%q is not a boolean (use \"true\" or \"false\")", value))
		return false
	}
	return b
}

// parseFSGroup reads the pod's fsGroup, which kubelet passes when the pod
// sets one, and returns the ownership that gives the files to that group.
func parseFSGroup(opts map[string]string, p *problems) *atomicwriter.Owner {
	key := optFSGroup
	v := strings.TrimSpace(opts[key])
	if v == "" {
		key = optFSGroupLegacy
		v = strings.TrimSpace(opts[key])
	}
	if v == "" {
		return nil
	}
	gid, err := strconv.ParseInt(v, 10, 32)
	if err != nil || gid < 0 {
		p.add(key, fmt.Sprintf("%q is not a group ID", v))
		return nil
	}
	return &atomicwriter.Owner{UID: -1, GID: int(gid)}
}
