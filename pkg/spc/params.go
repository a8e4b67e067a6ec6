package spc

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/kvnode/kvnode/pkg/keyvault"
)

// Parameter names of the Azure provider, the keys of spec.parameters. Keys
// are case-sensitive, as upstream. The volume context kubelet passes carries
// these plus keys of its own (csi.storage.k8s.io/*, secretProviderClass, ...),
// which Parse ignores like every other key it does not know.
const (
	ParamKeyVaultName           = "keyvaultName"
	ParamTenantID               = "tenantID"
	ParamTenantIDLegacy         = "tenantId"
	ParamCloudName              = "cloudName"
	ParamCloudEnvFileName       = "cloudEnvFileName"
	ParamUsePodIdentity         = "usePodIdentity"
	ParamUseVMManagedIdentity   = "useVMManagedIdentity"
	ParamUserAssignedIdentityID = "userAssignedIdentityID"
	ParamClientID               = "clientID"
	ParamUseAzureTokenProxy     = "useAzureTokenProxy"
	ParamObjects                = "objects"
)

// knownParams are the parameters the Azure provider reads.
var knownParams = map[string]bool{
	ParamKeyVaultName: true, ParamTenantID: true, ParamTenantIDLegacy: true, ParamCloudName: true,
	ParamCloudEnvFileName: true, ParamUsePodIdentity: true, ParamUseVMManagedIdentity: true,
	ParamUserAssignedIdentityID: true, ParamClientID: true, ParamUseAzureTokenProxy: true, ParamObjects: true,
}

// retiredParams were read by earlier upstream releases and are ignored by
// the current one, as by kvnode.
var retiredParams = map[string]string{
	"resourceGroup":                  "the vault URL comes from keyvaultName and cloudName",
	"subscriptionId":                 "the vault URL comes from keyvaultName and cloudName",
	"usePodServiceAccountAnnotation": "set clientID to the workload identity's client ID",
}

// AuthMode is how the driver obtains a Key Vault token for a mount.
type AuthMode string

// Auth modes, in the upstream provider's order of precedence.
const (
	// PodIdentity asks aad-pod-identity's NMI (/host/token/) for the pod's identity.
	PodIdentity AuthMode = "PodIdentity"
	// VMManagedIdentity asks IMDS for the node's managed identity
	// (UserAssignedIdentityID selects a user-assigned one).
	VMManagedIdentity AuthMode = "VMManagedIdentity"
	// WorkloadIdentity exchanges the pod's service-account token for
	// api://AzureADTokenExchange for a token of ClientID.
	WorkloadIdentity AuthMode = "WorkloadIdentity"
	// IdentityBinding exchanges the pod's service-account token for
	// api://AKSIdentityBinding for a token of ClientID through the
	// cluster's token proxy (useAzureTokenProxy).
	IdentityBinding AuthMode = "IdentityBinding"
	// ServicePrincipal uses clientid/clientsecret from the volume's
	// nodePublishSecretRef Secret.
	ServicePrincipal AuthMode = "ServicePrincipal"
)

// Config is a parsed, validated set of Azure provider parameters.
type Config struct {
	// KeyVaultName is the vault's name (not its URL); see VaultURL.
	KeyVaultName string
	// TenantID is the Entra ID tenant (tenantID, else tenantId).
	TenantID string
	// Cloud locates the vault and the token authority.
	Cloud Cloud
	// CloudEnvFileName is the Azure environment file Cloud was read from
	// (AzureStackCloud only; ignored, as upstream, for the other clouds).
	CloudEnvFileName string

	UsePodIdentity       bool
	UseVMManagedIdentity bool
	// UserAssignedIdentityID is the client ID of a user-assigned managed
	// identity (with UseVMManagedIdentity).
	UserAssignedIdentityID string
	// ClientID is the workload identity's client ID.
	ClientID string
	// UseAzureTokenProxy exchanges the pod's service-account token for
	// audience api://AKSIdentityBinding through the cluster's token proxy
	// (AKS identity binding) instead of at Entra ID directly.
	UseAzureTokenProxy bool

	// Objects are the objects to mount, in the order listed; their file
	// names are valid and distinct. Empty when the objects array is.
	Objects []keyvault.Object

	// Warnings are the mistakes in the parameters that the upstream
	// provider tolerates; the Config is what upstream would mount. A
	// strict caller refuses a Config that has any.
	Warnings []*FieldError
}

// VaultURL is the vault's URL, e.g. https://name.vault.azure.net/.
func (c *Config) VaultURL() string { return c.Cloud.VaultURL(c.KeyVaultName) }

// AuthMode is the identity a mount uses, chosen as the upstream provider
// chooses: usePodIdentity, else useVMManagedIdentity, else useAzureTokenProxy
// (identity binding), else workload identity when clientID is set, else a
// service principal. Whether kubelet passed the service-account token
// workload identity needs is for the CSI layer to check (upstream falls back
// to a service principal without it).
func (c *Config) AuthMode() AuthMode {
	switch {
	case c.UsePodIdentity:
		return PodIdentity
	case c.UseVMManagedIdentity:
		return VMManagedIdentity
	case c.UseAzureTokenProxy:
		return IdentityBinding
	case c.ClientID != "":
		return WorkloadIdentity
	default:
		return ServicePrincipal
	}
}

// ReadsFiles reports whether Parse of params reads a file (the Azure
// environment file of cloudName AzureStackCloud), so that its result can
// change while params do not.
func ReadsFiles(params map[string]string) bool {
	return strings.EqualFold(strings.TrimSpace(params[ParamCloudName]), AzureStackCloud)
}

// Parse reads the Azure provider's parameters (a SecretProviderClass's
// spec.parameters) into a Config. All values are trimmed of surrounding
// white space first, as upstream does. What upstream refuses, or what it
// would do unsafely, is an error: a *ValidationError listing every such
// problem. What upstream tolerates is mounted as upstream mounts it and
// listed in Config.Warnings.
//
// Parse reads the file named by cloudEnvFileName when cloudName is
// AzureStackCloud; it does nothing else outside memory.
func Parse(params map[string]string) (*Config, error) {
	get := func(key string) string { return strings.TrimSpace(params[key]) }
	var p problems
	cfg := &Config{
		KeyVaultName:           get(ParamKeyVaultName),
		CloudEnvFileName:       get(ParamCloudEnvFileName),
		UserAssignedIdentityID: get(ParamUserAssignedIdentityID),
		ClientID:               get(ParamClientID),
	}
	checkParamNames(params, &p)

	checkVaultName(cfg.KeyVaultName, &p)

	// tenantID wins over tenantId when both are set, as upstream.
	tenantField := ParamTenantID
	cfg.TenantID = get(ParamTenantID)
	if cfg.TenantID == "" {
		tenantField = ParamTenantIDLegacy
		cfg.TenantID = get(ParamTenantIDLegacy)
	}
	switch {
	case cfg.TenantID == "":
		p.add(ParamTenantIDLegacy, "must be set (as tenantId or tenantID)")
	case !IsTenantID(cfg.TenantID):
		p.add(tenantField, fmt.Sprintf("%q must be a tenant ID (GUID) or a domain name", cfg.TenantID))
	}

	parseCloud(cfg, get(ParamCloudName), &p)

	cfg.UsePodIdentity = parseBool(ParamUsePodIdentity, get(ParamUsePodIdentity), &p)
	cfg.UseVMManagedIdentity = parseBool(ParamUseVMManagedIdentity, get(ParamUseVMManagedIdentity), &p)
	cfg.UseAzureTokenProxy = parseBool(ParamUseAzureTokenProxy, get(ParamUseAzureTokenProxy), &p)
	checkIdentity(cfg, &p)

	cfg.Objects = parseObjects(get(ParamObjects), &p)
	for i := range cfg.Objects {
		if o := &cfg.Objects[i]; o.KeyVaultName != "" {
			o.VaultURL = cfg.Cloud.VaultURL(o.KeyVaultName)
		}
	}

	if err := p.err(); err != nil {
		return nil, err
	}
	cfg.Warnings = p.warnings
	return cfg, nil
}

// checkParamNames warns about parameters the provider does not read: they
// are ignored, upstream and here, so a misspelt name silently does nothing.
func checkParamNames(params map[string]string, p *problems) {
	for _, key := range slices.Sorted(maps.Keys(params)) {
		if knownParams[key] || kubeletKey(key) {
			continue
		}
		if why, ok := retiredParams[key]; ok {
			p.warn(key, "is no longer read by the Azure provider; ignored ("+why+")")
			continue
		}
		detail := "is not a parameter of the Azure provider; ignored"
		for known := range knownParams {
			if strings.EqualFold(known, key) {
				detail += " (parameter names are case-sensitive: " + known + ")"
			}
		}
		p.warn(key, detail)
	}
}

// kubeletKey reports whether key is one kubelet adds to a volume context
// (pod information, tokens, the volume's own secretProviderClass
// attribute); Parse may be given a volume context holding them.
func kubeletKey(key string) bool {
	return strings.HasPrefix(key, "csi.storage.k8s.io/") || key == "secretProviderClass"
}

// checkVaultName applies Azure's rule for vault names. Upstream checks
// only the length and the character set; a name that passes those but not
// Azure's full rule (a leading digit or hyphen, a trailing hyphen, "--")
// can name no vault, so its mount fails at the fetch as upstream's does,
// and the warning says why.
func checkVaultName(name string, p *problems) {
	if detail, tolerated := VaultNameProblem(name); detail != "" {
		if tolerated {
			p.warn(ParamKeyVaultName, detail)
		} else {
			p.add(ParamKeyVaultName, detail)
		}
	}
}

// VaultNameProblem returns what is wrong with a vault name, or "", and
// whether the upstream provider accepts the name all the same.
func VaultNameProblem(name string) (detail string, tolerated bool) {
	switch {
	case name == "":
		return "must be set", false
	case len(name) < 3 || len(name) > 24:
		return fmt.Sprintf("%q must be 3-24 characters long", name), false
	}
	for _, r := range name {
		if !isASCIILetter(r) && !isASCIIDigit(r) && r != '-' {
			return fmt.Sprintf("%q may contain only letters, digits and hyphens", name), false
		}
	}
	const cannot = "; no Key Vault can have this name"
	switch {
	case !isASCIILetter(rune(name[0])):
		return fmt.Sprintf("%q must start with a letter%s", name, cannot), true
	case strings.HasSuffix(name, "-"):
		return fmt.Sprintf("%q must end with a letter or digit%s", name, cannot), true
	case strings.Contains(name, "--"):
		return fmt.Sprintf("%q must not contain consecutive hyphens%s", name, cannot), true
	}
	return "", false
}

// IsTenantID accepts what can name a tenant in an authority URL: a GUID or a
// domain name such as contoso.onmicrosoft.com. Anything else (a slash, a
// query) would change the URL the token is requested from; the Azure SDK
// refuses it too.
func IsTenantID(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !isASCIILetter(r) && !isASCIIDigit(r) && r != '-' && r != '.' {
			return false
		}
	}
	return !strings.HasPrefix(s, ".") && !strings.HasPrefix(s, "-")
}

func parseCloud(cfg *Config, name string, p *problems) {
	if name == "" {
		name = AzurePublicCloud
	}
	if c, ok := CloudByName(name); ok {
		cfg.Cloud = c
		return
	}
	if !strings.EqualFold(name, AzureStackCloud) {
		p.add(ParamCloudName, fmt.Sprintf("%q is not one of %s, %s, %s, %s",
			name, AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, AzureStackCloud))
		return
	}
	if cfg.CloudEnvFileName == "" {
		p.add(ParamCloudEnvFileName, "must be set when cloudName is AzureStackCloud")
		return
	}
	c, err := readCloudEnvFile(cfg.CloudEnvFileName)
	if err != nil {
		p.add(ParamCloudEnvFileName, err.Error())
		return
	}
	cfg.Cloud = c
}

// parseBool reads a boolean as upstream does: empty is false, otherwise
// strconv.ParseBool (1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False).
func parseBool(field, value string, p *problems) bool {
	if value == "" {
		return false
	}
	b, err := strconv.ParseBool(value)
	if err != nil {
		p.add(field, fmt.Sprintf("%q is not a boolean (use \"true\" or \"false\")", value))
		return false
	}
	return b
}

// checkIdentity refuses identity settings upstream refuses, and warns
// about those of which upstream silently ignores one.
func checkIdentity(cfg *Config, p *problems) {
	modes := 0
	for _, on := range []bool{cfg.UsePodIdentity, cfg.UseVMManagedIdentity, cfg.UseAzureTokenProxy} {
		if on {
			modes++
		}
	}
	if modes > 1 {
		p.add(ParamUsePodIdentity, "usePodIdentity, useVMManagedIdentity and useAzureTokenProxy are exclusive; choose one identity")
		return
	}
	mode := cfg.AuthMode()
	if cfg.ClientID != "" && (mode == PodIdentity || mode == VMManagedIdentity) {
		p.warn(ParamClientID, fmt.Sprintf("is ignored with %s, as the upstream provider ignores it (clientID names a workload identity)", modeParam(mode)))
	}
	if mode == IdentityBinding && cfg.ClientID == "" {
		p.add(ParamClientID, "must be set with useAzureTokenProxy: the managed identity's client ID")
	}
	if cfg.UserAssignedIdentityID != "" && mode != VMManagedIdentity {
		p.warn(ParamUserAssignedIdentityID, `is ignored without useVMManagedIdentity "true", as the upstream provider ignores it`)
	}
}

// modeParam is the parameter that selects mode.
func modeParam(mode AuthMode) string {
	switch mode {
	case PodIdentity:
		return ParamUsePodIdentity
	case VMManagedIdentity:
		return ParamUseVMManagedIdentity
	case IdentityBinding:
		return ParamUseAzureTokenProxy
	}
	return ParamClientID
}

func isASCIILetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isASCIIDigit(r rune) bool  { return r >= '0' && r <= '9' }
