package emulator

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	tpSNI      = "ao66vp0nd3sjj53vdvhe9jvutuohbfrbebhrjbtm3b6vpclpotcdg.ests.aks"
	tpMIClient = "33333333-4444-4555-8666-777777777777"
)

// proxyClient reaches the token proxy as the Azure SDK does: through e's
// HTTP proxy to kubernetes.default.svc.cluster.local, with sni as the TLS
// server name.
func proxyClient(t *testing.T, e *Emulator, sni string) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(e.CACertPEM()))
	proxy, err := url.Parse(e.ProxyURL())
	require.NoError(t, err)
	tr := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: sni}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func proxyRequest(t *testing.T, method, path, host string, form url.Values) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "https://kubernetes.default.svc.cluster.local"+path, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Host = host
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return req
}

func TestTokenProxy(t *testing.T) {
	e := idEmulator(t)
	key := newIssuerKeyRSA(t, "k1")
	require.NoError(t, e.TrustIssuer(idIssuer, key.jwks))
	mi, err := e.AddManagedIdentity(Principal{TenantID: idTenant, ClientID: tpMIClient})
	require.NoError(t, err)
	require.NoError(t, e.EnableTokenProxy(TokenProxyOptions{SNIName: tpSNI}))
	require.NoError(t, e.AddIdentityBinding(IdentityBinding{ClientID: tpMIClient, Issuer: idIssuer, Subject: idSubject}))
	require.NoError(t, e.CreateVault("kv-proxy", VaultOptions{TenantID: idTenant}))
	require.NoError(t, e.Grant("kv-proxy", mi.ObjectID))
	_, err = e.SetSecret("kv-proxy", "s", "through-the-proxy", SecretOptions{})
	require.NoError(t, err)
	good := proxyClient(t, e, tpSNI)

	// The OpenID configuration, on the authority host the client names.
	st, body, _ := idDo(t, good, proxyRequest(t, http.MethodGet, "/"+idTenant+"/v2.0/.well-known/openid-configuration", "login.microsoftonline.com", nil))
	require.Equal(t, http.StatusOK, st, "%v", body)
	assert.Equal(t, "https://login.microsoftonline.com/"+idTenant+"/v2.0", body["issuer"])

	now := time.Now()
	binding := []string{BindingAudience}
	form := func(assertion string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {tpMIClient}, "scope": {"https://vault.azure.net/.default openid offline_access profile"},
			"client_assertion_type": {clientAssertionTypeJWT}, "client_assertion": {assertion}}
	}
	tokenPath := "/" + idTenant + "/oauth2/v2.0/token"
	goodAssertion := key.sign(t, saClaims(idIssuer, idSubject, binding, now, now.Add(time.Hour)))

	st, body, _ = idDo(t, good, proxyRequest(t, http.MethodPost, tokenPath, "login.microsoftonline.com", form(goodAssertion)))
	require.Equal(t, http.StatusOK, st, "%v", body)
	token, _ := body["access_token"].(string)
	require.NotEmpty(t, token)

	// Key Vault accepts the token as the managed identity's.
	kv, err := http.NewRequest(http.MethodGet, "https://kv-proxy.vault.azure.net/secrets/s?api-version=7.6", nil)
	require.NoError(t, err)
	kv.Header.Set("Authorization", "Bearer "+token)
	st, body, _ = idDo(t, idClient(t, e), kv)
	require.Equal(t, http.StatusOK, st, "%v", body)
	assert.Equal(t, "through-the-proxy", body["value"])
	assert.Equal(t, 1, e.CountRequests(RequestFilter{Service: ServiceTokenProxy, Method: http.MethodPost, Identity: tpMIClient, Status: 200}))

	for _, tc := range []struct {
		name      string
		client    *http.Client
		host      string
		assertion string
		status    int
		aadsts    string
	}{
		{name: "wrong SNI", client: proxyClient(t, e, "aother.ests.aks"), assertion: goodAssertion, status: 400, aadsts: "AADSTS900023"},
		{name: "no SNI override", client: proxyClient(t, e, ""), assertion: goodAssertion, status: 400, aadsts: "AADSTS900023"},
		{name: "Host not an authority", host: "vault.azure.net", assertion: goodAssertion, status: 400, aadsts: "AADSTS90002"},
		{name: "workload identity audience", assertion: key.sign(t, saClaims(idIssuer, idSubject, []string{DefaultFederatedAudience}, now, now.Add(time.Hour))), status: 401, aadsts: "AADSTS700212"},
		{name: "service account not bound", assertion: key.sign(t, saClaims(idIssuer, "system:serviceaccount:default:other", binding, now, now.Add(time.Hour))), status: 401, aadsts: "AADSTS700213"},
		{name: "issuer not bound", assertion: key.sign(t, saClaims("https://evil.test", idSubject, binding, now, now.Add(time.Hour))), status: 401, aadsts: "AADSTS50166"},
		{name: "expired", assertion: key.sign(t, saClaims(idIssuer, idSubject, binding, now.Add(-2*time.Hour), now.Add(-time.Hour))), status: 401, aadsts: "AADSTS700024"},
		{name: "forged", assertion: newIssuerKeyRSA(t, "k1").sign(t, saClaims(idIssuer, idSubject, binding, now, now.Add(time.Hour))), status: 401, aadsts: "AADSTS50013"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, host := tc.client, tc.host
			if c == nil {
				c = good
			}
			if host == "" {
				host = "login.microsoftonline.com"
			}
			st, body, _ := idDo(t, c, proxyRequest(t, http.MethodPost, tokenPath, host, form(tc.assertion)))
			assert.Equal(t, tc.status, st)
			assert.Contains(t, body["error_description"], tc.aadsts)
			assert.NotContains(t, body, "access_token")
		})
	}

	// Entra ID itself does not take the binding audience's token.
	st, _ = idPostForm(t, idClient(t, e), "https://login.microsoftonline.com"+tokenPath, form(goodAssertion))
	assert.Equal(t, http.StatusUnauthorized, st)
}
