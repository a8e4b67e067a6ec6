package emulator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Entra ID as the Azure SDK for Go (MSAL) uses it for the client-credentials
// grant: instance discovery, OpenID configuration, the signing keys, and the
// v2.0 token endpoint with a client secret or a federated client assertion.

const (
	clientAssertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// assertionLeeway is the clock skew allowed on an assertion's exp and nbf.
	assertionLeeway = 5 * time.Minute
	// entraTimeLayout is how Entra prints times in its error descriptions.
	entraTimeLayout = "2006-01-02T15:04:05.0000000Z"
)

// entraService answers requests for the clouds' authority hosts.
type entraService struct {
	*core

	mu      sync.RWMutex
	issuers map[string]*issuerKeys // trusted external issuers by iss
	faults  faultQueue
}

// issuerKeys are the verification keys of one trusted external issuer.
type issuerKeys struct {
	byKID map[string]crypto.PublicKey
	all   []crypto.PublicKey
}

func newEntraService(c *core) *entraService {
	return &entraService{core: c, issuers: map[string]*issuerKeys{}}
}

// TrustIssuer lets Entra ID verify tokens from issuer (a Kubernetes cluster's
// service-account issuer, say) with the keys in jwks, a JSON Web Key Set such
// as kube-apiserver serves at /openid/v1/jwks. It replaces any keys trusted
// for issuer before, which is how a test rotates an issuer's keys. A token
// from the issuer is accepted only for an application with a matching
// federated credential (AddFederatedCredential).
func (e *Emulator) TrustIssuer(issuer string, jwks []byte) error {
	if issuer == "" {
		return errors.New("trust issuer: empty issuer")
	}
	keys, err := parseJWKS(jwks)
	if err != nil {
		return fmt.Errorf("trust issuer %s: %w", issuer, err)
	}
	e.entra.mu.Lock()
	e.entra.issuers[issuer] = keys
	e.entra.mu.Unlock()
	return nil
}

// InjectEntraFault makes the token endpoints of every authority answer as f
// says (an error status, a delay, or both) until f.Count requests have been
// affected, or until ClearEntraFaults when f.Count is 0. Faults queue: the
// first one still active applies.
func (e *Emulator) InjectEntraFault(f Fault) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("inject Entra ID fault: %w", err)
	}
	e.entra.faults.push(f)
	return nil
}

// ClearEntraFaults removes every Entra ID fault.
func (e *Emulator) ClearEntraFaults() { e.entra.faults.clear() }

// serve answers one request for cloud c's authority host and records it.
func (s *entraService) serve(w http.ResponseWriter, r *http.Request, c Cloud) {
	rec := Request{Service: ServiceEntra, Host: strings.ToLower(hostOnly(r.Host)), Method: r.Method, Path: r.URL.Path}
	rec.Status = s.route(w, r, c, &rec)
	s.rec.add(rec)
	s.logf("entra %s %s%s tenant=%q client=%q grant=%q -> %d", r.Method, rec.Host, r.URL.Path, rec.Tenant, rec.Identity, rec.Grant, rec.Status)
	dropIfFaulted(rec.Status)
}

func (s *entraService) route(w http.ResponseWriter, r *http.Request, c Cloud, rec *Request) int {
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(segs) < 2 {
		return s.notFound(w, r, c)
	}
	tenant := segs[0]
	rec.Tenant = tenant
	rest := strings.Join(segs[1:], "/")
	switch {
	case tenant == "common" && rest == "discovery/instance":
		rec.Tenant = ""
		return s.instanceDiscovery(w, r, c)
	case rest == "v2.0/.well-known/openid-configuration":
		return s.openIDConfiguration(w, r, c, tenant)
	case rest == "discovery/v2.0/keys" || rest == "discovery/keys":
		return s.keys(w, r, c, tenant)
	case rest == "oauth2/v2.0/token":
		return s.token(w, r, c, tenant, rec)
	}
	return s.notFound(w, r, c)
}

func (s *entraService) notFound(w http.ResponseWriter, r *http.Request, c Cloud) int {
	return writeEntraError(w, r, c, http.StatusNotFound, "invalid_request", 900561,
		fmt.Sprintf("AADSTS900561: The kvnode emulator does not serve %s %s on %s.", r.Method, r.URL.Path, c.AuthorityHost))
}

// knownAuthorities is the instance discovery metadata Entra ID returns: one
// entry per group of authority hosts that are aliases of each other.
var knownAuthorities = []instanceMetadata{
	{PreferredNetwork: "login.microsoftonline.com", PreferredCache: "login.windows.net",
		Aliases: []string{"login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"}},
	{PreferredNetwork: "login.partner.microsoftonline.cn", PreferredCache: "login.partner.microsoftonline.cn",
		Aliases: []string{"login.partner.microsoftonline.cn", "login.chinacloudapi.cn"}},
	{PreferredNetwork: "login.microsoftonline.de", PreferredCache: "login.microsoftonline.de",
		Aliases: []string{"login.microsoftonline.de"}},
	{PreferredNetwork: "login.microsoftonline.us", PreferredCache: "login.microsoftonline.us",
		Aliases: []string{"login.microsoftonline.us", "login.usgovcloudapi.net"}},
	{PreferredNetwork: "login-us.microsoftonline.com", PreferredCache: "login-us.microsoftonline.com",
		Aliases: []string{"login-us.microsoftonline.com"}},
}

type instanceMetadata struct {
	PreferredNetwork string   `json:"preferred_network"`
	PreferredCache   string   `json:"preferred_cache"`
	Aliases          []string `json:"aliases"`
}

// instanceDiscovery answers GET /common/discovery/instance.
func (s *entraService) instanceDiscovery(w http.ResponseWriter, r *http.Request, c Cloud) int {
	if r.Method != http.MethodGet {
		return writeEntraError(w, r, c, http.StatusMethodNotAllowed, "invalid_request", 900561,
			fmt.Sprintf("AADSTS900561: The endpoint only accepts GET requests. Received a %s request.", r.Method))
	}
	authz := r.URL.Query().Get("authorization_endpoint")
	if authz == "" {
		return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 90014,
			"AADSTS90014: The required field 'authorization_endpoint' is missing from the credential. Ensure that you have all the necessary parameters for the login request.")
	}
	u, err := url.Parse(authz)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_instance", 50049,
			fmt.Sprintf("AADSTS50049: Unknown or invalid instance '%s'.", authz))
	}
	tenant, _, _ := strings.Cut(strings.Trim(u.Path, "/"), "/")
	if tenant == "" {
		tenant = "common"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": fmt.Sprintf("https://%s/%s/v2.0/.well-known/openid-configuration", c.AuthorityHost, tenant),
		"api-version":               "1.1",
		"metadata":                  knownAuthorities,
	})
	return http.StatusOK
}

// openIDConfiguration answers GET /{tenant}/v2.0/.well-known/openid-configuration.
// The issuer is on the authority host the client asked, as MSAL requires.
func (s *entraService) openIDConfiguration(w http.ResponseWriter, r *http.Request, c Cloud, tenant string) int {
	if r.Method != http.MethodGet {
		return writeEntraError(w, r, c, http.StatusMethodNotAllowed, "invalid_request", 900561,
			fmt.Sprintf("AADSTS900561: The endpoint only accepts GET requests. Received a %s request.", r.Method))
	}
	id := tenant
	switch strings.ToLower(tenant) {
	case "common", "organizations", "consumers":
		id = "{tenantid}"
	default:
		if !s.tenantExists(tenant) {
			return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_tenant", 90002, tenantNotFound(tenant))
		}
	}
	base := "https://" + c.AuthorityHost + "/" + id
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                base + "/v2.0",
		"request_uri_parameter_supported":       false,
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"end_session_endpoint":                  base + "/oauth2/v2.0/logout",
		"http_logout_supported":                 true,
		"frontchannel_logout_supported":         true,
		"claims_supported":                      []string{"sub", "iss", "aud", "exp", "iat", "nbf", "oid", "tid", "appid"},
		"tenant_region_scope":                   "NA",
		"cloud_instance_name":                   strings.TrimPrefix(c.AuthorityHost, "login."),
	})
	return http.StatusOK
}

// keys answers the JWKS endpoints with the key that signs access tokens.
func (s *entraService) keys(w http.ResponseWriter, r *http.Request, c Cloud, tenant string) int {
	if r.Method != http.MethodGet {
		return writeEntraError(w, r, c, http.StatusMethodNotAllowed, "invalid_request", 900561,
			fmt.Sprintf("AADSTS900561: The endpoint only accepts GET requests. Received a %s request.", r.Method))
	}
	switch strings.ToLower(tenant) {
	case "common", "organizations", "consumers":
	default:
		if !s.tenantExists(tenant) {
			return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_tenant", 90002, tenantNotFound(tenant))
		}
	}
	pub := &s.signer.key.PublicKey
	writeJSON(w, http.StatusOK, map[string]any{"keys": []map[string]any{{
		"kty": "RSA",
		"use": "sig",
		"alg": "RS256",
		"kid": s.signer.keyID,
		"n":   base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
	return http.StatusOK
}

// token answers POST /{tenant}/oauth2/v2.0/token for the client-credentials
// grant.
func (s *entraService) token(w http.ResponseWriter, r *http.Request, c Cloud, tenant string, rec *Request) int {
	form, status := tokenForm(w, r, c, rec)
	if status != 0 {
		return status
	}
	switch {
	case form.Get("client_secret") != "":
		rec.Grant = "client_secret"
	case form.Get("client_assertion") != "":
		rec.Grant = "client_assertion"
	}
	if st, done := s.faults.apply(w, r, func(w http.ResponseWriter, status int) {
		writeEntraError(w, r, c, status, "temporarily_unavailable", 90033,
			"AADSTS90033: A transient error has occurred. Please try again. (fault injected by the kvnode emulator)")
	}); done {
		return st
	}

	if !s.tenantExists(tenant) {
		return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 90002, tenantNotFound(tenant))
	}
	for _, p := range []string{"grant_type", "client_id", "scope"} {
		if form.Get(p) == "" {
			return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 900144,
				fmt.Sprintf("AADSTS900144: The request body must contain the following parameter: '%s'.", p))
		}
	}
	if gt := form.Get("grant_type"); gt != "client_credentials" {
		return writeEntraError(w, r, c, http.StatusBadRequest, "unsupported_grant_type", 70003,
			fmt.Sprintf("AADSTS70003: The app requested an unsupported grant type '%s'.", gt))
	}
	resource, status := s.resourceFromScope(w, r, c, form.Get("scope"))
	if status != 0 {
		return status
	}
	clientID := form.Get("client_id")
	p, ok := s.dir.lookup(clientID)
	if !ok || !strings.EqualFold(p.TenantID, tenant) {
		return writeEntraError(w, r, c, http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("AADSTS700016: Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant))
	}

	switch {
	case form.Get("client_secret") != "":
		if p.Secret == "" || subtle.ConstantTimeCompare([]byte(form.Get("client_secret")), []byte(p.Secret)) != 1 {
			return writeEntraError(w, r, c, http.StatusUnauthorized, "invalid_client", 7000215,
				fmt.Sprintf("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID))
		}
	case form.Get("client_assertion") != "" && form.Get("client_assertion_type") == clientAssertionTypeJWT:
		if e := s.checkAssertion(p, form.Get("client_assertion")); e != nil {
			return writeEntraError(w, r, c, e.status, e.code, e.number, e.description)
		}
	case form.Get("client_assertion") != "" && form.Get("client_assertion_type") == "":
		return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 900144,
			"AADSTS900144: The request body must contain the following parameter: 'client_assertion_type'.")
	default:
		return writeEntraError(w, r, c, http.StatusUnauthorized, "invalid_client", 7000218,
			"AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
	}

	token, claims, err := s.signer.issue(p, resource, s.tokenLife)
	if err != nil {
		return writeEntraError(w, r, c, http.StatusInternalServerError, "server_error", 90033,
			"AADSTS90033: A transient error has occurred. Please try again.")
	}
	writeTokenResponse(w, token, claims)
	return http.StatusOK
}

// resourceFromScope picks the resource out of a client-credentials scope
// ("https://vault.azure.net/.default openid offline_access profile"). On a
// bad scope it writes the error and returns its status.
func (s *entraService) resourceFromScope(w http.ResponseWriter, r *http.Request, c Cloud, scope string) (string, int) {
	var resource string
	for _, sc := range strings.Fields(scope) {
		switch sc {
		case "openid", "offline_access", "profile", "email":
			continue
		}
		if resource != "" {
			return "", writeEntraError(w, r, c, http.StatusBadRequest, "invalid_scope", 70011,
				fmt.Sprintf("AADSTS70011: The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope %s is not valid. Only one resource may be requested.", scope))
		}
		resource = sc
	}
	if resource == "" {
		return "", writeEntraError(w, r, c, http.StatusBadRequest, "invalid_scope", 70011,
			fmt.Sprintf("AADSTS70011: The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", scope))
	}
	if !strings.HasSuffix(resource, "/.default") {
		return "", writeEntraError(w, r, c, http.StatusBadRequest, "invalid_scope", 1002012,
			fmt.Sprintf("AADSTS1002012: The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", resource))
	}
	return strings.TrimSuffix(resource, "/.default"), 0
}

// entraError is an error answer of the token endpoint.
type entraError struct {
	status      int
	code        string
	number      int
	description string
}

func invalidClient(number int, format string, args ...any) *entraError {
	return &entraError{status: http.StatusUnauthorized, code: "invalid_client", number: number, description: fmt.Sprintf(format, args...)}
}

// checkAssertion verifies a client assertion for p. A federated credential's
// assertion (a token from an external issuer such as a Kubernetes cluster) is
// checked as Entra ID does: signature against the issuer's trusted keys,
// lifetime, and a federated credential of p matching issuer, subject and
// audience. Certificate assertions (iss == sub == client ID) are refused.
func (s *entraService) checkAssertion(p Principal, assertion string) *entraError {
	var unverified jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(assertion, &unverified); err != nil {
		return &entraError{status: http.StatusBadRequest, code: "invalid_request", number: 50027,
			description: "AADSTS50027: JWT token is invalid or malformed."}
	}
	iss, sub := unverified.Issuer, unverified.Subject
	if iss == p.ClientID && sub == p.ClientID {
		return invalidClient(700027, "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found.] The kvnode emulator does not support certificate credentials.")
	}
	var candidates []FederatedCredential
	for _, fc := range p.Federated {
		if fc.Issuer == iss {
			candidates = append(candidates, fc)
		}
	}
	if len(candidates) == 0 {
		return invalidClient(700211, "AADSTS700211: No matching federated identity record found for presented assertion issuer '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation", iss)
	}
	if e := s.verifyExternal(unverified, assertion); e != nil {
		return e
	}

	subjectMatched := false
	for _, fc := range candidates {
		if fc.Subject != sub {
			continue
		}
		subjectMatched = true
		for _, want := range fc.Audiences {
			for _, got := range unverified.Audience {
				if got == want {
					return nil
				}
			}
		}
	}
	if !subjectMatched {
		return invalidClient(700213, "AADSTS700213: No matching federated identity record found for presented assertion subject '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation", sub)
	}
	return invalidClient(700212, "AADSTS700212: No matching federated identity record found for presented assertion audience '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation", strings.Join(unverified.Audience, ","))
}

// verifyExternal checks a token of an external issuer as Entra ID does: its
// signature against the issuer's trusted keys, and its lifetime.
func (s *entraService) verifyExternal(unverified jwt.RegisteredClaims, assertion string) *entraError {
	s.mu.RLock()
	keys := s.issuers[unverified.Issuer]
	s.mu.RUnlock()
	if keys == nil {
		return invalidClient(50166, "AADSTS50166: Request to External OIDC endpoint failed. (The kvnode emulator has no keys for issuer '%s': call TrustIssuer.)", unverified.Issuer)
	}
	_, err := jwt.NewParser(
		jwt.WithValidMethods([]string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}),
		jwt.WithoutClaimsValidation(),
	).Parse(assertion, keys.keyFunc)
	switch {
	case errors.Is(err, errKeyNotFound):
		return invalidClient(7000272, "AADSTS7000272: The certificate with identifier used to sign the federated credential could not be found in the metadata of identity provider %s. Please validate that your Identity Provider's metadata exposes the key used to sign the incoming token.", unverified.Issuer)
	case err != nil:
		return invalidClient(50013, "AADSTS50013: Assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]")
	}

	now := time.Now()
	var from, until time.Time
	if unverified.NotBefore != nil {
		from = unverified.NotBefore.Time
	} else if unverified.IssuedAt != nil {
		from = unverified.IssuedAt.Time
	}
	if unverified.ExpiresAt != nil {
		until = unverified.ExpiresAt.Time
	}
	if until.IsZero() || now.After(until.Add(assertionLeeway)) || (!from.IsZero() && now.Add(assertionLeeway).Before(from)) {
		return invalidClient(700024, "AADSTS700024: Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
			now.UTC().Format(entraTimeLayout), from.UTC().Format(entraTimeLayout), until.UTC().Format(entraTimeLayout))
	}

	return nil
}

// writeTokenResponse answers a token request with an access token.
func writeTokenResponse(w http.ResponseWriter, token string, claims AccessClaims) {
	life := int(time.Until(claims.ExpiresAt.Time).Seconds())
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     life,
		"ext_expires_in": life,
		"access_token":   token,
	})
}

// tenantExists reports whether any principal is registered in tenant.
func (s *entraService) tenantExists(tenant string) bool {
	_, ok := s.dir.find(func(p *Principal) bool { return strings.EqualFold(p.TenantID, tenant) })
	return ok
}

func tenantNotFound(tenant string) string {
	return fmt.Sprintf("AADSTS90002: Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", tenant)
}

// writeEntraError writes an error in Entra ID's shape and returns status.
// The description never includes a secret or an assertion.
func writeEntraError(w http.ResponseWriter, r *http.Request, c Cloud, status int, code string, number int, description string) int {
	now := time.Now().UTC()
	trace := newGUID()
	corr := r.Header.Get("client-request-id")
	if corr == "" {
		corr = newGUID()
	}
	stamp := now.Format("2006-01-02 15:04:05Z")
	w.Header().Set("x-ms-request-id", trace)
	writeJSON(w, status, map[string]any{
		"error":             code,
		"error_description": fmt.Sprintf("%s Trace ID: %s Correlation ID: %s Timestamp: %s", description, trace, corr, stamp),
		"error_codes":       []int{number},
		"timestamp":         stamp,
		"trace_id":          trace,
		"correlation_id":    corr,
		"error_uri":         fmt.Sprintf("https://%s/error?code=%d", c.AuthorityHost, number),
	})
	return status
}

// writeJSON writes v as a JSON response with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

var errKeyNotFound = errors.New("no trusted key with the token's kid")

// keyFunc picks the verification key(s) for a token: the key named by its kid,
// or every key of the issuer when the token names none.
func (k *issuerKeys) keyFunc(t *jwt.Token) (any, error) {
	if kid, _ := t.Header["kid"].(string); kid != "" {
		key, ok := k.byKID[kid]
		if !ok {
			return nil, errKeyNotFound
		}
		return key, nil
	}
	if len(k.all) == 0 {
		return nil, errKeyNotFound
	}
	set := jwt.VerificationKeySet{}
	for _, key := range k.all {
		set.Keys = append(set.Keys, key)
	}
	return set, nil
}

// parseJWKS reads the RSA and EC signing keys of a JSON Web Key Set. Keys of
// other types, and keys marked for encryption, are skipped.
func parseJWKS(doc []byte) (*issuerKeys, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Use string `json:"use"`
			Kid string `json:"kid"`
			N   string `json:"n"`
			E   string `json:"e"`
			Crv string `json:"crv"`
			X   string `json:"x"`
			Y   string `json:"y"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	out := &issuerKeys{byKID: map[string]crypto.PublicKey{}}
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		var key crypto.PublicKey
		switch k.Kty {
		case "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(k.N)
			e, err2 := base64.RawURLEncoding.DecodeString(k.E)
			if err := errors.Join(err1, err2); err != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("parse JWKS: key %d (%q): bad RSA modulus or exponent", i, k.Kid)
			}
			key = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		case "EC":
			var curve elliptic.Curve
			switch k.Crv {
			case "P-256":
				curve = elliptic.P256()
			case "P-384":
				curve = elliptic.P384()
			case "P-521":
				curve = elliptic.P521()
			default:
				return nil, fmt.Errorf("parse JWKS: key %d (%q): unsupported curve %q", i, k.Kid, k.Crv)
			}
			size := (curve.Params().BitSize + 7) / 8
			x, err1 := base64.RawURLEncoding.DecodeString(k.X)
			y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
			if err := errors.Join(err1, err2); err != nil || len(x) > size || len(y) > size {
				return nil, fmt.Errorf("parse JWKS: key %d (%q): bad EC point", i, k.Kid)
			}
			point := make([]byte, 1+2*size)
			point[0] = 4
			copy(point[1+size-len(x):1+size], x)
			copy(point[1+2*size-len(y):], y)
			pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
			if err != nil {
				return nil, fmt.Errorf("parse JWKS: key %d (%q): %w", i, k.Kid, err)
			}
			key = pub
		default:
			continue
		}
		out.all = append(out.all, key)
		if k.Kid != "" {
			out.byKID[k.Kid] = key
		}
	}
	if len(out.all) == 0 {
		return nil, errors.New("parse JWKS: no RSA or EC signing key")
	}
	return out, nil
}

// tokenForm reads a token request's form as Entra ID does: POST only, at
// most 1 MiB; a refusal is written and its status returned (0: go on).
func tokenForm(w http.ResponseWriter, r *http.Request, c Cloud, rec *Request) (url.Values, int) {
	if r.Method != http.MethodPost {
		return nil, writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 900561,
			fmt.Sprintf("AADSTS900561: The endpoint only accepts POST, OPTIONS requests. Received a %s request.", r.Method))
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		return nil, writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 900144,
			"AADSTS900144: The request body must contain the following parameter: 'grant_type'.")
	}
	rec.Identity = r.PostForm.Get("client_id")
	return r.PostForm, 0
}
