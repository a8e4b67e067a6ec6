package emulator

import (
	"crypto/rsa"
	"encoding/base64"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/testenv"
)

// These tests run the real Azure SDK (test/sdkclient: azidentity with a client
// secret, azsecrets, azkeys, azcertificates, default options) against the
// emulator, in testenv's loopback-only network namespace.

// kvSDK runs sdkclient as env.app with a client secret.
func (env *kvEnv) kvSDK(t *testing.T, op string, args ...string) testenv.SDKResult {
	t.Helper()
	full := append([]string{"-cred", "client-secret", "-tenant", env.app.TenantID, "-client-id", env.app.ClientID,
		"-secret", env.app.Secret, op, "-vault", "https://" + kvTestVault + ".vault.azure.net"}, args...)
	return testenv.SDKClient(t, env.e.Env(), full...)
}

func TestSDKKeyVaultSecretGet(t *testing.T) {
	testenv.RequireNetns(t)
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	v1, err := env.e.SetSecret(kvTestVault, "db-password", "first-value", SecretOptions{ContentType: "text/plain"})
	require.NoError(t, err)
	v2, err := env.e.SetSecret(kvTestVault, "db-password", "second-value", SecretOptions{Tags: map[string]string{"rotated": "yes"}})
	require.NoError(t, err)
	env.e.ResetRequests()

	var latest struct {
		Secret struct {
			Value      string            `json:"value"`
			ID         string            `json:"id"`
			Tags       map[string]string `json:"tags"`
			Attributes struct {
				Enabled bool `json:"enabled"`
			} `json:"attributes"`
		} `json:"secret"`
	}
	env.kvSDK(t, "secret-get", "-name", "db-password").Decode(t, &latest)
	assert.Equal(t, "second-value", latest.Secret.Value)
	assert.Equal(t, "https://kv-test.vault.azure.net/secrets/db-password/"+v2, latest.Secret.ID)
	assert.Equal(t, map[string]string{"rotated": "yes"}, latest.Secret.Tags)
	assert.True(t, latest.Secret.Attributes.Enabled)

	// The challenge flow: exactly one 401 without a token, then the GET.
	reqs := env.e.Requests(RequestFilter{Service: ServiceKeyVault, Vault: kvTestVault})
	require.Len(t, reqs, 2)
	assert.Equal(t, http.StatusUnauthorized, reqs[0].Status)
	assert.Empty(t, reqs[0].Identity)
	assert.Equal(t, http.StatusOK, reqs[1].Status)
	assert.Equal(t, env.app.ClientID, reqs[1].Identity)
	assert.Equal(t, "secrets/db-password", reqs[1].Object)
	assert.Equal(t, "/secrets/db-password/", reqs[1].Path)

	var old struct {
		Secret struct {
			Value       string `json:"value"`
			ContentType string `json:"contentType"`
		} `json:"secret"`
	}
	env.kvSDK(t, "secret-get", "-name", "DB-PASSWORD", "-version", v1).Decode(t, &old)
	assert.Equal(t, "first-value", old.Secret.Value)
	assert.Equal(t, "text/plain", old.Secret.ContentType)
}

func TestSDKKeyVaultSecretVersionsPaging(t *testing.T) {
	testenv.RequireNetns(t)
	env := newKVEnv(t)
	require.NoError(t, env.e.CreateVault("kv-paged", VaultOptions{TenantID: kvTestTenant, PageSize: 2}))
	require.NoError(t, env.e.Grant("kv-paged", env.app.ObjectID))
	want := map[string]bool{}
	for i := 0; i < 5; i++ {
		v, err := env.e.SetSecret("kv-paged", "rotating", "value", SecretOptions{})
		require.NoError(t, err)
		want["https://kv-paged.vault.azure.net/secrets/rotating/"+v] = true
	}
	env.e.ResetRequests()
	args := []string{"-cred", "client-secret", "-tenant", env.app.TenantID, "-client-id", env.app.ClientID, "-secret", env.app.Secret,
		"secret-versions", "-vault", "https://kv-paged.vault.azure.net", "-name", "rotating"}
	var out struct {
		Versions []struct {
			ID string `json:"id"`
		} `json:"versions"`
		Pages int `json:"pages"`
	}
	testenv.SDKClient(t, env.e.Env(), args...).Decode(t, &out)
	assert.Equal(t, 3, out.Pages)
	got := map[string]bool{}
	for _, v := range out.Versions {
		got[v.ID] = true
	}
	assert.Equal(t, want, got)
	// One challenge, then three pages, the later ones from nextLink.
	assert.Equal(t, 1, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: "kv-paged", Status: http.StatusUnauthorized}))
	assert.Equal(t, 3, env.e.CountRequests(RequestFilter{Service: ServiceKeyVault, Vault: "kv-paged", Status: http.StatusOK, Object: "secrets/rotating"}))
}

func TestSDKKeyVaultKeyGet(t *testing.T) {
	testenv.RequireNetns(t)
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID, "keys/get"))
	cases := []struct {
		name string
		opts KeyOptions
		kty  string
		crv  string
	}{
		{"rsa", KeyOptions{Type: "RSA"}, "RSA", ""},
		{"rsa-hsm", KeyOptions{Type: "RSA-HSM"}, "RSA-HSM", ""},
		{"ec", KeyOptions{Type: "EC", Curve: "P-384"}, "EC", "P-384"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ver, err := env.e.CreateKey(kvTestVault, tc.name, tc.opts)
			require.NoError(t, err)
			var out struct {
				Key struct {
					Key struct {
						KID string `json:"kid"`
						Kty string `json:"kty"`
						Crv string `json:"crv"`
						N   string `json:"n"`
						X   string `json:"x"`
					} `json:"key"`
				} `json:"key"`
			}
			env.kvSDK(t, "key-get", "-name", tc.name).Decode(t, &out)
			assert.Equal(t, "https://kv-test.vault.azure.net/keys/"+tc.name+"/"+ver, out.Key.Key.KID)
			assert.Equal(t, tc.kty, out.Key.Key.Kty)
			assert.Equal(t, tc.crv, out.Key.Key.Crv)
			if tc.crv == "" {
				assert.NotEmpty(t, out.Key.Key.N)
			} else {
				assert.NotEmpty(t, out.Key.Key.X)
			}
		})
	}
}

func TestSDKKeyVaultCertificateGet(t *testing.T) {
	testenv.RequireNetns(t)
	env := newKVEnv(t)
	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID))
	issued, err := env.e.CreateCertificate(kvTestVault, "web", CertificateOptions{DNSNames: []string{"web.example.com"}})
	require.NoError(t, err)

	var cert struct {
		Certificate struct {
			ID  string `json:"id"`
			KID string `json:"kid"`
			SID string `json:"sid"`
			CER string `json:"cer"`
		} `json:"certificate"`
	}
	env.kvSDK(t, "cert-get", "-name", "web").Decode(t, &cert)
	assert.Equal(t, "https://kv-test.vault.azure.net/certificates/web/"+issued.Version, cert.Certificate.ID)
	assert.Equal(t, "https://kv-test.vault.azure.net/secrets/web/"+issued.Version, cert.Certificate.SID)
	der, err := base64.StdEncoding.DecodeString(cert.Certificate.CER)
	require.NoError(t, err)
	assert.Equal(t, issued.Leaf.Raw, der)

	// The certificate's secret and key, as a driver fetches them.
	var secret struct {
		Secret struct {
			Value       string `json:"value"`
			ContentType string `json:"contentType"`
			KID         string `json:"kid"`
			Managed     bool   `json:"managed"`
		} `json:"secret"`
	}
	env.kvSDK(t, "secret-get", "-name", "web").Decode(t, &secret)
	assert.Equal(t, issued.SecretValue, secret.Secret.Value)
	assert.Equal(t, ContentTypePKCS12, secret.Secret.ContentType)
	assert.True(t, secret.Secret.Managed)
	assert.Equal(t, cert.Certificate.KID, secret.Secret.KID)

	var key struct {
		Key struct {
			Key struct {
				N string `json:"n"`
			} `json:"key"`
		} `json:"key"`
	}
	env.kvSDK(t, "key-get", "-name", "web").Decode(t, &key)
	n, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(key.Key.Key.N, "="))
	require.NoError(t, err)
	assert.Equal(t, 0, new(big.Int).SetBytes(n).Cmp(issued.Leaf.PublicKey.(*rsa.PublicKey).N))
}

func TestSDKKeyVaultErrors(t *testing.T) {
	testenv.RequireNetns(t)
	env := newKVEnv(t)
	_, err := env.e.SetSecret(kvTestVault, "guarded", kvPlantedSecret, SecretOptions{})
	require.NoError(t, err)

	res := env.kvSDK(t, "secret-get", "-name", "guarded")
	require.NotNil(t, res.Err, "stdout %s", res.Stdout)
	assert.Equal(t, "response", res.Err.Kind)
	assert.Equal(t, http.StatusForbidden, res.Err.Status)
	assert.Equal(t, "Forbidden", res.Err.Code)
	assert.NotContains(t, string(res.Stdout)+string(res.Stderr), kvPlantedSecret)

	require.NoError(t, env.e.Grant(kvTestVault, env.app.ObjectID, "secrets/get", "keys/get", "certificates/get"))
	for _, tc := range []struct{ op, code string }{
		{"secret-get", "SecretNotFound"},
		{"key-get", "KeyNotFound"},
		{"cert-get", "CertificateNotFound"},
	} {
		res := env.kvSDK(t, tc.op, "-name", "missing")
		require.NotNil(t, res.Err, "%s: stdout %s", tc.op, res.Stdout)
		assert.Equal(t, http.StatusNotFound, res.Err.Status, tc.op)
		assert.Equal(t, tc.code, res.Err.Code, tc.op)
	}

	disabled := false
	_, err = env.e.SetSecret(kvTestVault, "off", "x", SecretOptions{Enabled: &disabled})
	require.NoError(t, err)
	res = env.kvSDK(t, "secret-get", "-name", "off")
	require.NotNil(t, res.Err)
	assert.Equal(t, http.StatusForbidden, res.Err.Status)
	assert.Contains(t, res.Err.Message, "Operation get is not allowed on a disabled secret.")
}
