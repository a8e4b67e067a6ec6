package emulator

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Key Vault object kinds, as they appear in URL paths, DisableVersion and the
// request log's Object ("secrets/NAME").
const (
	KindSecrets      = "secrets"
	KindKeys         = "keys"
	KindCertificates = "certificates"
)

// Defaults of a vault, as Azure's: 4,000 secret GETs per 10 seconds per vault,
// and list pages of 25 items.
const (
	DefaultThrottleLimit  = 4000
	DefaultThrottleWindow = 10 * time.Second
	DefaultPageSize       = 25
	// maxSecretSize is Key Vault's limit on a secret value.
	maxSecretSize = 25 * 1024
)

// allPermissions are the permissions an access grant can carry: Key Vault
// access-policy permissions for the data-plane reads the emulator serves.
func allPermissions() []string {
	return []string{
		"secrets/get", "secrets/list",
		"keys/get", "keys/list",
		"certificates/get", "certificates/list",
	}
}

var (
	// ErrVaultNotFound is returned by the seeding API for an unknown vault.
	ErrVaultNotFound = errors.New("vault not found")
	// ErrObjectNotFound is returned by the seeding API for an unknown object or version.
	ErrObjectNotFound = errors.New("object not found")
)

// Name rules: vault names are DNS labels (3-24 characters, letters, digits and
// hyphens, starting with a letter, not ending with a hyphen, no "--"); object
// names are 1-127 letters, digits and hyphens.
var (
	vaultNameRE  = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$`)
	objectNameRE = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
)

// VaultOptions configure a vault.
type VaultOptions struct {
	// Cloud is the name of one of Clouds; "" is AzurePublicCloud. The vault is
	// served at <name>.<that cloud's VaultSuffix> only.
	Cloud string
	// TenantID is the vault's tenant: the challenge names it, and tokens from
	// other tenants are refused (AKV10032) as Azure does. The SDK insists that
	// the challenge's tenant be its credential's tenant, so when TenantID is
	// empty the vault adopts the tenant of the registered principals if they
	// all share one (the usual single-tenant test), challenges with
	// "organizations" otherwise, and accepts tokens from any tenant.
	TenantID string
	// ThrottleLimit requests (that carry a valid token) are answered per
	// ThrottleWindow, sliding; then 429. Defaults 4,000 per 10 s.
	ThrottleLimit  int
	ThrottleWindow time.Duration
	// PageSize is the default number of items in a list page (1-25, default
	// 25); a request's maxresults overrides it. Tests lower it to force paging
	// with clients, like the Azure SDK, that never send maxresults.
	PageSize int
}

// SecretOptions are a secret version's attributes.
type SecretOptions struct {
	ContentType string
	// Enabled defaults to true.
	Enabled   *bool
	Tags      map[string]string
	NotBefore time.Time
	Expires   time.Time
}

// KeyOptions describe a key to generate.
type KeyOptions struct {
	// Type is RSA (default), RSA-HSM, EC or EC-HSM.
	Type string
	// Size is the RSA modulus size: 2048 (default), 3072 or 4096.
	Size int
	// Curve is the EC curve: P-256 (default), P-384 or P-521.
	Curve string
}

// CertificateOptions describe a certificate to generate.
type CertificateOptions struct {
	// ContentType of the certificate's secret: application/x-pkcs12 (default)
	// or application/x-pem-file.
	ContentType string
	// ChainLength counts the certificates from the leaf to the root: default
	// 3 (leaf, one intermediate, root); 1 is a self-signed leaf.
	ChainLength int
	// KeyType of the leaf: RSA (2048, default) or EC (P-256).
	KeyType string
	// Subject in Key Vault's policy form, default "CN=<name>".
	Subject  string
	DNSNames []string
	// ShuffleChain stores the certificates in the secret out of order (see
	// certSecretValue), as many real vaults hold them.
	ShuffleChain bool
}

// IssuedCertificate is what CreateCertificate generated, for tests to compare
// with what a client wrote.
type IssuedCertificate struct {
	// Version is shared by the certificate, its key and its secret.
	Version string
	Leaf    *x509.Certificate
	// Chain is leaf first, root last.
	Chain []*x509.Certificate
	Key   crypto.Signer
	// SecretValue is the secret's value (base64 PFX or PEM text).
	SecretValue string
}

// keyVaultService serves the Key Vault data plane for every vault.
type keyVaultService struct {
	*core
	faults faultQueue
	mu     sync.Mutex
	vaults map[string]*vault // by lower-case name
}

func newKeyVaultService(c *core) *keyVaultService {
	return &keyVaultService{core: c, vaults: map[string]*vault{}}
}

// vault is one emulated vault. Guarded by keyVaultService.mu.
type vault struct {
	name     string // lower case
	cloud    Cloud
	tenantID string
	pageSize int
	limiter  slidingWindow
	grants   map[string]map[string]bool // object ID -> permission set
	objects  map[objectKey]*kvObject
}

type objectKey struct{ kind, name string } // name lower case

func (v *vault) host() string { return v.name + "." + v.cloud.VaultSuffix }

func (v *vault) url(kind, name, version string) string {
	u := "https://" + v.host() + "/" + kind + "/" + name
	if version != "" {
		u += "/" + version
	}
	return u
}

// kvObject is a named secret, key or certificate and its versions, oldest
// first; the last is "latest".
type kvObject struct {
	name     string // as first created
	managed  bool   // a certificate's key or secret
	versions []*kvVersion
}

func (o *kvObject) latest() *kvVersion { return o.versions[len(o.versions)-1] }

func (o *kvObject) version(id string) *kvVersion {
	for _, v := range o.versions {
		if v.id == id {
			return v
		}
	}
	return nil
}

// kvVersion is one version of an object. Exactly one of the payload fields
// is set, by kind.
type kvVersion struct {
	id               string
	created, updated time.Time
	enabled          bool
	notBefore        time.Time
	expires          time.Time
	tags             map[string]string
	contentType      string

	secretValue string        // secrets
	key         *kvKey        // keys
	cert        *kvCertDetail // certificates
}

type kvKey struct {
	kty    string
	public crypto.PublicKey
}

type kvCertDetail struct {
	leaf     *x509.Certificate
	keyType  string
	keySize  int
	curve    string
	subject  string
	dnsNames []string
	selfSign bool
}

// vault returns the vault named name. Callers hold s.mu.
func (s *keyVaultService) vault(name string) (*vault, error) {
	v, ok := s.vaults[strings.ToLower(name)]
	if !ok {
		return nil, fmt.Errorf("vault %q: %w", name, ErrVaultNotFound)
	}
	return v, nil
}

// CreateVault creates an empty vault in opts.Cloud.
func (e *Emulator) CreateVault(name string, opts VaultOptions) error {
	if !vaultNameRE.MatchString(name) || strings.Contains(name, "--") {
		return fmt.Errorf("create vault %q: name must be 3-24 letters, digits and hyphens, start with a letter, end with a letter or digit, and have no consecutive hyphens", name)
	}
	c, err := cloudByName(opts.Cloud)
	if err != nil {
		return fmt.Errorf("create vault %q: %w", name, err)
	}
	if opts.PageSize == 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.PageSize < 1 || opts.PageSize > DefaultPageSize {
		return fmt.Errorf("create vault %q: page size %d out of range 1..%d", name, opts.PageSize, DefaultPageSize)
	}
	limit, window := throttleDefaults(opts.ThrottleLimit, opts.ThrottleWindow)
	v := &vault{
		name:     strings.ToLower(name),
		cloud:    c,
		tenantID: opts.TenantID,
		pageSize: opts.PageSize,
		limiter:  slidingWindow{limit: limit, window: window},
		grants:   map[string]map[string]bool{},
		objects:  map[objectKey]*kvObject{},
	}
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vaults[v.name]; ok {
		return fmt.Errorf("create vault %q: already exists", name)
	}
	s.vaults[v.name] = v
	return nil
}

func cloudByName(name string) (Cloud, error) {
	if name == "" {
		name = "AzurePublicCloud"
	}
	for _, c := range Clouds {
		if strings.EqualFold(c.Name, name) {
			return c, nil
		}
	}
	return Cloud{}, fmt.Errorf("unknown cloud %q", name)
}

func throttleDefaults(limit int, window time.Duration) (int, time.Duration) {
	if limit <= 0 {
		limit = DefaultThrottleLimit
	}
	if window <= 0 {
		window = DefaultThrottleWindow
	}
	return limit, window
}

// SetThrottle changes a vault's request limit (<= 0: the defaults) and forgets
// the requests counted so far.
func (e *Emulator) SetThrottle(vaultName string, limit int, window time.Duration) error {
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return fmt.Errorf("set throttle: %w", err)
	}
	limit, window = throttleDefaults(limit, window)
	v.limiter = slidingWindow{limit: limit, window: window}
	return nil
}

// Grant adds permissions ("secrets/get", "secrets/list", "keys/get",
// "keys/list", "certificates/get", "certificates/list"; none: all of them) for
// the principal with objectID (the token's oid) on a vault, like an access
// policy entry. Grants accumulate; Revoke removes them all.
func (e *Emulator) Grant(vaultName, objectID string, perms ...string) error {
	if objectID == "" {
		return errors.New("grant: object ID is required")
	}
	known := allPermissions()
	if len(perms) == 0 {
		perms = known
	}
	want := make([]string, len(perms))
	for i, p := range perms {
		want[i] = strings.ToLower(p)
		if !contains(known, want[i]) {
			return fmt.Errorf("grant on %s: unknown permission %q (known: %s)", vaultName, p, strings.Join(known, ", "))
		}
	}
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return fmt.Errorf("grant: %w", err)
	}
	set := v.grants[objectID]
	if set == nil {
		set = map[string]bool{}
		v.grants[objectID] = set
	}
	for _, p := range want {
		set[p] = true
	}
	return nil
}

// Revoke removes every permission of objectID on a vault.
func (e *Emulator) Revoke(vaultName, objectID string) error {
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	delete(v.grants, objectID)
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func validObjectName(name string) error {
	if !objectNameRE.MatchString(name) {
		return fmt.Errorf("object name %q must be 1-127 letters, digits and hyphens", name)
	}
	return nil
}

// SetSecret adds a version to the secret name (creating it), which becomes
// the latest, and returns the version.
func (e *Emulator) SetSecret(vaultName, name, value string, opts SecretOptions) (string, error) {
	if err := validObjectName(name); err != nil {
		return "", fmt.Errorf("set secret: %w", err)
	}
	if len(value) > maxSecretSize {
		return "", fmt.Errorf("set secret %s/%s: value is %d bytes, Key Vault allows %d", vaultName, name, len(value), maxSecretSize)
	}
	ver := newVersion(opts.Enabled, opts.Tags, opts.NotBefore, opts.Expires)
	ver.contentType = opts.ContentType
	ver.secretValue = value
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return "", fmt.Errorf("set secret %s: %w", name, err)
	}
	if o := v.objects[objectKey{KindSecrets, strings.ToLower(name)}]; o != nil && o.managed {
		return "", fmt.Errorf("set secret %s/%s: the secret belongs to a certificate; create a certificate version instead", vaultName, name)
	}
	v.add(KindSecrets, name, false, ver)
	return ver.id, nil
}

// CreateKey generates a key version for name and returns the version.
func (e *Emulator) CreateKey(vaultName, name string, opts KeyOptions) (string, error) {
	if err := validObjectName(name); err != nil {
		return "", fmt.Errorf("create key: %w", err)
	}
	kty := strings.ToUpper(opts.Type)
	if kty == "" {
		kty = KeyTypeRSA
	}
	signer, err := newSigner(kty, opts.Size, opts.Curve)
	if err != nil {
		return "", fmt.Errorf("create key %s/%s: %w", vaultName, name, err)
	}
	ver := newVersion(nil, nil, time.Time{}, time.Time{})
	ver.key = &kvKey{kty: kty, public: signer.Public()}
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return "", fmt.Errorf("create key %s: %w", name, err)
	}
	if o := v.objects[objectKey{KindKeys, strings.ToLower(name)}]; o != nil && o.managed {
		return "", fmt.Errorf("create key %s/%s: the key belongs to a certificate", vaultName, name)
	}
	v.add(KindKeys, name, false, ver)
	return ver.id, nil
}

// CreateCertificate generates a certificate chain and stores a new version of
// the certificate name and, as Key Vault does, of the key and the secret of
// the same name and version: the key holds the leaf's public key, the secret
// (managed) the private key and the chain.
func (e *Emulator) CreateCertificate(vaultName, name string, opts CertificateOptions) (*IssuedCertificate, error) {
	if err := validObjectName(name); err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	if opts.ContentType == "" {
		opts.ContentType = ContentTypePKCS12
	}
	if opts.ChainLength == 0 {
		opts.ChainLength = 3
	}
	kty := strings.ToUpper(opts.KeyType)
	switch kty {
	case "":
		kty = KeyTypeRSA
	case KeyTypeRSA, KeyTypeEC:
	default:
		return nil, fmt.Errorf("create certificate %s/%s: key type %q not supported (RSA, EC)", vaultName, name, opts.KeyType)
	}
	if opts.Subject == "" {
		opts.Subject = "CN=" + name
	}
	subject, err := parseSubject(opts.Subject)
	if err != nil {
		return nil, fmt.Errorf("create certificate %s/%s: %w", vaultName, name, err)
	}
	gen, err := generateChain(opts.ChainLength, kty, subject, opts.DNSNames)
	if err != nil {
		return nil, fmt.Errorf("create certificate %s/%s: %w", vaultName, name, err)
	}
	value, err := certSecretValue(opts.ContentType, gen.key, gen.chain, opts.ShuffleChain)
	if err != nil {
		return nil, fmt.Errorf("create certificate %s/%s: %w", vaultName, name, err)
	}
	leaf := gen.chain[0]

	id := randomID()
	mk := func() *kvVersion {
		ver := newVersion(nil, nil, leaf.NotBefore, leaf.NotAfter)
		ver.id = id
		return ver
	}
	certVer, keyVer, secretVer := mk(), mk(), mk()
	detail := &kvCertDetail{leaf: leaf, keyType: kty, subject: opts.Subject, dnsNames: opts.DNSNames, selfSign: opts.ChainLength == 1}
	if kty == KeyTypeRSA {
		detail.keySize = 2048
	} else {
		detail.curve = "P-256"
	}
	certVer.cert = detail
	certVer.contentType = opts.ContentType
	keyVer.key = &kvKey{kty: kty, public: gen.key.Public()}
	secretVer.contentType = opts.ContentType
	secretVer.secretValue = value

	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return nil, fmt.Errorf("create certificate %s: %w", name, err)
	}
	for _, kind := range []string{KindKeys, KindSecrets} {
		if o := v.objects[objectKey{kind, strings.ToLower(name)}]; o != nil && !o.managed {
			return nil, fmt.Errorf("create certificate %s/%s: a %s object of that name exists and does not belong to a certificate", vaultName, name, strings.TrimSuffix(kind, "s"))
		}
	}
	v.add(KindCertificates, name, false, certVer)
	v.add(KindKeys, name, true, keyVer)
	v.add(KindSecrets, name, true, secretVer)
	return &IssuedCertificate{
		Version:     id,
		Leaf:        leaf,
		Chain:       gen.chain,
		Key:         gen.key,
		SecretValue: value,
	}, nil
}

// DisableVersion disables one version (empty: the latest) of an object; kind
// is "secrets", "keys" or "certificates". Disabling a certificate version
// disables its key and secret too, as Key Vault does.
func (e *Emulator) DisableVersion(vaultName, kind, name, version string) error {
	kind = strings.ToLower(kind)
	if kind != KindSecrets && kind != KindKeys && kind != KindCertificates {
		return fmt.Errorf("disable %s/%s: kind %q is not secrets, keys or certificates", vaultName, name, kind)
	}
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return fmt.Errorf("disable %s/%s: %w", kind, name, err)
	}
	kinds := []string{kind}
	if kind == KindCertificates {
		kinds = []string{KindCertificates, KindKeys, KindSecrets}
	}
	now := time.Now()
	for i, k := range kinds {
		o := v.objects[objectKey{k, strings.ToLower(name)}]
		if o == nil {
			if i == 0 {
				return fmt.Errorf("disable %s/%s/%s: %w", vaultName, kind, name, ErrObjectNotFound)
			}
			continue
		}
		ver := o.latest()
		if version != "" {
			ver = o.version(strings.ToLower(version))
		}
		if ver == nil {
			if i == 0 {
				return fmt.Errorf("disable %s/%s/%s/%s: %w", vaultName, kind, name, version, ErrObjectNotFound)
			}
			continue
		}
		ver.enabled = false
		ver.updated = now
	}
	return nil
}

func newVersion(enabled *bool, tags map[string]string, nbf, exp time.Time) *kvVersion {
	now := time.Now()
	ver := &kvVersion{id: randomID(), created: now, updated: now, enabled: true, notBefore: nbf, expires: exp}
	if enabled != nil {
		ver.enabled = *enabled
	}
	if len(tags) > 0 {
		ver.tags = make(map[string]string, len(tags))
		for k, val := range tags {
			ver.tags[k] = val
		}
	}
	return ver
}

// add appends ver to the object kind/name, creating the object. Callers hold
// the service lock.
func (v *vault) add(kind, name string, managed bool, ver *kvVersion) {
	k := objectKey{kind, strings.ToLower(name)}
	o := v.objects[k]
	if o == nil {
		o = &kvObject{name: name, managed: managed}
		v.objects[k] = o
	}
	o.versions = append(o.versions, ver)
}

// slidingWindow admits limit events per window.
type slidingWindow struct {
	limit  int
	window time.Duration
	events []time.Time
}

// admit records an event at now if the limit allows it; otherwise it returns
// how long until it would.
func (w *slidingWindow) admit(now time.Time) (bool, time.Duration) {
	cut := now.Add(-w.window)
	i := 0
	for i < len(w.events) && !w.events[i].After(cut) {
		i++
	}
	w.events = w.events[i:]
	if len(w.events) < w.limit {
		w.events = append(w.events, now)
		return true, 0
	}
	return false, w.events[0].Add(w.window).Sub(now)
}

// PublicKey returns the public key of a key version (empty: the latest),
// as a test computes what a client should write for it.
func (e *Emulator) PublicKey(vaultName, name, version string) (crypto.PublicKey, error) {
	s := e.kv
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.vault(vaultName)
	if err != nil {
		return nil, err
	}
	o := v.objects[objectKey{KindKeys, strings.ToLower(name)}]
	if o == nil {
		return nil, fmt.Errorf("key %s/%s not found", vaultName, name)
	}
	ver := o.latest()
	if version != "" {
		if ver = o.version(version); ver == nil {
			return nil, fmt.Errorf("key %s/%s/%s not found", vaultName, name, version)
		}
	}
	return ver.key.public, nil
}
