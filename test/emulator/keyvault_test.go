package emulator

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	kvTestTenant      = "5f0c6f2e-9b8e-4d4c-8e55-2f6a3b1c0d01"
	kvOtherTenant     = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
	kvTestVault       = "kv-test"
	kvPlantedSecret   = "planted-value-7c1e5d"
	kvPlantedClientSc = "planted-client-secret-91ab"
)

// kvEnv is an emulator with one vault, one registered application and an
// HTTPS client that reaches the emulator as its proxy.
type kvEnv struct {
	e      *Emulator
	client *http.Client
	app    Principal

	mu   sync.Mutex
	logs []string
}

func newKVEnv(t *testing.T) *kvEnv {
	t.Helper()
	env := &kvEnv{}
	e, err := Start(Options{Dir: t.TempDir(), Logf: func(format string, args ...any) {
		env.mu.Lock()
		env.logs = append(env.logs, fmt.Sprintf(format, args...))
		env.mu.Unlock()
	}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	env.e = e
	env.app, err = e.AddApplication(Principal{TenantID: kvTestTenant, ClientID: newGUID(), Secret: kvPlantedClientSc})
	require.NoError(t, err)
	require.NoError(t, e.CreateVault(kvTestVault, VaultOptions{TenantID: kvTestTenant}))

	proxy, err := url.Parse(e.ProxyURL())
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(e.CACertPEM()))
	tr := &http.Transport{Proxy: http.ProxyURL(proxy), TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	env.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return env
}

// token issues an access token for p and resource (default Key Vault in the
// public cloud).
func (env *kvEnv) token(t *testing.T, p Principal, resource string, life time.Duration) string {
	t.Helper()
	if resource == "" {
		resource = "https://vault.azure.net"
	}
	tok, _, err := env.e.signer.issue(p, resource, life)
	require.NoError(t, err)
	return tok
}

type kvResponse struct {
	status int
	header http.Header
	body   []byte
}

func (r kvResponse) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(r.body, &m), "body %s", r.body)
	return m
}

// errorCode returns error.code and error.message of a Key Vault error body.
func (r kvResponse) errorCode(t *testing.T) (code, message, inner string) {
	t.Helper()
	var b struct {
		Error struct {
			Code       string `json:"code"`
			Message    string `json:"message"`
			InnerError *struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(r.body, &b), "body %s", r.body)
	if b.Error.InnerError != nil {
		inner = b.Error.InnerError.Code
	}
	return b.Error.Code, b.Error.Message, inner
}

func (env *kvEnv) get(t *testing.T, rawURL, token string) kvResponse {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := env.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return kvResponse{status: resp.StatusCode, header: resp.Header, body: body}
}

func kvURL(vault, path string) string {
	return "https://" + vault + ".vault.azure.net" + path + "?api-version=7.6"
}

func TestKeyVaultChallenge(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.CreateVault("kv-implied", VaultOptions{}))
	require.NoError(t, env.e.CreateVault("kv-gov", VaultOptions{Cloud: "AzureUSGovernmentCloud", TenantID: kvTestTenant}))
	require.NoError(t, env.e.CreateVault("kv-china", VaultOptions{Cloud: "AzureChinaCloud", TenantID: kvTestTenant}))

	cases := []struct {
		name, url, challenge string
	}{
		{"public", kvURL(kvTestVault, "/secrets/s/"),
			`Bearer authorization="https://login.microsoftonline.com/` + kvTestTenant + `", resource="https://vault.azure.net"`},
		{"implied tenant from the directory", kvURL("kv-implied", "/secrets/s/"),
			`Bearer authorization="https://login.microsoftonline.com/` + kvTestTenant + `", resource="https://vault.azure.net"`},
		{"US Government", "https://kv-gov.vault.usgovcloudapi.net/secrets/s/?api-version=7.6",
			`Bearer authorization="https://login.microsoftonline.us/` + kvTestTenant + `", resource="https://vault.usgovcloudapi.net"`},
		{"China", "https://kv-china.vault.azure.cn/keys/k/?api-version=7.6",
			`Bearer authorization="https://login.chinacloudapi.cn/` + kvTestTenant + `", resource="https://vault.azure.cn"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := env.get(t, tc.url, "")
			assert.Equal(t, http.StatusUnauthorized, resp.status)
			assert.Equal(t, tc.challenge, resp.header.Get("WWW-Authenticate"))
			assert.Contains(t, resp.header.Get("Content-Type"), "application/json")
			code, msg, _ := resp.errorCode(t)
			assert.Equal(t, "Unauthorized", code)
			assert.Equal(t, "AKV10000: Request is missing a Bearer or PoP token.", msg)
		})
	}

	t.Run("ambiguous implied tenant", func(t *testing.T) {
		_, err := env.e.AddApplication(Principal{TenantID: kvOtherTenant, ClientID: newGUID()})
		require.NoError(t, err)
		resp := env.get(t, kvURL("kv-implied", "/secrets/s/"), "")
		assert.Contains(t, resp.header.Get("WWW-Authenticate"), `authorization="https://login.microsoftonline.com/organizations"`)
	})
}

func TestKeyVaultTokenErrors(t *testing.T) {
	env := newKVEnv(t)
	_, err := env.e.SetSecret(kvTestVault, "s", "v", SecretOptions{})
	require.NoError(t, err)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	other, err := env.e.AddApplication(Principal{TenantID: kvOtherTenant, ClientID: newGUID()})
	require.NoError(t, err)
	require.NoError(t, env.e.Grant(kvTestVault, other.ObjectID))

	cases := []struct {
		name, token, message string
	}{
		{"wrong audience", env.token(t, env.app, "https://management.azure.com/", time.Hour),
			"AKV10022: Invalid audience. Expected https://vault.azure.net, found: https://management.azure.com."},
		{"expired", env.token(t, env.app, "", -time.Minute), "[TokenExpired] Error validating token: 'S2S12086'."},
		{"not a JWT", "not-a-token", "AKV10046: Unable to resolve the key used for signature validation."},
		{"other tenant", env.token(t, other, "", time.Hour),
			"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/" + kvTestTenant + "/, found https://sts.windows.net/" + kvOtherTenant + "/."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := env.get(t, kvURL(kvTestVault, "/secrets/s/"), tc.token)
			require.Equal(t, http.StatusUnauthorized, resp.status, "body %s", resp.body)
			assert.NotEmpty(t, resp.header.Get("WWW-Authenticate"))
			code, msg, _ := resp.errorCode(t)
			assert.Equal(t, "Unauthorized", code)
			assert.Equal(t, tc.message, msg)
		})
	}
	// A public-cloud token does not open a US Government vault.
	require.NoError(t, env.e.CreateVault("kv-gov", VaultOptions{Cloud: "AzureUSGovernmentCloud", TenantID: kvTestTenant}))
	require.NoError(t, env.e.Grant("kv-gov", env.app.ObjectID))
	resp := env.get(t, "https://kv-gov.vault.usgovcloudapi.net/secrets/s/?api-version=7.6", env.token(t, env.app, "", time.Hour))
	require.Equal(t, http.StatusUnauthorized, resp.status)
	_, msg, _ := resp.errorCode(t)
	assert.Equal(t, "AKV10022: Invalid audience. Expected https://vault.usgovcloudapi.net, found: https://vault.azure.net.", msg)
}

func TestKeyVaultForbiddenWithoutGrant(t *testing.T) {
	env := newKVEnv(t)
	_, err := env.e.SetSecret(kvTestVault, "db-password", kvPlantedSecret, SecretOptions{})
	require.NoError(t, err)
	tok := env.token(t, env.app, "", time.Hour)

	resp := env.get(t, kvURL(kvTestVault, "/secrets/db-password/"), tok)
	require.Equal(t, http.StatusForbidden, resp.status)
	code, msg, inner := resp.errorCode(t)
	assert.Equal(t, "Forbidden", code)
	assert.Equal(t, "AccessDenied", inner)
	assert.Equal(t, fmt.Sprintf("The user, group or application 'appid=%s;oid=%s;iss=https://sts.windows.net/%s/' does not have secrets get permission on key vault 'kv-test;location=eastus'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
		env.app.ClientID, env.app.ObjectID, kvTestTenant), msg)
	assert.NotContains(t, string(resp.body), kvPlantedSecret)

	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID, "secrets/get"))
	assert.Equal(t, http.StatusOK, env.get(t, kvURL(kvTestVault, "/secrets/db-password/"), tok).status)
	resp = env.get(t, kvURL(kvTestVault, "/secrets/db-password/versions"), tok)
	assert.Equal(t, http.StatusForbidden, resp.status)
	_, msg, _ = resp.errorCode(t)
	assert.Contains(t, msg, "does not have secrets list permission")
	resp = env.get(t, kvURL(kvTestVault, "/keys/db-password/"), tok)
	assert.Equal(t, http.StatusForbidden, resp.status)

	require.NoError(t, env.e.Revoke(kvTestVault, env.app.ObjectID))
	assert.Equal(t, http.StatusForbidden, env.get(t, kvURL(kvTestVault, "/secrets/db-password/"), tok).status)

	assert.Error(t, env.e.Grant(kvTestVault, env.app.ObjectID, "secrets/set"))
	assert.ErrorIs(t, env.e.Grant("nope-vault", env.app.ObjectID), ErrVaultNotFound)
}

func TestKeyVaultNotFound(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	_, err := env.e.SetSecret(kvTestVault, "present", "v", SecretOptions{})
	require.NoError(t, err)
	tok := env.token(t, env.app, "", time.Hour)
	cases := []struct{ path, code, message string }{
		{"/secrets/missing/", "SecretNotFound", "A secret with (name/id) missing was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"},
		{"/secrets/present/0123456789abcdef0123456789abcdef", "SecretNotFound", "A secret with (name/id) present/0123456789abcdef0123456789abcdef was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"},
		{"/keys/missing/", "KeyNotFound", "A key with (name/id) missing was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"},
		{"/certificates/missing/", "CertificateNotFound", "A certificate with (name/id) missing was not found in this key vault. If you recently deleted this certificate you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			resp := env.get(t, kvURL(kvTestVault, tc.path), tok)
			require.Equal(t, http.StatusNotFound, resp.status)
			code, msg, _ := resp.errorCode(t)
			assert.Equal(t, tc.code, code)
			assert.Equal(t, tc.message, msg)
		})
	}
}

func TestKeyVaultRequestValidation(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	tok := env.token(t, env.app, "", time.Hour)

	t.Run("missing api-version", func(t *testing.T) {
		resp := env.get(t, "https://kv-test.vault.azure.net/secrets/s/", tok)
		assert.Equal(t, http.StatusBadRequest, resp.status)
		code, msg, _ := resp.errorCode(t)
		assert.Equal(t, "BadParameter", code)
		assert.Contains(t, msg, "api-version")
	})
	t.Run("invalid name", func(t *testing.T) {
		resp := env.get(t, kvURL(kvTestVault, "/secrets/bad_name/"), tok)
		assert.Equal(t, http.StatusBadRequest, resp.status)
		code, _, _ := resp.errorCode(t)
		assert.Equal(t, "BadParameter", code)
	})
	t.Run("maxresults out of range", func(t *testing.T) {
		resp := env.get(t, kvURL(kvTestVault, "/secrets/s/versions")+"&maxresults=26", tok)
		assert.Equal(t, http.StatusBadRequest, resp.status)
	})
	t.Run("write method", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPut, kvURL(kvTestVault, "/secrets/s"), strings.NewReader(`{"value":"x"}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := env.client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	})
	t.Run("unknown vault", func(t *testing.T) {
		resp := env.get(t, kvURL("kv-nowhere", "/secrets/s/"), tok)
		assert.Equal(t, http.StatusMisdirectedRequest, resp.status)
		assert.Equal(t, 1, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: "kv-nowhere", Status: http.StatusMisdirectedRequest}))
	})
	t.Run("vault of another cloud", func(t *testing.T) {
		require.NoError(t, env.e.CreateVault("kv-gov-only", VaultOptions{Cloud: "AzureUSGovernmentCloud"}))
		resp := env.get(t, kvURL("kv-gov-only", "/secrets/s/"), tok)
		assert.Equal(t, http.StatusMisdirectedRequest, resp.status)
	})
}

func TestKeyVaultDisabledVersion(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	tok := env.token(t, env.app, "", time.Hour)
	v1, err := env.e.SetSecret(kvTestVault, "rotating", "first", SecretOptions{})
	require.NoError(t, err)
	v2, err := env.e.SetSecret(kvTestVault, "rotating", "second", SecretOptions{})
	require.NoError(t, err)
	disabled := false
	v3, err := env.e.SetSecret(kvTestVault, "rotating", "third", SecretOptions{Enabled: &disabled})
	require.NoError(t, err)
	require.NoError(t, env.e.DisableVersion(kvTestVault, KindSecrets, "rotating", v1))

	for _, ver := range []string{v1, v3, ""} {
		resp := env.get(t, kvURL(kvTestVault, "/secrets/rotating/"+ver), tok)
		require.Equal(t, http.StatusForbidden, resp.status, "version %q", ver)
		code, msg, inner := resp.errorCode(t)
		assert.Equal(t, "Forbidden", code)
		assert.Equal(t, "Operation get is not allowed on a disabled secret.", msg)
		assert.Equal(t, "SecretDisabled", inner)
	}
	resp := env.get(t, kvURL(kvTestVault, "/secrets/rotating/"+v2), tok)
	require.Equal(t, http.StatusOK, resp.status)
	assert.Equal(t, "second", resp.json(t)["value"])

	// The listing shows every version with its state.
	resp = env.get(t, kvURL(kvTestVault, "/secrets/rotating/versions"), tok)
	require.Equal(t, http.StatusOK, resp.status)
	enabled := map[string]bool{}
	for _, it := range resp.json(t)["value"].([]any) {
		m := it.(map[string]any)
		id := m["id"].(string)
		enabled[id[strings.LastIndex(id, "/")+1:]] = m["attributes"].(map[string]any)["enabled"].(bool)
	}
	assert.Equal(t, map[string]bool{v1: false, v2: true, v3: false}, enabled)

	// Keys and certificates: a disabled version is still returned, marked.
	kv, err := env.e.CreateKey(kvTestVault, "signing", KeyOptions{Type: "EC"})
	require.NoError(t, err)
	require.NoError(t, env.e.DisableVersion(kvTestVault, KindKeys, "signing", ""))
	resp = env.get(t, kvURL(kvTestVault, "/keys/signing/"+kv), tok)
	require.Equal(t, http.StatusOK, resp.status)
	assert.Equal(t, false, resp.json(t)["attributes"].(map[string]any)["enabled"])

	// Disabling a certificate disables its secret too.
	_, err = env.e.CreateCertificate(kvTestVault, "web", CertificateOptions{KeyType: "EC"})
	require.NoError(t, err)
	require.NoError(t, env.e.DisableVersion(kvTestVault, KindCertificates, "web", ""))
	assert.Equal(t, http.StatusOK, env.get(t, kvURL(kvTestVault, "/certificates/web/"), tok).status)
	assert.Equal(t, http.StatusForbidden, env.get(t, kvURL(kvTestVault, "/secrets/web/"), tok).status)

	assert.ErrorIs(t, env.e.DisableVersion(kvTestVault, KindSecrets, "rotating", "ffffffffffffffffffffffffffffffff"), ErrObjectNotFound)
	assert.Error(t, env.e.DisableVersion(kvTestVault, "blobs", "rotating", ""))
}

func TestKeyVaultVersionsPaging(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	tok := env.token(t, env.app, "", time.Hour)
	var want []string
	for i := 0; i < 7; i++ {
		v, err := env.e.SetSecret(kvTestVault, "paged", "value-"+strconv.Itoa(i), SecretOptions{})
		require.NoError(t, err)
		require.Regexp(t, `^[0-9a-f]{32}$`, v)
		want = append(want, v)
	}

	var got []string
	next := kvURL(kvTestVault, "/secrets/paged/versions") + "&maxresults=3"
	pages := 0
	for next != "" {
		resp := env.get(t, next, tok)
		require.Equal(t, http.StatusOK, resp.status, "body %s", resp.body)
		pages++
		var page struct {
			Value []struct {
				ID         string         `json:"id"`
				Value      *string        `json:"value"`
				Attributes map[string]any `json:"attributes"`
			} `json:"value"`
			NextLink *string `json:"nextLink"`
		}
		require.NoError(t, json.Unmarshal(resp.body, &page))
		require.LessOrEqual(t, len(page.Value), 3)
		for _, it := range page.Value {
			assert.Nil(t, it.Value, "a listing never carries values")
			assert.True(t, strings.HasPrefix(it.ID, "https://kv-test.vault.azure.net/secrets/paged/"), it.ID)
			got = append(got, it.ID[strings.LastIndex(it.ID, "/")+1:])
		}
		next = ""
		if page.NextLink != nil {
			u, err := url.Parse(*page.NextLink)
			require.NoError(t, err)
			assert.Equal(t, "kv-test.vault.azure.net", u.Host)
			assert.Equal(t, "/secrets/paged/versions", u.Path)
			assert.Equal(t, "7.6", u.Query().Get("api-version"))
			assert.Equal(t, "3", u.Query().Get("maxresults"))
			assert.NotEmpty(t, u.Query().Get("$skiptoken"))
			next = *page.NextLink
		}
	}
	assert.Equal(t, 3, pages)
	// Azure orders versions by ID, not by creation.
	sort.Strings(want)
	assert.Equal(t, want, got)

	t.Run("vault page size", func(t *testing.T) {
		require.NoError(t, env.e.CreateVault("kv-small-pages", VaultOptions{TenantID: kvTestTenant, PageSize: 2}))
		require.NoError(t, env.e.Grant("kv-small-pages", env.app.ObjectID))
		for i := 0; i < 3; i++ {
			_, err := env.e.SetSecret("kv-small-pages", "s", "v", SecretOptions{})
			require.NoError(t, err)
		}
		resp := env.get(t, kvURL("kv-small-pages", "/secrets/s/versions"), tok)
		m := resp.json(t)
		assert.Len(t, m["value"], 2)
		assert.Contains(t, m["nextLink"], "maxresults=2")
	})
	t.Run("unknown name lists nothing", func(t *testing.T) {
		resp := env.get(t, kvURL(kvTestVault, "/secrets/never-set/versions"), tok)
		require.Equal(t, http.StatusOK, resp.status)
		assert.JSONEq(t, `{"value":[],"nextLink":null}`, string(resp.body))
	})
	t.Run("collection", func(t *testing.T) {
		_, err := env.e.SetSecret(kvTestVault, "another", "v", SecretOptions{})
		require.NoError(t, err)
		resp := env.get(t, kvURL(kvTestVault, "/secrets"), tok)
		require.Equal(t, http.StatusOK, resp.status)
		var ids []string
		for _, it := range resp.json(t)["value"].([]any) {
			ids = append(ids, it.(map[string]any)["id"].(string))
		}
		assert.Equal(t, []string{"https://kv-test.vault.azure.net/secrets/another", "https://kv-test.vault.azure.net/secrets/paged"}, ids)
	})
}

func TestKeyVaultThrottling(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	_, err := env.e.SetSecret(kvTestVault, "hot", "v", SecretOptions{})
	require.NoError(t, err)
	require.NoError(t, env.e.SetThrottle(kvTestVault, 3, 2*time.Second))
	tok := env.token(t, env.app, "", time.Hour)
	u := kvURL(kvTestVault, "/secrets/hot/")

	// Challenges (no token) do not count.
	for i := 0; i < 5; i++ {
		require.Equal(t, http.StatusUnauthorized, env.get(t, u, "").status)
	}
	for i := 0; i < 3; i++ {
		require.Equal(t, http.StatusOK, env.get(t, u, tok).status, "request %d", i)
	}
	resp := env.get(t, u, tok)
	require.Equal(t, http.StatusTooManyRequests, resp.status)
	code, msg, _ := resp.errorCode(t)
	assert.Equal(t, "Throttled", code)
	assert.True(t, strings.HasPrefix(msg, "Request was not processed because too many requests were received. Reason: "), msg)
	retry, err := strconv.Atoi(resp.header.Get("Retry-After"))
	require.NoError(t, err)
	assert.True(t, retry >= 1 && retry <= 2, "Retry-After %d", retry)

	time.Sleep(time.Duration(retry) * time.Second)
	assert.Equal(t, http.StatusOK, env.get(t, u, tok).status)

	// Other vaults have their own budget.
	require.NoError(t, env.e.CreateVault("kv-cold", VaultOptions{TenantID: kvTestTenant, ThrottleLimit: 1, ThrottleWindow: time.Minute}))
	require.NoError(t, env.e.Grant("kv-cold", env.app.ObjectID))
	assert.Equal(t, http.StatusNotFound, env.get(t, kvURL("kv-cold", "/secrets/hot/"), tok).status)
	assert.Equal(t, http.StatusTooManyRequests, env.get(t, kvURL("kv-cold", "/secrets/hot/"), tok).status)
	assert.Equal(t, 2, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: kvTestVault, Status: http.StatusTooManyRequests})+
		env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: "kv-cold", Status: http.StatusTooManyRequests}))
}

func TestKeyVaultCaseInsensitiveNames(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	tok := env.token(t, env.app, "", time.Hour)
	ver, err := env.e.SetSecret(kvTestVault, "MySecret", "v1", SecretOptions{})
	require.NoError(t, err)
	_, err = env.e.SetSecret(kvTestVault, "MYSECRET", "v2", SecretOptions{})
	require.NoError(t, err)

	for _, p := range []string{"/secrets/mysecret/", "/secrets/MySecret", "/SECRETS/MYSECRET/" + strings.ToUpper(ver)} {
		resp := env.get(t, "https://KV-TEST.vault.azure.net"+p+"?api-version=7.6", tok)
		require.Equal(t, http.StatusOK, resp.status, "path %s: %s", p, resp.body)
		id := resp.json(t)["id"].(string)
		assert.True(t, strings.HasPrefix(id, "https://kv-test.vault.azure.net/secrets/MySecret/"), id)
	}
	assert.Equal(t, 3, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: kvTestVault, Object: "secrets/mysecret", Status: http.StatusOK}))
}

func TestKeyVaultJSONShapes(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	tok := env.token(t, env.app, "", time.Hour)
	nbf := time.Now().Add(-time.Hour).Truncate(time.Second)
	exp := time.Now().Add(24 * time.Hour).Truncate(time.Second)

	t.Run("secret", func(t *testing.T) {
		ver, err := env.e.SetSecret(kvTestVault, "conn", "Server=db;Password=x", SecretOptions{
			ContentType: "text/plain", Tags: map[string]string{"team": "a"}, NotBefore: nbf, Expires: exp})
		require.NoError(t, err)
		m := env.get(t, kvURL(kvTestVault, "/secrets/conn/"), tok).json(t)
		assert.Equal(t, "Server=db;Password=x", m["value"])
		assert.Equal(t, "https://kv-test.vault.azure.net/secrets/conn/"+ver, m["id"])
		assert.Equal(t, "text/plain", m["contentType"])
		assert.Equal(t, map[string]any{"team": "a"}, m["tags"])
		assert.NotContains(t, m, "managed")
		assert.NotContains(t, m, "kid")
		attrs := m["attributes"].(map[string]any)
		assert.Equal(t, true, attrs["enabled"])
		assert.Equal(t, float64(nbf.Unix()), attrs["nbf"])
		assert.Equal(t, float64(exp.Unix()), attrs["exp"])
		assert.InDelta(t, float64(time.Now().Unix()), attrs["created"], 5)
		assert.InDelta(t, float64(time.Now().Unix()), attrs["updated"], 5)
		assert.Equal(t, "Recoverable+Purgeable", attrs["recoveryLevel"])
	})

	t.Run("keys", func(t *testing.T) {
		cases := []struct {
			opts      KeyOptions
			kty, crv  string
			coordSize int
		}{
			{KeyOptions{}, "RSA", "", 0},
			{KeyOptions{Type: "RSA-HSM", Size: 3072}, "RSA-HSM", "", 0},
			{KeyOptions{Type: "EC"}, "EC", "P-256", 32},
			{KeyOptions{Type: "EC-HSM", Curve: "P-384"}, "EC-HSM", "P-384", 48},
			{KeyOptions{Type: "EC", Curve: "P-521"}, "EC", "P-521", 66},
		}
		for i, tc := range cases {
			name := fmt.Sprintf("key-%d", i)
			ver, err := env.e.CreateKey(kvTestVault, name, tc.opts)
			require.NoError(t, err)
			m := env.get(t, kvURL(kvTestVault, "/keys/"+name+"/"+ver), tok).json(t)
			key := m["key"].(map[string]any)
			assert.Equal(t, "https://kv-test.vault.azure.net/keys/"+name+"/"+ver, key["kid"])
			assert.Equal(t, tc.kty, key["kty"])
			assert.NotEmpty(t, key["key_ops"])
			assert.Contains(t, m, "attributes")
			if tc.crv == "" {
				n := kvB64URL(t, key["n"])
				size := tc.opts.Size
				if size == 0 {
					size = 2048
				}
				assert.Len(t, n, size/8)
				assert.Equal(t, "AQAB", key["e"])
				assert.NotContains(t, key, "crv")
			} else {
				assert.Equal(t, tc.crv, key["crv"])
				assert.Len(t, kvB64URL(t, key["x"]), tc.coordSize)
				assert.Len(t, kvB64URL(t, key["y"]), tc.coordSize)
				assert.NotContains(t, key, "n")
			}
			for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
				assert.NotContains(t, key, private)
			}
		}
		_, err := env.e.CreateKey(kvTestVault, "bad", KeyOptions{Type: "oct"})
		assert.Error(t, err)
		_, err = env.e.CreateKey(kvTestVault, "bad", KeyOptions{Type: "EC", Curve: "P-256K"})
		assert.Error(t, err)
	})

	t.Run("certificate, its key and its secret", func(t *testing.T) {
		issued, err := env.e.CreateCertificate(kvTestVault, "tls", CertificateOptions{DNSNames: []string{"example.com"}})
		require.NoError(t, err)
		base := "https://kv-test.vault.azure.net/"
		ver := issued.Version

		c := env.get(t, kvURL(kvTestVault, "/certificates/tls/"), tok).json(t)
		assert.Equal(t, base+"certificates/tls/"+ver, c["id"])
		assert.Equal(t, base+"keys/tls/"+ver, c["kid"])
		assert.Equal(t, base+"secrets/tls/"+ver, c["sid"])
		cer, err := base64.StdEncoding.DecodeString(c["cer"].(string))
		require.NoError(t, err)
		assert.Equal(t, issued.Leaf.Raw, cer)
		sum := sha1.Sum(issued.Leaf.Raw)
		assert.Equal(t, base64.RawURLEncoding.EncodeToString(sum[:]), c["x5t"])
		attrs := c["attributes"].(map[string]any)
		assert.Equal(t, float64(issued.Leaf.NotAfter.Unix()), attrs["exp"])
		policy := c["policy"].(map[string]any)
		assert.Equal(t, "application/x-pkcs12", policy["secret_props"].(map[string]any)["contentType"])
		assert.Equal(t, "CN=tls", policy["x509_props"].(map[string]any)["subject"])

		s := env.get(t, kvURL(kvTestVault, "/secrets/tls/"+ver), tok).json(t)
		assert.Equal(t, true, s["managed"])
		assert.Equal(t, base+"keys/tls/"+ver, s["kid"])
		assert.Equal(t, "application/x-pkcs12", s["contentType"])
		assert.Equal(t, issued.SecretValue, s["value"])

		k := env.get(t, kvURL(kvTestVault, "/keys/tls/"), tok).json(t)
		assert.Equal(t, true, k["managed"])
		jwk := k["key"].(map[string]any)
		assert.Equal(t, "RSA", jwk["kty"])
		pub := issued.Leaf.PublicKey.(*rsa.PublicKey)
		assert.Equal(t, 0, new(big.Int).SetBytes(kvB64URL(t, jwk["n"])).Cmp(pub.N))

		// A certificate's key and secret names are taken.
		_, err = env.e.SetSecret(kvTestVault, "tls", "x", SecretOptions{})
		assert.Error(t, err)
		_, err = env.e.CreateCertificate(kvTestVault, "conn-plain", CertificateOptions{})
		require.NoError(t, err)
		_, err = env.e.SetSecret(kvTestVault, "plain", "x", SecretOptions{})
		require.NoError(t, err)
		_, err = env.e.CreateCertificate(kvTestVault, "plain", CertificateOptions{})
		assert.Error(t, err)

		// List items.
		items := env.get(t, kvURL(kvTestVault, "/certificates/tls/versions"), tok).json(t)["value"].([]any)
		require.Len(t, items, 1)
		item := items[0].(map[string]any)
		assert.Equal(t, base+"certificates/tls/"+ver, item["id"])
		assert.Equal(t, c["x5t"], item["x5t"])
		assert.NotContains(t, item, "cer")
		kitems := env.get(t, kvURL(kvTestVault, "/keys/tls/versions"), tok).json(t)["value"].([]any)
		require.Len(t, kitems, 1)
		assert.Equal(t, base+"keys/tls/"+ver, kitems[0].(map[string]any)["kid"])
		sitems := env.get(t, kvURL(kvTestVault, "/secrets/tls/versions"), tok).json(t)["value"].([]any)
		require.Len(t, sitems, 1)
		assert.Equal(t, true, sitems[0].(map[string]any)["managed"])
		assert.Equal(t, "application/x-pkcs12", sitems[0].(map[string]any)["contentType"])
	})

	t.Run("EC certificate key", func(t *testing.T) {
		issued, err := env.e.CreateCertificate(kvTestVault, "ec-tls", CertificateOptions{KeyType: "EC", ContentType: ContentTypePEM})
		require.NoError(t, err)
		k := env.get(t, kvURL(kvTestVault, "/keys/ec-tls/"), tok).json(t)["key"].(map[string]any)
		assert.Equal(t, "EC", k["kty"])
		assert.Equal(t, "P-256", k["crv"])
		pub := issued.Leaf.PublicKey.(*ecdsa.PublicKey)
		raw, err := pub.Bytes()
		require.NoError(t, err)
		assert.Equal(t, raw[1:33], kvB64URL(t, k["x"]))
	})
}

func kvB64URL(t *testing.T, v any) []byte {
	t.Helper()
	s, ok := v.(string)
	require.True(t, ok, "%v is not a string", v)
	assert.NotContains(t, s, "=")
	b, err := base64.RawURLEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

func TestKeyVaultSovereignClouds(t *testing.T) {
	env := newKVEnv(t)
	cases := []struct{ cloud, host, resource string }{
		{"AzureUSGovernmentCloud", "kv-gov.vault.usgovcloudapi.net", "https://vault.usgovcloudapi.net"},
		{"AzureChinaCloud", "kv-cn.vault.azure.cn", "https://vault.azure.cn"},
	}
	for _, tc := range cases {
		t.Run(tc.cloud, func(t *testing.T) {
			vault := strings.Split(tc.host, ".")[0]
			require.NoError(t, env.e.CreateVault(vault, VaultOptions{Cloud: tc.cloud, TenantID: kvTestTenant}))
			require.NoError(t, env.e.Grant(vault, env.app.ObjectID))
			ver, err := env.e.SetSecret(vault, "s", "sovereign", SecretOptions{})
			require.NoError(t, err)
			resp := env.get(t, "https://"+tc.host+"/secrets/s/?api-version=7.6", env.token(t, env.app, tc.resource, time.Hour))
			require.Equal(t, http.StatusOK, resp.status, "body %s", resp.body)
			m := resp.json(t)
			assert.Equal(t, "sovereign", m["value"])
			assert.Equal(t, "https://"+tc.host+"/secrets/s/"+ver, m["id"])
			assert.Equal(t, 1, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: vault, Status: http.StatusOK}))
		})
	}
	assert.Error(t, env.e.CreateVault("kv-mars", VaultOptions{Cloud: "AzureMarsCloud"}))
}

func TestKeyVaultRequestLog(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	_, err := env.e.SetSecret(kvTestVault, "Logged", kvPlantedSecret, SecretOptions{})
	require.NoError(t, err)
	tok := env.token(t, env.app, "", time.Hour)
	start := time.Now()
	env.get(t, kvURL(kvTestVault, "/secrets/Logged/"), "")
	env.get(t, kvURL(kvTestVault, "/secrets/Logged/"), tok)
	env.get(t, kvURL(kvTestVault, "/secrets/Logged/versions"), tok)

	reqs := env.e.Requests(RequestFilter{Service: ServiceKeyVault, Vault: kvTestVault})
	require.Len(t, reqs, 3)
	assert.Equal(t, Request{Service: ServiceKeyVault, Host: "kv-test.vault.azure.net", Method: "GET", Path: "/secrets/Logged/",
		Status: http.StatusUnauthorized, Vault: kvTestVault, Object: "secrets/logged"}, kvWithoutTime(reqs[0]))
	assert.Equal(t, Request{Service: ServiceKeyVault, Host: "kv-test.vault.azure.net", Method: "GET", Path: "/secrets/Logged/",
		Status: http.StatusOK, Vault: kvTestVault, Object: "secrets/logged", Identity: env.app.ClientID}, kvWithoutTime(reqs[1]))
	assert.Equal(t, "/secrets/Logged/versions", reqs[2].Path)
	assert.False(t, reqs[0].Time.Before(start))
	assert.Equal(t, 2, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Object: "secrets/logged", Identity: env.app.ClientID}))

	env.mu.Lock()
	logs := strings.Join(env.logs, "\n")
	env.mu.Unlock()
	assert.Contains(t, logs, "kv-test.vault.azure.net/secrets/Logged/")
	all := fmt.Sprintf("%+v\n%s", env.e.Requests(RequestFilter{}), logs)
	for _, planted := range []string{kvPlantedSecret, tok, kvPlantedClientSc} {
		assert.NotContains(t, all, planted)
	}
}

func kvWithoutTime(r Request) Request {
	r.Time = time.Time{}
	return r
}

func TestCreateVaultValidation(t *testing.T) {
	e, err := Start(Options{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	cases := []struct {
		name string
		ok   bool
	}{
		{"abc", true},
		{"My-Vault-01", true},
		{"a23456789012345678901234", true},
		{"ab", false},
		{"a234567890123456789012345", false},
		{"1vault", false},
		{"vault-", false},
		{"va--ult", false},
		{"va_ult", false},
		{"vault.sub", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := e.CreateVault(tc.name, VaultOptions{})
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err)
			}
		})
	}
	assert.Error(t, e.CreateVault("MY-VAULT-01", VaultOptions{}), "names are case-insensitive")
	assert.Error(t, e.CreateVault("pagesize", VaultOptions{PageSize: 26}))
	_, err = e.SetSecret("abc", "too-big", strings.Repeat("x", 25*1024+1), SecretOptions{})
	assert.Error(t, err)
	_, err = e.SetSecret("abc", "bad name", "x", SecretOptions{})
	assert.Error(t, err)
	_, err = e.SetSecret("nope-vault", "s", "x", SecretOptions{})
	assert.ErrorIs(t, err, ErrVaultNotFound)
}

// Key Vault faults apply to every vault, before authentication, for Count
// requests or until cleared.
func TestKeyVaultFaults(t *testing.T) {
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	_, err := env.e.SetSecret(kvTestVault, "s", "v", SecretOptions{})
	require.NoError(t, err)
	tok := env.token(t, env.app, "", time.Hour)
	u := kvURL(kvTestVault, "/secrets/s/")

	require.NoError(t, env.e.InjectVaultFault(Fault{Status: http.StatusServiceUnavailable, Count: 2}))
	for _, token := range []string{"", tok} {
		resp := env.get(t, u, token)
		assert.Equal(t, http.StatusServiceUnavailable, resp.status)
		code, _, _ := resp.errorCode(t)
		assert.Equal(t, "ServiceUnavailable", code)
	}
	assert.Equal(t, http.StatusOK, env.get(t, u, tok).status, "the fault ends after Count requests")

	require.NoError(t, env.e.InjectVaultFault(Fault{Status: http.StatusInternalServerError}))
	assert.Equal(t, http.StatusInternalServerError, env.get(t, u, tok).status)
	assert.Equal(t, http.StatusInternalServerError, env.get(t, u, tok).status)
	env.e.ClearVaultFaults()
	assert.Equal(t, http.StatusOK, env.get(t, u, tok).status)

	// A dropped request gets no answer at all, and is recorded as 444
	// (net/http sends a GET again once on a broken kept-alive connection:
	// the fault lasts until cleared).
	require.NoError(t, env.e.InjectVaultFault(Fault{Drop: true}))
	req, err := http.NewRequest(http.MethodGet, u, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := env.client.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	require.Error(t, err, "a dropped request has no response")
	assert.Positive(t, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Status: statusDropped}))
	env.e.ClearVaultFaults()
	assert.Equal(t, http.StatusOK, env.get(t, u, tok).status, "the connection pool recovers")

	assert.Error(t, env.e.InjectVaultFault(Fault{}))
	assert.Error(t, env.e.InjectVaultFault(Fault{Drop: true, Status: http.StatusInternalServerError}))
}
