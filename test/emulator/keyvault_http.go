package emulator

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// vaultLocation is the region the emulated vaults report in error messages.
const vaultLocation = "eastus"

// kvRequest is one Key Vault request being answered.
type kvRequest struct {
	w          http.ResponseWriter
	r          *http.Request
	cloud      Cloud
	v          *vault
	apiVersion string
	kind       string // secrets, keys, certificates
	name       string // as requested; "" lists the collection
	version    string // lower case; "" is latest
	list       bool   // versions of name, or the collection when name is ""
	claims     AccessClaims
}

// serve answers a request for https://<vaultName>.<c.VaultSuffix>/...
//
// Checks run in this order: the vault exists (else 421, see below), the method
// is GET (405), api-version is present (400), the path is a Key Vault route
// (404), a valid bearer token (401 with the challenge), the vault's throttle
// (429, counting only requests with a valid token), the object name (400), the
// caller's permission (403), the object (404) and, for secrets, that the
// version is enabled (403).
//
// An unknown vault has no DNS name in Azure, so a real client fails to
// connect. Through the emulator's proxy the tunnel is already open; the
// emulator answers 421 Misdirected Request, a status the SDK does not retry,
// and records it as a Key Vault request with the vault's name.
// InjectVaultFault makes every vault answer as f says (an error status, a
// delay, or both), before authentication, until f.Count requests have been
// affected, or until ClearVaultFaults when f.Count is 0: a Key Vault outage.
// Faults queue: the first one still active applies.
func (e *Emulator) InjectVaultFault(f Fault) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("inject Key Vault fault: %w", err)
	}
	e.kv.faults.push(f)
	return nil
}

// ClearVaultFaults removes every Key Vault fault.
func (e *Emulator) ClearVaultFaults() { e.kv.faults.clear() }

func (s *keyVaultService) serve(w http.ResponseWriter, r *http.Request, c Cloud, vaultName string) {
	entry := Request{Service: ServiceKeyVault, Host: strings.ToLower(hostOnly(r.Host)), Method: r.Method, Path: r.URL.Path, Vault: vaultName}
	kr := &kvRequest{w: w, r: r, cloud: c}
	status := s.answer(kr, &entry)
	entry.Status = status
	s.rec.add(entry)
	s.logf("keyvault %s https://%s%s -> %d", r.Method, entry.Host, r.URL.Path, status)
	dropIfFaulted(status)
}

func (s *keyVaultService) answer(kr *kvRequest, entry *Request) int {
	r := kr.r
	s.mu.Lock()
	v := s.vaults[entry.Vault]
	s.mu.Unlock()
	if v == nil || v.cloud.Name != kr.cloud.Name {
		msg := fmt.Sprintf("kvnode Azure emulator: vault %q does not exist in %s (in Azure its host name does not resolve)", entry.Vault, kr.cloud.Name)
		http.Error(kr.w, msg, http.StatusMisdirectedRequest)
		return http.StatusMisdirectedRequest
	}
	kr.v = v
	if st, done := s.faults.apply(kr.w, r, func(w http.ResponseWriter, status int) {
		kr.fail(status, "ServiceUnavailable", "The service is temporarily unavailable. (fault injected by the kvnode emulator)", "")
	}); done {
		return st
	}
	if r.Method != http.MethodGet {
		kr.w.Header().Set("Allow", http.MethodGet)
		return kr.fail(http.StatusMethodNotAllowed, "BadParameter", fmt.Sprintf("The requested resource does not support http method '%s'.", r.Method), "")
	}
	kr.apiVersion = r.URL.Query().Get("api-version")
	if kr.apiVersion == "" {
		return kr.fail(http.StatusBadRequest, "BadParameter", "The request is missing the required query parameter 'api-version'.", "")
	}
	if !kr.route() {
		return kr.fail(http.StatusNotFound, "NotFound", "The requested resource is not a Key Vault data-plane operation the emulator serves.", "")
	}
	if kr.name != "" {
		entry.Object = kr.kind + "/" + strings.ToLower(kr.name)
	} else {
		entry.Object = kr.kind
	}

	if status := s.authenticate(kr); status != 0 {
		return status
	}
	entry.Identity = kr.claims.AppID

	s.mu.Lock()
	ok, wait := v.limiter.admit(time.Now())
	s.mu.Unlock()
	if !ok {
		kr.w.Header().Set("Retry-After", strconv.Itoa(int(math.Max(1, math.Ceil(wait.Seconds())))))
		return kr.fail(http.StatusTooManyRequests, "Throttled", "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached", "")
	}

	if kr.name != "" && !objectNameRE.MatchString(kr.name) {
		return kr.fail(http.StatusBadRequest, "BadParameter", fmt.Sprintf("The request URI contains an invalid name: %s", kr.name), "")
	}
	op := "get"
	if kr.list {
		op = "list"
	}
	s.mu.Lock()
	allowed := v.grants[kr.claims.ObjectID][kr.kind+"/"+op]
	s.mu.Unlock()
	if !allowed {
		msg := fmt.Sprintf("The user, group or application 'appid=%s;oid=%s;iss=%s' does not have %s %s permission on key vault '%s;location=%s'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
			kr.claims.AppID, kr.claims.ObjectID, kr.claims.Issuer, kr.kind, op, v.name, vaultLocation)
		return kr.fail(http.StatusForbidden, "Forbidden", msg, "AccessDenied")
	}
	if kr.list {
		return s.list(kr)
	}
	return s.get(kr)
}

// route parses the path: /{kind}, /{kind}/{name}, /{kind}/{name}/,
// /{kind}/{name}/{version} and /{kind}/{name}/versions.
func (kr *kvRequest) route() bool {
	parts := strings.Split(strings.TrimLeft(kr.r.URL.Path, "/"), "/")
	kr.kind = strings.ToLower(parts[0])
	if kr.kind != KindSecrets && kr.kind != KindKeys && kr.kind != KindCertificates {
		return false
	}
	switch {
	case len(parts) == 1 || (len(parts) == 2 && parts[1] == ""):
		kr.list = true
		return true
	case len(parts) == 2:
		kr.name = parts[1]
		return true
	case len(parts) == 3:
		kr.name = parts[1]
		if strings.EqualFold(parts[2], "versions") {
			kr.list = true
		} else {
			kr.version = strings.ToLower(parts[2])
		}
		return kr.name != ""
	}
	return false
}

// authenticate checks the bearer token and fills kr.claims; it returns the
// status it answered with, or 0 when the request may proceed.
func (s *keyVaultService) authenticate(kr *kvRequest) int {
	header := kr.r.Header.Get("Authorization")
	tok, err := bearer(header)
	if err != nil {
		return s.unauthorized(kr, "AKV10000: Request is missing a Bearer or PoP token.")
	}
	resource := kr.cloud.VaultResource()
	claims, err := s.signer.verify(tok, resource)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return s.unauthorized(kr, fmt.Sprintf("AKV10022: Invalid audience. Expected %s, found: %s.", resource, unverifiedAudience(tok)))
	case errors.Is(err, jwt.ErrTokenExpired):
		return s.unauthorized(kr, "[TokenExpired] Error validating token: 'S2S12086'.")
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return s.unauthorized(kr, "Token not yet valid.")
	default:
		return s.unauthorized(kr, "AKV10046: Unable to resolve the key used for signature validation.")
	}
	if want := kr.v.tenantID; want != "" && claims.TenantID != want {
		return s.unauthorized(kr, fmt.Sprintf("AKV10032: Invalid issuer. Expected one of https://sts.windows.net/%s/, found %s.", want, claims.Issuer))
	}
	kr.claims = claims
	return 0
}

// unverifiedAudience reads a token's aud for an error message.
func unverifiedAudience(tok string) string {
	var c jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &c); err != nil || len(c.Audience) == 0 {
		return ""
	}
	return strings.Join(c.Audience, ",")
}

// unauthorized answers 401 with Key Vault's challenge.
func (s *keyVaultService) unauthorized(kr *kvRequest, message string) int {
	tenant := kr.v.tenantID
	if tenant == "" {
		tenant = s.impliedTenant()
	}
	kr.w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://%s/%s", resource="%s"`,
		kr.cloud.AuthorityHost, tenant, kr.cloud.VaultResource()))
	return kr.fail(http.StatusUnauthorized, "Unauthorized", message, "")
}

// impliedTenant is the challenge tenant of a vault without TenantID: the
// tenant of the registered principals when they share one.
func (s *keyVaultService) impliedTenant() string {
	tenants := map[string]bool{}
	s.dir.find(func(p *Principal) bool {
		tenants[p.TenantID] = true
		return false
	})
	if len(tenants) == 1 {
		for t := range tenants {
			return t
		}
	}
	return "organizations"
}

// Wire shapes.

type kvAttributes struct {
	Enabled         bool   `json:"enabled"`
	NotBefore       *int64 `json:"nbf,omitempty"`
	Expires         *int64 `json:"exp,omitempty"`
	Created         int64  `json:"created"`
	Updated         int64  `json:"updated"`
	RecoveryLevel   string `json:"recoveryLevel"`
	RecoverableDays int    `json:"recoverableDays"`
}

type secretBundle struct {
	Value       *string           `json:"value,omitempty"` // nil in list items
	ID          string            `json:"id"`
	ContentType string            `json:"contentType,omitempty"`
	Attributes  kvAttributes      `json:"attributes"`
	Tags        map[string]string `json:"tags,omitempty"`
	KID         string            `json:"kid,omitempty"`
	Managed     bool              `json:"managed,omitempty"`
}

type keyBundle struct {
	Key        *jsonWebKey       `json:"key,omitempty"`
	KID        string            `json:"kid,omitempty"` // list items only
	Attributes kvAttributes      `json:"attributes"`
	Tags       map[string]string `json:"tags,omitempty"`
	Managed    bool              `json:"managed,omitempty"`
}

type certificateBundle struct {
	ID         string             `json:"id"`
	KID        string             `json:"kid,omitempty"`
	SID        string             `json:"sid,omitempty"`
	X5T        string             `json:"x5t"`
	CER        []byte             `json:"cer,omitempty"` // standard base64
	Attributes kvAttributes       `json:"attributes"`
	Tags       map[string]string  `json:"tags,omitempty"`
	Policy     *certificatePolicy `json:"policy,omitempty"`
}

type certificatePolicy struct {
	ID          string `json:"id"`
	KeyProps    any    `json:"key_props"`
	SecretProps any    `json:"secret_props"`
	X509Props   any    `json:"x509_props"`
	Issuer      any    `json:"issuer"`
	Attributes  any    `json:"attributes"`
}

type listPage struct {
	Value    []any   `json:"value"`
	NextLink *string `json:"nextLink"`
}

func attributesOf(ver *kvVersion) kvAttributes {
	a := kvAttributes{
		Enabled:         ver.enabled,
		Created:         ver.created.Unix(),
		Updated:         ver.updated.Unix(),
		RecoveryLevel:   "Recoverable+Purgeable",
		RecoverableDays: 90,
	}
	if !ver.notBefore.IsZero() {
		n := ver.notBefore.Unix()
		a.NotBefore = &n
	}
	if !ver.expires.IsZero() {
		x := ver.expires.Unix()
		a.Expires = &x
	}
	return a
}

// get answers GET /{kind}/{name}/{version}. Latest is the most recently
// created version whether or not it is enabled, as in Azure.
func (s *keyVaultService) get(kr *kvRequest) int {
	v := kr.v
	s.mu.Lock()
	o := v.objects[objectKey{kr.kind, strings.ToLower(kr.name)}]
	var ver *kvVersion
	if o != nil {
		if kr.version == "" {
			ver = o.latest()
		} else {
			ver = o.version(kr.version)
		}
	}
	var body any
	var err error
	if ver != nil {
		body, err = s.bundle(v, kr.kind, o, ver)
	}
	s.mu.Unlock()
	if ver == nil {
		return kr.notFound()
	}
	if err != nil {
		return kr.fail(http.StatusInternalServerError, "InternalServerError", "The emulator could not render the object.", "")
	}
	if kr.kind == KindSecrets && !ver.enabled {
		return kr.fail(http.StatusForbidden, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
	}
	return kr.writeJSON(http.StatusOK, body)
}

// bundle renders one version in full. Callers hold s.mu.
func (s *keyVaultService) bundle(v *vault, kind string, o *kvObject, ver *kvVersion) (any, error) {
	switch kind {
	case KindSecrets:
		value := ver.secretValue
		b := secretBundle{
			Value:       &value,
			ID:          v.url(KindSecrets, o.name, ver.id),
			ContentType: ver.contentType,
			Attributes:  attributesOf(ver),
			Tags:        ver.tags,
			Managed:     o.managed,
		}
		if o.managed {
			b.KID = v.url(KindKeys, o.name, ver.id)
		}
		return b, nil
	case KindKeys:
		jwk, err := publicJWK(ver.key.public, ver.key.kty, keyOps(ver.key.kty))
		if err != nil {
			return nil, err
		}
		jwk.KID = v.url(KindKeys, o.name, ver.id)
		return keyBundle{Key: &jwk, Attributes: attributesOf(ver), Tags: ver.tags, Managed: o.managed}, nil
	default:
		d := ver.cert
		keyProps := map[string]any{"exportable": true, "kty": d.keyType, "reuse_key": false}
		if d.keySize != 0 {
			keyProps["key_size"] = d.keySize
		}
		if d.curve != "" {
			keyProps["crv"] = d.curve
		}
		keyUsage := []string{"digitalSignature"}
		if d.keyType == KeyTypeRSA {
			keyUsage = append(keyUsage, "keyEncipherment")
		}
		x509Props := map[string]any{
			"subject":         d.subject,
			"ekus":            []string{"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"},
			"key_usage":       keyUsage,
			"validity_months": 12,
		}
		if len(d.dnsNames) > 0 {
			x509Props["sans"] = map[string]any{"dns_names": d.dnsNames}
		}
		issuer := "Unknown"
		if d.selfSign {
			issuer = "Self"
		}
		return certificateBundle{
			ID:         v.url(KindCertificates, o.name, ver.id),
			KID:        v.url(KindKeys, o.name, ver.id),
			SID:        v.url(KindSecrets, o.name, ver.id),
			X5T:        x5t(d.leaf),
			CER:        d.leaf.Raw,
			Attributes: attributesOf(ver),
			Tags:       ver.tags,
			Policy: &certificatePolicy{
				ID:          v.url(KindCertificates, o.name, "policy"),
				KeyProps:    keyProps,
				SecretProps: map[string]any{"contentType": ver.contentType},
				X509Props:   x509Props,
				Issuer:      map[string]any{"name": issuer},
				Attributes:  map[string]any{"enabled": true, "created": ver.created.Unix(), "updated": ver.created.Unix()},
			},
		}, nil
	}
}

// listItem renders a version as a list item (no value, no key material).
// withVersion says whether its id names the version (versions listings) or
// only the object (collection listings). Callers hold s.mu.
func listItem(v *vault, kind string, o *kvObject, ver *kvVersion, withVersion bool) any {
	id := ""
	if withVersion {
		id = ver.id
	}
	switch kind {
	case KindSecrets:
		return secretBundle{ID: v.url(KindSecrets, o.name, id), ContentType: ver.contentType, Attributes: attributesOf(ver), Tags: ver.tags, Managed: o.managed}
	case KindKeys:
		return keyBundle{KID: v.url(KindKeys, o.name, id), Attributes: attributesOf(ver), Tags: ver.tags, Managed: o.managed}
	default:
		return certificateBundle{ID: v.url(KindCertificates, o.name, id), X5T: x5t(ver.cert.leaf), Attributes: attributesOf(ver), Tags: ver.tags}
	}
}

// list answers GET /{kind}/{name}/versions and GET /{kind}. Items are ordered
// as Azure orders them: versions by version ID (not by date; a client must
// sort by attributes.created), objects by name. A page holds maxresults items
// (1-25) or the vault's page size; nextLink carries api-version, an opaque
// $skiptoken and maxresults. Listing the versions of an unknown name answers
// an empty list.
func (s *keyVaultService) list(kr *kvRequest) int {
	q := kr.r.URL.Query()
	v := kr.v
	size := v.pageSize
	if m := q.Get("maxresults"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 1 || n > DefaultPageSize {
			return kr.fail(http.StatusBadRequest, "BadParameter", fmt.Sprintf("The value of parameter maxresults is out of range. Valid range is 1 to %d.", DefaultPageSize), "")
		}
		size = n
	}
	after := ""
	if t := q.Get("$skiptoken"); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil {
			return kr.fail(http.StatusBadRequest, "BadParameter", "The $skiptoken is not valid.", "")
		}
		after = string(b)
	}

	type sortable struct {
		key  string
		item any
	}
	var all []sortable
	s.mu.Lock()
	if kr.name != "" {
		if o := v.objects[objectKey{kr.kind, strings.ToLower(kr.name)}]; o != nil {
			for _, ver := range o.versions {
				all = append(all, sortable{ver.id, listItem(v, kr.kind, o, ver, true)})
			}
		}
	} else {
		for k, o := range v.objects {
			if k.kind == kr.kind {
				all = append(all, sortable{k.name, listItem(v, kr.kind, o, o.latest(), false)})
			}
		}
	}
	s.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].key < all[j].key })

	page := listPage{Value: []any{}}
	last := ""
	for _, it := range all {
		if after != "" && it.key <= after {
			continue
		}
		if len(page.Value) == size {
			next := fmt.Sprintf("https://%s%s?api-version=%s&$skiptoken=%s&maxresults=%d",
				v.host(), kr.r.URL.EscapedPath(), url.QueryEscape(kr.apiVersion),
				base64.RawURLEncoding.EncodeToString([]byte(last)), size)
			page.NextLink = &next
			break
		}
		page.Value = append(page.Value, it.item)
		last = it.key
	}
	return kr.writeJSON(http.StatusOK, page)
}

func (kr *kvRequest) notFound() int {
	id := kr.name
	if kr.version != "" {
		id += "/" + kr.version
	}
	var what, code string
	switch kr.kind {
	case KindSecrets:
		what, code = "secret", "SecretNotFound"
	case KindKeys:
		what, code = "key", "KeyNotFound"
	default:
		what, code = "certificate", "CertificateNotFound"
	}
	msg := fmt.Sprintf("A %s with (name/id) %s was not found in this key vault. If you recently deleted this %s you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182", what, id, what)
	return kr.fail(http.StatusNotFound, code, msg, "")
}

// kvError is Key Vault's error body.
type kvError struct {
	Error kvErrorDetail `json:"error"`
}

type kvErrorDetail struct {
	Code       string         `json:"code"`
	Message    string         `json:"message"`
	InnerError *kvErrorDetail `json:"innererror,omitempty"`
}

func (kr *kvRequest) fail(status int, code, message, inner string) int {
	body := kvError{Error: kvErrorDetail{Code: code, Message: message}}
	if inner != "" {
		body.Error.InnerError = &kvErrorDetail{Code: inner}
	}
	return kr.writeJSON(status, body)
}

func (kr *kvRequest) writeJSON(status int, body any) int {
	b, err := json.Marshal(body)
	if err != nil {
		http.Error(kr.w, "kvnode Azure emulator: encode response", http.StatusInternalServerError)
		return http.StatusInternalServerError
	}
	h := kr.w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("x-ms-request-id", newGUID())
	h.Set("x-ms-keyvault-region", vaultLocation)
	kr.w.WriteHeader(status)
	_, _ = kr.w.Write(b)
	return status
}
