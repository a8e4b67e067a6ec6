package spc

import (
	"fmt"
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
	ParamObjects                = "objects"

	// paramUsePodServiceAccountAnnotation is an upstream parameter kvnode
	// does not implement; Parse refuses it when true rather than ignore it.
	paramUsePodServiceAccountAnnotation = "usePodServiceAccountAnnotation"
)

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

	// Objects are the objects to mount, in the order listed; their file
	// names are valid and distinct.
	Objects []keyvault.Object
}

// VaultURL is the vault's URL, e.g. https://name.vault.azure.net/.
func (c *Config) VaultURL() string { return c.Cloud.VaultURL(c.KeyVaultName) }

// AuthMode is the identity a mount uses, chosen as the upstream provider
// chooses: usePodIdentity, else useVMManagedIdentity, else workload identity
// when clientID is set, else a service principal. Parse has already refused
// combinations where a second setting would be silently ignored. Whether
// kubelet passed the service-account token workload identity needs is for the
// CSI layer to check (upstream falls back to a service principal without it).
func (c *Config) AuthMode() AuthMode {
	switch {
	case c.UsePodIdentity:
		return PodIdentity
	case c.UseVMManagedIdentity:
		return VMManagedIdentity
	case c.ClientID != "":
		return WorkloadIdentity
	default:
		return ServicePrincipal
	}
}

// Parse reads the Azure provider's parameters (spec.parameters, or a
// NodePublishVolume volume context that contains them) into a Config. All
// values are trimmed of surrounding white space first, as upstream does. On
// failure it returns a *ValidationError listing every problem found.
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

	if detail := checkVaultName(cfg.KeyVaultName); detail != "" {
		p.add(ParamKeyVaultName, detail)
	}

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
	case !isTenantID(cfg.TenantID):
		p.add(tenantField, fmt.Sprintf("%q must be a tenant ID (GUID) or a domain name", cfg.TenantID))
	}

	parseCloud(cfg, get(ParamCloudName), &p)

	cfg.UsePodIdentity = parseBool(ParamUsePodIdentity, get(ParamUsePodIdentity), &p)
	cfg.UseVMManagedIdentity = parseBool(ParamUseVMManagedIdentity, get(ParamUseVMManagedIdentity), &p)
	if parseBool(paramUsePodServiceAccountAnnotation, get(paramUsePodServiceAccountAnnotation), &p) {
		p.add(paramUsePodServiceAccountAnnotation, "is not supported; set clientID to the workload identity's client ID")
	}
	checkIdentity(cfg, &p)

	cfg.Objects = parseObjects(get(ParamObjects), &p)

	if err := p.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// checkVaultName applies Azure's rule for vault names and returns what is
// wrong, or "".
func checkVaultName(name string) string {
	switch {
	case name == "":
		return "must be set"
	case len(name) < 3 || len(name) > 24:
		return fmt.Sprintf("%q must be 3-24 characters long", name)
	}
	for _, r := range name {
		if !isASCIILetter(r) && !isASCIIDigit(r) && r != '-' {
			return fmt.Sprintf("%q may contain only letters, digits and hyphens", name)
		}
	}
	switch {
	case !isASCIILetter(rune(name[0])):
		return fmt.Sprintf("%q must start with a letter", name)
	case strings.HasSuffix(name, "-"):
		return fmt.Sprintf("%q must end with a letter or digit", name)
	case strings.Contains(name, "--"):
		return fmt.Sprintf("%q must not contain consecutive hyphens", name)
	}
	return ""
}

// isTenantID accepts what can name a tenant in an authority URL: a GUID or a
// domain name such as contoso.onmicrosoft.com. Anything else (a slash, a
// query) would change the URL the token is requested from.
func isTenantID(s string) bool {
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

// checkIdentity refuses identity settings of which upstream would silently
// ignore one.
func checkIdentity(cfg *Config, p *problems) {
	if cfg.UsePodIdentity && cfg.UseVMManagedIdentity {
		p.add(ParamUsePodIdentity, "cannot be combined with useVMManagedIdentity; choose one identity")
	}
	if cfg.ClientID != "" {
		if cfg.UsePodIdentity {
			p.add(ParamClientID, "workload identity cannot be combined with usePodIdentity; choose one identity")
		}
		if cfg.UseVMManagedIdentity {
			p.add(ParamClientID, "workload identity cannot be combined with useVMManagedIdentity; choose one identity")
		}
	}
	if cfg.UserAssignedIdentityID != "" && !cfg.UseVMManagedIdentity {
		p.add(ParamUserAssignedIdentityID, `is used only with useVMManagedIdentity "true"`)
	}
}

func isASCIILetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }
func isASCIIDigit(r rune) bool  { return r >= '0' && r <= '9' }
