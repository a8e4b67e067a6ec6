package emulator

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config seeds an emulator: the identities Entra ID knows, the issuers it
// trusts for federated credentials, the managed identities assigned to the
// node, and the vaults with their contents and access grants. It is read from
// YAML (or JSON) with LoadConfig, and the control surface takes the same
// shapes as JSON.
//
//	applications:
//	- tenantId: 72f988bf-0000-0000-0000-000000000001
//	  clientId: 11111111-0000-0000-0000-000000000001
//	  secret: s3cret
//	  federatedCredentials:
//	  - issuer: https://kubernetes.default.svc
//	    subject: system:serviceaccount:default:app
//	managedIdentities:
//	- tenantId: 72f988bf-0000-0000-0000-000000000001
//	  clientId: 22222222-0000-0000-0000-000000000002
//	trustedIssuers:
//	- issuer: https://kubernetes.default.svc
//	  jwksFile: jwks.json
//	vaults:
//	- name: kv1
//	  secrets:
//	  - {name: db-password, value: hunter2}
//	  grants:
//	  - {clientId: 11111111-0000-0000-0000-000000000001, permissions: [secrets/get]}
type Config struct {
	Applications      []ApplicationConfig     `json:"applications,omitempty"`
	ManagedIdentities []ManagedIdentityConfig `json:"managedIdentities,omitempty"`
	TrustedIssuers    []TrustedIssuerConfig   `json:"trustedIssuers,omitempty"`
	Vaults            []VaultConfig           `json:"vaults,omitempty"`
}

// ApplicationConfig registers an application (service principal).
type ApplicationConfig struct {
	TenantID             string                      `json:"tenantId"`
	ClientID             string                      `json:"clientId"`
	ObjectID             string                      `json:"objectId,omitempty"`
	Secret               string                      `json:"secret,omitempty"`
	FederatedCredentials []FederatedCredentialConfig `json:"federatedCredentials,omitempty"`
}

// FederatedCredentialConfig is a federated identity credential; Audiences
// defaults to api://AzureADTokenExchange.
type FederatedCredentialConfig struct {
	Issuer    string   `json:"issuer"`
	Subject   string   `json:"subject"`
	Audiences []string `json:"audiences,omitempty"`
}

// ManagedIdentityConfig registers a managed identity and assigns it to the
// node. ClientID, ObjectID and ResourceID are generated when empty.
type ManagedIdentityConfig struct {
	TenantID   string `json:"tenantId"`
	ClientID   string `json:"clientId,omitempty"`
	ObjectID   string `json:"objectId,omitempty"`
	ResourceID string `json:"resourceId,omitempty"`
	// SystemAssigned makes it the node's system-assigned identity.
	SystemAssigned       bool                        `json:"systemAssigned,omitempty"`
	FederatedCredentials []FederatedCredentialConfig `json:"federatedCredentials,omitempty"`
}

// TrustedIssuerConfig trusts an external token issuer's keys: JWKS inline (a
// JSON Web Key Set as an object or a JSON string) or from JWKSFile, a path
// relative to the config file.
type TrustedIssuerConfig struct {
	Issuer   string          `json:"issuer"`
	JWKS     json.RawMessage `json:"jwks,omitempty"`
	JWKSFile string          `json:"jwksFile,omitempty"`
}

// VaultConfig creates a vault and fills it. A secret name listed more than
// once gets one version per entry, the last one current.
type VaultConfig struct {
	Name string `json:"name"`
	// Cloud is AzurePublicCloud (default), AzureUSGovernmentCloud or AzureChinaCloud.
	Cloud string `json:"cloud,omitempty"`
	// TenantID is the vault's tenant (see VaultOptions.TenantID).
	TenantID string `json:"tenantId,omitempty"`
	// PageSize is the default list page size (1-25).
	PageSize     int                 `json:"pageSize,omitempty"`
	Throttle     *ThrottleConfig     `json:"throttle,omitempty"`
	Secrets      []SecretConfig      `json:"secrets,omitempty"`
	Keys         []KeyConfig         `json:"keys,omitempty"`
	Certificates []CertificateConfig `json:"certificates,omitempty"`
	Grants       []GrantConfig       `json:"grants,omitempty"`
}

// ThrottleConfig limits a vault to Limit requests per Window.
type ThrottleConfig struct {
	Limit  int      `json:"limit"`
	Window Duration `json:"window"`
}

// SecretConfig is one secret version.
type SecretConfig struct {
	Name        string            `json:"name"`
	Value       string            `json:"value"`
	ContentType string            `json:"contentType,omitempty"`
	Enabled     *bool             `json:"enabled,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
}

// KeyConfig creates a key: Type RSA, RSA-HSM, EC or EC-HSM.
type KeyConfig struct {
	Name  string `json:"name"`
	Type  string `json:"type,omitempty"`
	Size  int    `json:"size,omitempty"`
	Curve string `json:"curve,omitempty"`
}

// CertificateConfig creates a certificate (and its secret and key).
type CertificateConfig struct {
	Name string `json:"name"`
	// ContentType is application/x-pkcs12 or application/x-pem-file.
	ContentType  string   `json:"contentType,omitempty"`
	ChainLength  int      `json:"chainLength,omitempty"`
	KeyType      string   `json:"keyType,omitempty"`
	Subject      string   `json:"subject,omitempty"`
	DNSNames     []string `json:"dnsNames,omitempty"`
	ShuffleChain bool     `json:"shuffleChain,omitempty"`
}

// GrantConfig grants a principal, named by ObjectID or by ClientID, data-plane
// permissions on the vault ("secrets/get", "keys/get", "certificates/get", ...).
type GrantConfig struct {
	ObjectID    string   `json:"objectId,omitempty"`
	ClientID    string   `json:"clientId,omitempty"`
	Permissions []string `json:"permissions"`
}

// Duration is a time.Duration written as a Go duration string ("1s", "10m").
type Duration struct{ time.Duration }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	// A *json.UnmarshalTypeError gets the field's name from the decoder.
	bad := &json.UnmarshalTypeError{Value: string(b), Type: reflect.TypeFor[Duration]()}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return bad
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return bad
	}
	d.Duration = v
	return nil
}

// LoadConfig reads a YAML or JSON config file. Unknown fields are errors, and
// a trusted issuer's relative jwksFile is taken relative to the file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("load config: %w", err)
	}
	var cfg Config
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return Config{}, fmt.Errorf("load config %s: %w", path, err)
	}
	for i := range cfg.TrustedIssuers {
		if f := cfg.TrustedIssuers[i].JWKSFile; f != "" && !filepath.IsAbs(f) {
			cfg.TrustedIssuers[i].JWKSFile = filepath.Join(filepath.Dir(path), f)
		}
	}
	return cfg, nil
}

// ApplyConfig registers everything cfg describes: trusted issuers, then
// applications and managed identities, then vaults (whose grants may name the
// principals by client ID). It stops at the first error, which names the
// offending entry (for example "vaults[0].secrets[2].name: required").
func (e *Emulator) ApplyConfig(cfg Config) error {
	for i, ic := range cfg.TrustedIssuers {
		if err := e.applyTrustedIssuer(ic); err != nil {
			return fmt.Errorf("trustedIssuers[%d]%w", i, wrapField(err))
		}
	}
	for i, ac := range cfg.Applications {
		if _, err := e.applyApplication(ac); err != nil {
			return fmt.Errorf("applications[%d]%w", i, wrapField(err))
		}
	}
	for i, mc := range cfg.ManagedIdentities {
		if _, err := e.applyManagedIdentity(mc); err != nil {
			return fmt.Errorf("managedIdentities[%d]%w", i, wrapField(err))
		}
	}
	for i, vc := range cfg.Vaults {
		if err := e.applyVault(vc); err != nil {
			return fmt.Errorf("vaults[%d]%w", i, wrapField(err))
		}
	}
	return nil
}

// fieldError is an error about one field; its text starts with ".field: " so
// that callers can prefix the entry's position.
func fieldError(field, format string, args ...any) error {
	return fmt.Errorf(".%s: %s", field, fmt.Sprintf(format, args...))
}

// wrapField prefixes err's text with ": " unless it already names a field.
func wrapField(err error) error {
	if err == nil || strings.HasPrefix(err.Error(), ".") || strings.HasPrefix(err.Error(), "[") {
		return err
	}
	return fmt.Errorf(": %w", err)
}

func (e *Emulator) applyTrustedIssuer(ic TrustedIssuerConfig) error {
	if ic.Issuer == "" {
		return fieldError("issuer", "required")
	}
	jwks := []byte(ic.JWKS)
	switch {
	case len(jwks) > 0 && ic.JWKSFile != "":
		return fieldError("jwks", "give jwks or jwksFile, not both")
	case ic.JWKSFile != "":
		b, err := os.ReadFile(ic.JWKSFile)
		if err != nil {
			return fieldError("jwksFile", "%v", err)
		}
		jwks = b
	case len(jwks) == 0:
		return fieldError("jwks", "required (or jwksFile)")
	case jwks[0] == '"':
		var s string
		if err := json.Unmarshal(jwks, &s); err != nil {
			return fieldError("jwks", "%v", err)
		}
		jwks = []byte(s)
	}
	if err := e.TrustIssuer(ic.Issuer, jwks); err != nil {
		return fieldError("jwks", "%v", err)
	}
	return nil
}

func federatedCredentials(fcs []FederatedCredentialConfig) ([]FederatedCredential, error) {
	var out []FederatedCredential
	for i, fc := range fcs {
		switch {
		case fc.Issuer == "":
			return nil, fieldError(fmt.Sprintf("federatedCredentials[%d].issuer", i), "required")
		case fc.Subject == "":
			return nil, fieldError(fmt.Sprintf("federatedCredentials[%d].subject", i), "required")
		}
		out = append(out, FederatedCredential(fc))
	}
	return out, nil
}

func (e *Emulator) applyApplication(ac ApplicationConfig) (Principal, error) {
	switch {
	case ac.TenantID == "":
		return Principal{}, fieldError("tenantId", "required")
	case ac.ClientID == "":
		return Principal{}, fieldError("clientId", "required")
	}
	fcs, err := federatedCredentials(ac.FederatedCredentials)
	if err != nil {
		return Principal{}, err
	}
	p, err := e.AddApplication(Principal{TenantID: ac.TenantID, ClientID: ac.ClientID, ObjectID: ac.ObjectID, Secret: ac.Secret, Federated: fcs})
	if err != nil {
		return Principal{}, fieldError("clientId", "%v", err)
	}
	return p, nil
}

func (e *Emulator) applyManagedIdentity(mc ManagedIdentityConfig) (Principal, error) {
	if mc.TenantID == "" {
		return Principal{}, fieldError("tenantId", "required")
	}
	if mc.SystemAssigned && mc.ResourceID != "" {
		return Principal{}, fieldError("resourceId", "a system-assigned identity has no resource ID")
	}
	fcs, err := federatedCredentials(mc.FederatedCredentials)
	if err != nil {
		return Principal{}, err
	}
	p := Principal{TenantID: mc.TenantID, ClientID: mc.ClientID, ObjectID: mc.ObjectID, ResourceID: mc.ResourceID, Federated: fcs}
	if mc.SystemAssigned {
		p, err = e.SetSystemAssignedIdentity(p)
	} else {
		p, err = e.AddManagedIdentity(p)
	}
	if err != nil {
		return Principal{}, fieldError("clientId", "%v", err)
	}
	return p, nil
}

// grantObjectID resolves a grant's principal to an object ID.
func (e *Emulator) grantObjectID(g GrantConfig) (string, error) {
	switch {
	case g.ObjectID != "" && g.ClientID != "":
		return "", fieldError("objectId", "give objectId or clientId, not both")
	case g.ObjectID != "":
		return g.ObjectID, nil
	case g.ClientID != "":
		p, ok := e.dir.lookup(g.ClientID)
		if !ok {
			return "", fieldError("clientId", "no application or managed identity with client ID %s", g.ClientID)
		}
		return p.ObjectID, nil
	}
	return "", fieldError("objectId", "required (or clientId)")
}

func (e *Emulator) applyVault(vc VaultConfig) error {
	if vc.Name == "" {
		return fieldError("name", "required")
	}
	opts := VaultOptions{Cloud: vc.Cloud, TenantID: vc.TenantID, PageSize: vc.PageSize}
	if vc.Throttle != nil {
		opts.ThrottleLimit, opts.ThrottleWindow = vc.Throttle.Limit, vc.Throttle.Window.Duration
	}
	if err := e.CreateVault(vc.Name, opts); err != nil {
		return fieldError("name", "%v", err)
	}
	for i, sc := range vc.Secrets {
		if sc.Name == "" {
			return fieldError(fmt.Sprintf("secrets[%d].name", i), "required")
		}
		opts := SecretOptions{ContentType: sc.ContentType, Enabled: sc.Enabled, Tags: sc.Tags}
		if _, err := e.SetSecret(vc.Name, sc.Name, sc.Value, opts); err != nil {
			return fieldError(fmt.Sprintf("secrets[%d]", i), "%v", err)
		}
	}
	for i, kc := range vc.Keys {
		if kc.Name == "" {
			return fieldError(fmt.Sprintf("keys[%d].name", i), "required")
		}
		if _, err := e.CreateKey(vc.Name, kc.Name, KeyOptions{Type: kc.Type, Size: kc.Size, Curve: kc.Curve}); err != nil {
			return fieldError(fmt.Sprintf("keys[%d]", i), "%v", err)
		}
	}
	for i, cc := range vc.Certificates {
		if cc.Name == "" {
			return fieldError(fmt.Sprintf("certificates[%d].name", i), "required")
		}
		if _, err := e.CreateCertificate(vc.Name, cc.Name, cc.options()); err != nil {
			return fieldError(fmt.Sprintf("certificates[%d]", i), "%v", err)
		}
	}
	for i, gc := range vc.Grants {
		oid, err := e.grantObjectID(gc)
		if err != nil {
			return fmt.Errorf(".grants[%d]%w", i, err)
		}
		if err := e.Grant(vc.Name, oid, gc.Permissions...); err != nil {
			return fieldError(fmt.Sprintf("grants[%d].permissions", i), "%v", err)
		}
	}
	return nil
}

func (cc CertificateConfig) options() CertificateOptions {
	return CertificateOptions{ContentType: cc.ContentType, ChainLength: cc.ChainLength, KeyType: cc.KeyType,
		Subject: cc.Subject, DNSNames: cc.DNSNames, ShuffleChain: cc.ShuffleChain}
}
