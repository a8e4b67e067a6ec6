package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	idTenant    = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	idAppClient = "11111111-1111-4111-8111-111111111111"
	idAppSecret = "app-secret-value-do-not-log"
	idIssuer    = "https://oidc.cluster.test/issuer"
	idSubject   = "system:serviceaccount:default:workload"
)

// idEmulator starts an emulator for the Entra ID and IMDS tests; it is closed
// when the test ends.
func idEmulator(t *testing.T) *Emulator {
	t.Helper()
	e, err := Start(Options{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	return e
}

// idClient is an HTTP client that reaches everything through e, trusting e's
// CA: no request leaves loopback.
func idClient(t *testing.T, e *Emulator) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(e.CACertPEM()))
	proxy, err := url.Parse(e.ProxyURL())
	require.NoError(t, err)
	tr := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// idDo sends a request and returns the status and the JSON body decoded
// into a map.
func idDo(t *testing.T, c *http.Client, req *http.Request) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var body map[string]any
	if len(b) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(b, &body), "body %s", b)
	}
	return resp.StatusCode, body, resp.Header
}

func idGet(t *testing.T, c *http.Client, u string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	require.NoError(t, err)
	st, body, _ := idDo(t, c, req)
	return st, body
}

func idPostForm(t *testing.T, c *http.Client, u string, form url.Values) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	st, body, _ := idDo(t, c, req)
	return st, body
}

// idIssuerKey is a test issuer's signing key and its JWKS.
type idIssuerKey struct {
	kid  string
	rsa  *rsa.PrivateKey
	ec   *ecdsa.PrivateKey
	jwks []byte
}

func newIssuerKeyRSA(t *testing.T, kid string) idIssuerKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	jwks, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
		"n": base64.RawURLEncoding.EncodeToString(k.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes()),
	}}})
	require.NoError(t, err)
	return idIssuerKey{kid: kid, rsa: k, jwks: jwks}
}

func newIssuerKeyEC(t *testing.T, kid string) idIssuerKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	raw, err := k.PublicKey.Bytes() // 0x04 || X || Y
	require.NoError(t, err)
	jwks, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "use": "sig", "alg": "ES256", "kid": kid, "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(raw[33:]),
	}}})
	require.NoError(t, err)
	return idIssuerKey{kid: kid, ec: k, jwks: jwks}
}

// sign returns a service-account-like token with the given claims.
func (k idIssuerKey) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	var tok *jwt.Token
	var key any
	if k.rsa != nil {
		tok, key = jwt.NewWithClaims(jwt.SigningMethodRS256, claims), k.rsa
	} else {
		tok, key = jwt.NewWithClaims(jwt.SigningMethodES256, claims), k.ec
	}
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(key)
	require.NoError(t, err)
	return s
}

func saClaims(iss, sub string, aud []string, iat, exp time.Time) jwt.MapClaims {
	return jwt.MapClaims{"iss": iss, "sub": sub, "aud": aud, "iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix()}
}

func TestEntraDiscoveryDocuments(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	_, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)

	for _, cl := range Clouds {
		t.Run(cl.Name, func(t *testing.T) {
			authz := url.QueryEscape("https://" + cl.AuthorityHost + "/" + idTenant + "/oauth2/v2.0/authorize")
			st, body := idGet(t, c, "https://"+cl.AuthorityHost+"/common/discovery/instance?api-version=1.1&authorization_endpoint="+authz)
			require.Equal(t, http.StatusOK, st)
			assert.Equal(t, "https://"+cl.AuthorityHost+"/"+idTenant+"/v2.0/.well-known/openid-configuration", body["tenant_discovery_endpoint"])
			assert.Equal(t, "1.1", body["api-version"])
			var aliased bool
			for _, m := range body["metadata"].([]any) {
				for _, a := range m.(map[string]any)["aliases"].([]any) {
					aliased = aliased || a == cl.AuthorityHost
				}
			}
			assert.True(t, aliased, "the metadata must list %s among the aliases", cl.AuthorityHost)

			st, body = idGet(t, c, "https://"+cl.AuthorityHost+"/"+idTenant+"/v2.0/.well-known/openid-configuration")
			require.Equal(t, http.StatusOK, st)
			base := "https://" + cl.AuthorityHost + "/" + idTenant
			assert.Equal(t, base+"/v2.0", body["issuer"])
			assert.Equal(t, base+"/oauth2/v2.0/token", body["token_endpoint"])
			assert.Equal(t, base+"/oauth2/v2.0/authorize", body["authorization_endpoint"])
			assert.Equal(t, base+"/discovery/v2.0/keys", body["jwks_uri"])

			st, body = idGet(t, c, "https://"+cl.AuthorityHost+"/organizations/v2.0/.well-known/openid-configuration")
			require.Equal(t, http.StatusOK, st)
			assert.Equal(t, "https://"+cl.AuthorityHost+"/{tenantid}/v2.0", body["issuer"])
		})
	}

	t.Run("unknown tenant", func(t *testing.T) {
		st, body := idGet(t, c, "https://login.microsoftonline.com/00000000-0000-0000-0000-00000000dead/v2.0/.well-known/openid-configuration")
		assert.Equal(t, http.StatusBadRequest, st)
		assert.Equal(t, "invalid_tenant", body["error"])
		assert.Equal(t, []any{float64(90002)}, body["error_codes"])
		assert.Contains(t, body["error_description"], "AADSTS90002")
		assert.NotEmpty(t, body["trace_id"])
		assert.NotEmpty(t, body["correlation_id"])
	})

	t.Run("discovery without authorization_endpoint", func(t *testing.T) {
		st, body := idGet(t, c, "https://login.microsoftonline.com/common/discovery/instance?api-version=1.1")
		assert.Equal(t, http.StatusBadRequest, st)
		assert.Equal(t, "invalid_request", body["error"])
	})
}

// The keys endpoint publishes the key that verifies the access tokens the
// token endpoint issues.
func TestEntraKeysVerifyIssuedTokens(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	p, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)

	st, body := idPostForm(t, c, "https://login.microsoftonline.com/"+idTenant+"/oauth2/v2.0/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret},
		"scope": {"https://vault.azure.net/.default openid offline_access profile"},
	})
	require.Equal(t, http.StatusOK, st, "%v", body)
	access := body["access_token"].(string)

	req, err := http.NewRequest(http.MethodGet, "https://login.microsoftonline.com/"+idTenant+"/discovery/v2.0/keys", nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	require.NoError(t, err)
	jwks, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	keys, err := parseJWKS(jwks)
	require.NoError(t, err)

	var claims AccessClaims
	_, err = jwt.ParseWithClaims(access, &claims, keys.keyFunc, jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience("https://vault.azure.net"))
	require.NoError(t, err)
	assert.Equal(t, p.ObjectID, claims.ObjectID)
	assert.Equal(t, idAppClient, claims.AppID)
	assert.Equal(t, idTenant, claims.TenantID)
}

func TestEntraTokenClientSecret(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	p, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)
	_, err = e.AddApplication(Principal{TenantID: "other-tenant", ClientID: "other-app", Secret: "x"})
	require.NoError(t, err)

	good := func() url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret},
			"scope": {"https://vault.azure.net/.default openid offline_access profile"}}
	}
	tests := []struct {
		name      string
		tenant    string
		edit      func(url.Values)
		status    int
		errCode   string
		aadsts    int
		audience  string
		recordTen string
	}{
		{name: "good", tenant: idTenant, edit: func(url.Values) {}, status: 200, audience: "https://vault.azure.net"},
		{name: "good, sovereign-style resource with trailing slash", tenant: idTenant,
			edit: func(v url.Values) { v.Set("scope", "https://vault.usgovcloudapi.net//.default") }, status: 200, audience: "https://vault.usgovcloudapi.net"},
		{name: "wrong secret", tenant: idTenant, edit: func(v url.Values) { v.Set("client_secret", "nope") }, status: 401, errCode: "invalid_client", aadsts: 7000215},
		{name: "unknown application", tenant: idTenant, edit: func(v url.Values) { v.Set("client_id", "22222222-0000-0000-0000-000000000000") }, status: 400, errCode: "unauthorized_client", aadsts: 700016},
		{name: "application of another tenant", tenant: idTenant, edit: func(v url.Values) { v.Set("client_id", "other-app"); v.Set("client_secret", "x") }, status: 400, errCode: "unauthorized_client", aadsts: 700016},
		{name: "unknown tenant", tenant: "99999999-0000-0000-0000-000000000000", edit: func(url.Values) {}, status: 400, errCode: "invalid_request", aadsts: 90002},
		{name: "no client_id", tenant: idTenant, edit: func(v url.Values) { v.Del("client_id") }, status: 400, errCode: "invalid_request", aadsts: 900144},
		{name: "no scope", tenant: idTenant, edit: func(v url.Values) { v.Del("scope") }, status: 400, errCode: "invalid_request", aadsts: 900144},
		{name: "scope without .default", tenant: idTenant, edit: func(v url.Values) { v.Set("scope", "https://vault.azure.net/secrets.read") }, status: 400, errCode: "invalid_scope", aadsts: 1002012},
		{name: "only OIDC scopes", tenant: idTenant, edit: func(v url.Values) { v.Set("scope", "openid profile") }, status: 400, errCode: "invalid_scope", aadsts: 70011},
		{name: "no credential", tenant: idTenant, edit: func(v url.Values) { v.Del("client_secret") }, status: 401, errCode: "invalid_client", aadsts: 7000218},
		{name: "other grant", tenant: idTenant, edit: func(v url.Values) { v.Set("grant_type", "password") }, status: 400, errCode: "unsupported_grant_type", aadsts: 70003},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.ResetRequests()
			form := good()
			tc.edit(form)
			st, body := idPostForm(t, c, "https://login.microsoftonline.com/"+tc.tenant+"/oauth2/v2.0/token", form)
			require.Equal(t, tc.status, st, "%v", body)
			if tc.status == http.StatusOK {
				assert.Equal(t, "Bearer", body["token_type"])
				assert.IsType(t, float64(0), body["expires_in"], "v2 expires_in is a JSON number")
				assert.InDelta(t, 3600, body["expires_in"], 5)
				assert.IsType(t, float64(0), body["ext_expires_in"])
				claims, err := e.signer.verify(body["access_token"].(string), tc.audience)
				require.NoError(t, err)
				assert.Equal(t, p.ObjectID, claims.ObjectID)
				assert.Equal(t, idAppClient, claims.AppID)
			} else {
				assert.Equal(t, tc.errCode, body["error"])
				assert.Equal(t, []any{float64(tc.aadsts)}, body["error_codes"])
				assert.Contains(t, body["error_description"], "AADSTS")
				assert.NotContains(t, body["error_description"], idAppSecret)
				assert.Regexp(t, `^[0-9a-f-]{36}$`, body["trace_id"])
				assert.Regexp(t, `^[0-9a-f-]{36}$`, body["correlation_id"])
				assert.NotEmpty(t, body["timestamp"])
			}
			reqs := e.Requests(RequestFilter{Service: ServiceEntra})
			require.Len(t, reqs, 1)
			assert.Equal(t, tc.status, reqs[0].Status)
			assert.Equal(t, tc.tenant, reqs[0].Tenant)
			assert.Equal(t, "login.microsoftonline.com", reqs[0].Host)
			assert.Equal(t, form.Get("client_id"), reqs[0].Identity)
			if form.Get("client_secret") != "" {
				assert.Equal(t, "client_secret", reqs[0].Grant)
			}
		})
	}

	t.Run("GET is refused", func(t *testing.T) {
		st, body := idGet(t, c, "https://login.microsoftonline.com/"+idTenant+"/oauth2/v2.0/token")
		assert.Equal(t, http.StatusBadRequest, st)
		assert.Equal(t, []any{float64(900561)}, body["error_codes"])
	})

	t.Run("correlation id echoes client-request-id", func(t *testing.T) {
		form := good()
		form.Set("client_secret", "bad")
		req, err := http.NewRequest(http.MethodPost, "https://login.microsoftonline.com/"+idTenant+"/oauth2/v2.0/token", strings.NewReader(form.Encode()))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("client-request-id", "3b0c1c8e-0000-4000-8000-000000000001")
		_, body, _ := idDo(t, c, req)
		assert.Equal(t, "3b0c1c8e-0000-4000-8000-000000000001", body["correlation_id"])
	})
}

func TestEntraTokenFederatedAssertion(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	key := newIssuerKeyRSA(t, "k1")
	ecKey := newIssuerKeyEC(t, "e1")
	other := newIssuerKeyRSA(t, "k1") // same kid, different key: a forged token
	require.NoError(t, e.TrustIssuer(idIssuer, key.jwks))
	require.NoError(t, e.TrustIssuer("https://ec.issuer.test", ecKey.jwks))
	p, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Federated: []FederatedCredential{
		{Issuer: idIssuer, Subject: idSubject},
		{Issuer: "https://ec.issuer.test", Subject: idSubject, Audiences: []string{"api://custom"}},
		{Issuer: "https://untrusted.issuer.test", Subject: idSubject},
	}})
	require.NoError(t, err)

	now := time.Now()
	aud := []string{DefaultFederatedAudience}
	tests := []struct {
		name      string
		assertion string
		typ       string
		status    int
		aadsts    int
	}{
		{name: "good", assertion: key.sign(t, saClaims(idIssuer, idSubject, aud, now, now.Add(time.Hour))), status: 200},
		{name: "good, EC key and custom audience", assertion: ecKey.sign(t, saClaims("https://ec.issuer.test", idSubject, []string{"api://custom"}, now, now.Add(time.Hour))), status: 200},
		{name: "wrong subject", assertion: key.sign(t, saClaims(idIssuer, "system:serviceaccount:default:other", aud, now, now.Add(time.Hour))), status: 401, aadsts: 700213},
		{name: "wrong audience", assertion: key.sign(t, saClaims(idIssuer, idSubject, []string{"https://kubernetes.default.svc"}, now, now.Add(time.Hour))), status: 401, aadsts: 700212},
		{name: "expired", assertion: key.sign(t, saClaims(idIssuer, idSubject, aud, now.Add(-2*time.Hour), now.Add(-time.Hour))), status: 401, aadsts: 700024},
		{name: "not yet valid", assertion: key.sign(t, saClaims(idIssuer, idSubject, aud, now.Add(time.Hour), now.Add(2*time.Hour))), status: 401, aadsts: 700024},
		{name: "bad signature", assertion: other.sign(t, saClaims(idIssuer, idSubject, aud, now, now.Add(time.Hour))), status: 401, aadsts: 50013},
		{name: "unknown kid", assertion: newIssuerKeyRSA(t, "k2").sign(t, saClaims(idIssuer, idSubject, aud, now, now.Add(time.Hour))), status: 401, aadsts: 7000272},
		{name: "issuer without federated credential", assertion: key.sign(t, saClaims("https://evil.test", idSubject, aud, now, now.Add(time.Hour))), status: 401, aadsts: 700211},
		{name: "issuer not trusted", assertion: key.sign(t, saClaims("https://untrusted.issuer.test", idSubject, aud, now, now.Add(time.Hour))), status: 401, aadsts: 50166},
		{name: "certificate assertion", assertion: key.sign(t, saClaims(idAppClient, idAppClient, []string{"https://login.microsoftonline.com/" + idTenant + "/oauth2/v2.0/token"}, now, now.Add(time.Hour))), status: 401, aadsts: 700027},
		{name: "malformed", assertion: "not.a.jwt", status: 400, aadsts: 50027},
		{name: "missing assertion type", assertion: key.sign(t, saClaims(idIssuer, idSubject, aud, now, now.Add(time.Hour))), typ: "-", status: 400, aadsts: 900144},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.ResetRequests()
			form := url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient},
				"scope": {"https://vault.azure.net/.default openid offline_access profile"}, "client_assertion": {tc.assertion},
				"client_assertion_type": {clientAssertionTypeJWT}}
			if tc.typ == "-" {
				form.Del("client_assertion_type")
			}
			st, body := idPostForm(t, c, "https://login.microsoftonline.com/"+idTenant+"/oauth2/v2.0/token", form)
			require.Equal(t, tc.status, st, "%v", body)
			if st == http.StatusOK {
				claims, err := e.signer.verify(body["access_token"].(string), "https://vault.azure.net")
				require.NoError(t, err)
				assert.Equal(t, p.ObjectID, claims.ObjectID)
			} else {
				assert.Equal(t, []any{float64(tc.aadsts)}, body["error_codes"], "%v", body["error_description"])
				assert.NotContains(t, body["error_description"], tc.assertion)
			}
			reqs := e.Requests(RequestFilter{Service: ServiceEntra})
			require.Len(t, reqs, 1)
			assert.Equal(t, "client_assertion", reqs[0].Grant)
			assert.Equal(t, idAppClient, reqs[0].Identity)
		})
	}

	t.Run("rotated issuer keys", func(t *testing.T) {
		rotated := newIssuerKeyRSA(t, "k9")
		require.NoError(t, e.TrustIssuer(idIssuer, rotated.jwks))
		form := url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "scope": {"https://vault.azure.net/.default"},
			"client_assertion_type": {clientAssertionTypeJWT}}
		form.Set("client_assertion", key.sign(t, saClaims(idIssuer, idSubject, aud, now, now.Add(time.Hour))))
		st, body := idPostForm(t, c, "https://login.microsoftonline.com/"+idTenant+"/oauth2/v2.0/token", form)
		assert.Equal(t, http.StatusUnauthorized, st)
		assert.Equal(t, []any{float64(7000272)}, body["error_codes"])
		form.Set("client_assertion", rotated.sign(t, saClaims(idIssuer, idSubject, aud, now, now.Add(time.Hour))))
		st, _ = idPostForm(t, c, "https://login.microsoftonline.com/"+idTenant+"/oauth2/v2.0/token", form)
		assert.Equal(t, http.StatusOK, st)
	})
}

func TestTrustIssuerRejectsBadJWKS(t *testing.T) {
	e := idEmulator(t)
	for name, doc := range map[string]string{
		"not JSON":        `{`,
		"no keys":         `{"keys":[]}`,
		"only enc keys":   `{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}`,
		"bad RSA":         `{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}`,
		"unknown curve":   `{"keys":[{"kty":"EC","crv":"P-192","x":"AA","y":"AA"}]}`,
		"point off curve": `{"keys":[{"kty":"EC","crv":"P-256","x":"AQ","y":"AQ"}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			assert.Error(t, e.TrustIssuer(idIssuer, []byte(doc)))
		})
	}
	assert.Error(t, e.TrustIssuer("", newIssuerKeyRSA(t, "a").jwks))
}

func TestEntraFaults(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	_, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret}, "scope": {"https://vault.azure.net/.default"}}
	tokenURL := "https://login.microsoftonline.com/" + idTenant + "/oauth2/v2.0/token"

	require.NoError(t, e.InjectEntraFault(Fault{Status: http.StatusServiceUnavailable, Count: 2}))
	for range 2 {
		st, body := idPostForm(t, c, tokenURL, form)
		assert.Equal(t, http.StatusServiceUnavailable, st)
		assert.Equal(t, "temporarily_unavailable", body["error"])
	}
	st, _ := idPostForm(t, c, tokenURL, form)
	assert.Equal(t, http.StatusOK, st, "the fault ends after Count requests")

	require.NoError(t, e.InjectEntraFault(Fault{Latency: 300 * time.Millisecond}))
	start := time.Now()
	st, _ = idPostForm(t, c, tokenURL, form)
	assert.Equal(t, http.StatusOK, st)
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	e.ClearEntraFaults()

	assert.Error(t, e.InjectEntraFault(Fault{}))
	assert.Error(t, e.InjectEntraFault(Fault{Status: 200}))
}

// Nothing the emulator logs carries a secret or an assertion.
func TestEntraLogsNoSecrets(t *testing.T) {
	var logs strings.Builder
	e, err := Start(Options{Dir: t.TempDir(), Logf: func(f string, a ...any) {
		logs.WriteString(strings.TrimSpace(strings.ReplaceAll(f, "%", "")))
		for _, v := range a {
			b, _ := json.Marshal(v)
			logs.Write(b)
		}
	}})
	require.NoError(t, err)
	defer e.Close()
	c := idClient(t, e)
	key := newIssuerKeyRSA(t, "k1")
	require.NoError(t, e.TrustIssuer(idIssuer, key.jwks))
	_, err = e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret,
		Federated: []FederatedCredential{{Issuer: idIssuer, Subject: idSubject}}})
	require.NoError(t, err)
	assertion := key.sign(t, saClaims(idIssuer, idSubject, []string{DefaultFederatedAudience}, time.Now(), time.Now().Add(time.Hour)))
	tokenURL := "https://login.microsoftonline.com/" + idTenant + "/oauth2/v2.0/token"
	_, b1 := idPostForm(t, c, tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret}, "scope": {"https://vault.azure.net/.default"}})
	_, b2 := idPostForm(t, c, tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_assertion": {assertion},
		"client_assertion_type": {clientAssertionTypeJWT}, "scope": {"https://vault.azure.net/.default"}})
	_, _ = idPostForm(t, c, tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret + "x"}, "scope": {"https://vault.azure.net/.default"}})

	got := logs.String()
	require.NotEmpty(t, got)
	for _, secret := range []string{idAppSecret, assertion, b1["access_token"].(string), b2["access_token"].(string)} {
		assert.NotContains(t, got, secret)
		for _, r := range e.Requests(RequestFilter{}) {
			assert.NotContains(t, r.Path+r.Identity+r.Grant+r.Tenant, secret)
		}
	}
}
