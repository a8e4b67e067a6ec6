package emulator

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// control sends a control request straight to the emulator's address, as a
// test in another language would.
func control(t *testing.T, e *Emulator, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, e.ProxyURL()+path, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	if len(bytes.TrimSpace(b)) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(b, &out), "%s", b)
	}
	return resp.StatusCode, out
}

func TestControlSurfaceRoundTrip(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	key := newIssuerKeyRSA(t, "k1")

	st, body := control(t, e, "GET", "/control/", "")
	require.Equal(t, http.StatusOK, st)
	assert.Contains(t, body["operations"], "POST /control/applications")

	st, body = control(t, e, "GET", "/control/env", "")
	require.Equal(t, http.StatusOK, st)
	assert.Equal(t, e.ProxyURL(), body["proxyUrl"])
	assert.Equal(t, e.CAFile(), body["caFile"])

	req, _ := http.NewRequest("GET", e.ProxyURL()+"/control/ca.crt", nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	pemBytes, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, e.CACertPEM(), pemBytes)

	st, body = control(t, e, "POST", "/control/applications", `{"tenantId":"`+idTenant+`","clientId":"`+idAppClient+`","secret":"`+idAppSecret+`"}`)
	require.Equal(t, http.StatusCreated, st, "%v", body)
	assert.Equal(t, idAppClient, body["clientId"])
	assert.NotEmpty(t, body["objectId"])
	assert.NotContains(t, body, "secret", "the control surface never shows a secret")
	appOID := body["objectId"].(string)

	jwks, _ := json.Marshal(map[string]any{"issuer": idIssuer, "jwks": json.RawMessage(key.jwks)})
	st, body = control(t, e, "POST", "/control/trusted-issuers", string(jwks))
	require.Equal(t, http.StatusNoContent, st, "%v", body)
	st, body = control(t, e, "POST", "/control/applications/"+idAppClient+"/federated-credentials", `{"issuer":"`+idIssuer+`","subject":"`+idSubject+`"}`)
	require.Equal(t, http.StatusNoContent, st, "%v", body)

	// The application can now authenticate with the secret and with a
	// federated token.
	tokenURL := "https://login.microsoftonline.com/" + idTenant + "/oauth2/v2.0/token"
	st, _ = idPostForm(t, c, tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret}, "scope": {"https://vault.azure.net/.default"}})
	assert.Equal(t, http.StatusOK, st)
	assertion := key.sign(t, saClaims(idIssuer, idSubject, []string{DefaultFederatedAudience}, time.Now(), time.Now().Add(time.Hour)))
	st, _ = idPostForm(t, c, tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_assertion": {assertion},
		"client_assertion_type": {clientAssertionTypeJWT}, "scope": {"https://vault.azure.net/.default"}})
	assert.Equal(t, http.StatusOK, st)

	st, body = control(t, e, "POST", "/control/managed-identities", `{"tenantId":"`+idTenant+`"}`)
	require.Equal(t, http.StatusCreated, st, "%v", body)
	miClient := body["clientId"].(string)
	assert.NotEmpty(t, body["resourceId"])
	st, body = control(t, e, "GET", "/control/managed-identities", "")
	require.Equal(t, http.StatusOK, st)
	require.Len(t, body["identities"], 1)
	st, _ = control(t, e, "POST", "/control/managed-identities/"+miClient+"/unassign", "")
	assert.Equal(t, http.StatusNoContent, st)
	assert.Empty(t, e.AssignedIdentities())
	st, _ = control(t, e, "POST", "/control/managed-identities/"+miClient+"/assign", "")
	assert.Equal(t, http.StatusNoContent, st)
	assert.Equal(t, []string{miClient}, e.AssignedIdentities())

	// Vaults and their contents.
	st, body = control(t, e, "POST", "/control/vaults", `{"name":"kv-ctl","secrets":[{"name":"s1","value":"one"}],"grants":[{"clientId":"`+idAppClient+`","permissions":["secrets/get"]}]}`)
	require.Equal(t, http.StatusCreated, st, "%v", body)
	st, body = control(t, e, "POST", "/control/vaults/kv-ctl/secrets", `{"name":"s1","value":"two","contentType":"text/plain"}`)
	require.Equal(t, http.StatusCreated, st, "%v", body)
	version := body["version"].(string)
	assert.NotEmpty(t, version)
	st, body = control(t, e, "POST", "/control/vaults/kv-ctl/keys", `{"name":"k1","type":"RSA","size":2048}`)
	require.Equal(t, http.StatusCreated, st, "%v", body)
	assert.NotEmpty(t, body["version"])
	st, body = control(t, e, "POST", "/control/vaults/kv-ctl/certificates", `{"name":"c1","chainLength":2}`)
	require.Equal(t, http.StatusCreated, st, "%v", body)
	assert.Len(t, body["chain"], 2)
	assert.Contains(t, body["chain"].([]any)[0], "BEGIN CERTIFICATE")
	st, body = control(t, e, "POST", "/control/vaults/kv-ctl/grants", `{"objectId":"`+appOID+`","permissions":["keys/get"]}`)
	assert.Equal(t, http.StatusNoContent, st, "%v", body)
	st, body = control(t, e, "POST", "/control/vaults/kv-ctl/disable", `{"kind":"secrets","name":"s1","version":"`+version+`"}`)
	assert.Equal(t, http.StatusNoContent, st, "%v", body)
	st, body = control(t, e, "PUT", "/control/vaults/kv-ctl/throttle", `{"limit":10,"window":"1s"}`)
	assert.Equal(t, http.StatusNoContent, st, "%v", body)
	st, body = control(t, e, "POST", "/control/vaults/nope/secrets", `{"name":"s1","value":"x"}`)
	assert.Equal(t, http.StatusNotFound, st, "%v", body)

	// A whole config, as YAML.
	st, body = control(t, e, "POST", "/control/config", "vaults:\n- name: kv-yaml\n  secrets: [{name: a, value: b}]\n")
	assert.Equal(t, http.StatusNoContent, st, "%v", body)
	_, err = e.SetSecret("kv-yaml", "a", "c", SecretOptions{})
	assert.NoError(t, err)

	// Faults.
	st, body = control(t, e, "POST", "/control/imds/faults", `{"status":410,"count":1}`)
	require.Equal(t, http.StatusNoContent, st, "%v", body)
	st, _, _ = imdsGet(t, c, imdsTokenPath, "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net", metadataTrue)
	assert.Equal(t, http.StatusGone, st)
	st, _ = control(t, e, "POST", "/control/imds/faults", `{"latency":"10ms"}`)
	assert.Equal(t, http.StatusNoContent, st)
	st, _ = control(t, e, "DELETE", "/control/imds/faults", "")
	assert.Equal(t, http.StatusNoContent, st)
	st, _, _ = imdsGet(t, c, imdsTokenPath, "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net", metadataTrue)
	assert.Equal(t, http.StatusOK, st)
	st, _ = control(t, e, "POST", "/control/entra/faults", `{"status":503,"count":1}`)
	assert.Equal(t, http.StatusNoContent, st)
	st, _ = idPostForm(t, c, tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret}, "scope": {"https://vault.azure.net/.default"}})
	assert.Equal(t, http.StatusServiceUnavailable, st)
	st, _ = control(t, e, "DELETE", "/control/entra/faults", "")
	assert.Equal(t, http.StatusNoContent, st)
	st, _ = control(t, e, "POST", "/control/entra/faults", `{"drop":true,"count":1}`)
	assert.Equal(t, http.StatusNoContent, st)
	resp, err = c.PostForm(tokenURL, url.Values{"grant_type": {"client_credentials"}, "client_id": {idAppClient}, "client_secret": {idAppSecret}, "scope": {"https://vault.azure.net/.default"}})
	if err == nil {
		resp.Body.Close()
	}
	assert.Error(t, err, "a dropped token request has no answer")
	st, body = control(t, e, "POST", "/control/keyvault/faults", `{"status":500,"count":1}`)
	assert.Equal(t, http.StatusNoContent, st, "%v", body)
	st, _ = control(t, e, "DELETE", "/control/keyvault/faults", "")
	assert.Equal(t, http.StatusNoContent, st)

	// The request log.
	st, body = control(t, e, "GET", "/control/requests?service=entra&identity="+idAppClient, "")
	require.Equal(t, http.StatusOK, st, "%v", body)
	assert.Equal(t, float64(4), body["count"])
	reqs := body["requests"].([]any)
	require.Len(t, reqs, 4)
	assert.Equal(t, float64(444), reqs[3].(map[string]any)["status"], "the dropped request")
	first := reqs[0].(map[string]any)
	assert.Equal(t, "entra", first["service"])
	assert.Equal(t, "client_secret", first["grant"])
	assert.Equal(t, float64(200), first["status"])
	assert.Equal(t, idTenant, first["tenant"])
	st, body = control(t, e, "GET", "/control/requests?service=imds&status=410", "")
	require.Equal(t, http.StatusOK, st)
	assert.Equal(t, float64(1), body["count"])
	st, _ = control(t, e, "DELETE", "/control/requests", "")
	assert.Equal(t, http.StatusNoContent, st)
	assert.Zero(t, e.CountRequests(RequestFilter{}))
}

func TestControlSurfaceErrors(t *testing.T) {
	e := idEmulator(t)
	tests := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"missing field", "POST", "/control/applications", `{"clientId":"a"}`, 400, "tenantId: required"},
		{"unknown field", "POST", "/control/applications", `{"tenantId":"t","clientId":"a","password":"x"}`, 400, `unknown field "password"`},
		{"wrong type", "POST", "/control/vaults", `{"name":"kv1","pageSize":"ten"}`, 400, `field "pageSize"`},
		{"bad duration", "PUT", "/control/vaults/kv1/throttle", `{"limit":1,"window":"soon"}`, 400, "window"},
		{"empty body", "POST", "/control/managed-identities", ``, 400, "empty"},
		{"not JSON", "POST", "/control/managed-identities", `{`, 400, "request body"},
		{"trailing data", "POST", "/control/managed-identities", `{"tenantId":"t"} {}`, 400, "data after"},
		{"federated credential for unknown app", "POST", "/control/applications/nobody/federated-credentials", `{"issuer":"i","subject":"s"}`, 404, "nobody"},
		{"federated credential without subject", "POST", "/control/applications/a/federated-credentials", `{"issuer":"i"}`, 400, "subject: required"},
		{"assign unknown identity", "POST", "/control/managed-identities/nobody/assign", ``, 404, "nobody"},
		{"grant without principal", "POST", "/control/vaults/kv1/grants", `{"permissions":["secrets/get"]}`, 400, "objectId: required"},
		{"disable without version", "POST", "/control/vaults/kv1/disable", `{"kind":"secrets","name":"s"}`, 400, "version: required"},
		{"fault without effect", "POST", "/control/imds/faults", `{"count":1}`, 400, "neither a status, a latency nor a drop"},
		{"fault with bad status", "POST", "/control/entra/faults", `{"status":200}`, 400, "not an HTTP error status"},
		{"fault that drops and answers", "POST", "/control/keyvault/faults", `{"drop":true,"status":503}`, 400, "drops the connection has no status"},
		{"unknown filter", "GET", "/control/requests?tenant=x", ``, 400, `"tenant"`},
		{"bad service filter", "GET", "/control/requests?service=graph", ``, 400, `"service"`},
		{"bad status filter", "GET", "/control/requests?status=ok", ``, 400, `"status"`},
		{"unknown operation", "GET", "/control/nothing", ``, 404, "no control operation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, body := control(t, e, tc.method, tc.path, tc.body)
			assert.Equal(t, tc.status, st, "%v", body)
			require.NotNil(t, body)
			assert.Contains(t, body["error"], tc.want)
		})
	}
}

// A shell that exported the emulator's proxy variables sends control
// requests through the proxy (curl proxies loopback too); they must still
// reach the control surface, and other loopback ports must not.
func TestControlSurfaceThroughTheProxy(t *testing.T) {
	e, err := Start(Options{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { e.Close() })
	proxy, err := url.Parse(e.ProxyURL())
	require.NoError(t, err)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}

	resp, err := c.Get(e.ProxyURL() + "/control/env")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), e.CAFile())

	resp, err = c.Get("http://127.0.0.1:1/control/env")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
}
