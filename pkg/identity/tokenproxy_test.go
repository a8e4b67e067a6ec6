package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The expected names were computed apart from this code, with Python's
// hashlib.sha256 and base64.b32hexencode.
func TestSNIName(t *testing.T) {
	for id, want := range map[string]string{
		"kvnode-e2e-cluster": "ao66vp0nd3sjj53vdvhe9jvutuohbfrbebhrjbtm3b6vpclpotcdg.ests.aks",
		"0123456789abcdef":   "arpmu42rfss2aagac5mnjjq7ginogh09jprkj0g82ua1k7u95bc3g.ests.aks",
	} {
		got := SNIName(id)
		assert.Equal(t, want, got, id)
		label, _, _ := strings.Cut(got, ".")
		assert.LessOrEqual(t, len(label), 63, "a DNS label")
	}
}

func TestClusterID(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sans  []string
		want  string
		error string
	}{
		{name: "AKS API server", sans: []string{"kubernetes", "kubernetes.default.svc", "hcp-kubernetes.65f1c2d3e4.svc.cluster.local", "demo-dns-1a2b.hcp.westeurope.azmk8s.io"}, want: "65f1c2d3e4"},
		{name: "not AKS", sans: []string{"kubernetes.default.svc.cluster.local"}, error: "no SAN hcp-kubernetes.<cluster-id>.svc.cluster.local"},
		{name: "empty ID", sans: []string{"hcp-kubernetes..svc.cluster.local"}, error: "no SAN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ClusterID(&x509.Certificate{DNSNames: tc.sans})
			if tc.error != "" {
				require.ErrorContains(t, err, tc.error)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, id)
		})
	}
}

func TestDiscoverSNIName(t *testing.T) {
	ca := newTestCA(t)
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "kubernetes.default.svc", "hcp-kubernetes.kvnode-e2e-cluster.svc.cluster.local")}}
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")

	name, err := DiscoverSNIName(context.Background(), addr, &tls.Config{RootCAs: ca.pool(), ServerName: "kubernetes.default.svc"})
	require.NoError(t, err)
	assert.Equal(t, SNIName("kvnode-e2e-cluster"), name)

	// The API server must be verified.
	_, err = DiscoverSNIName(context.Background(), addr, &tls.Config{ServerName: "kubernetes.default.svc"})
	require.ErrorContains(t, err, "certificate")
}

func TestParseTokenProxyURL(t *testing.T) {
	u, err := ParseTokenProxyURL("https://kubernetes.default.svc.cluster.local")
	require.NoError(t, err)
	assert.Equal(t, "/", u.Path)
	for raw, problem := range map[string]string{
		"http://proxy.test":              "must use https",
		"https://user:pw@proxy.test":     "user info",
		"https://proxy.test/?x=1":        "query",
		"https://proxy.test/#frag":       "fragment",
		"https:///path":                  "no host",
		"kubernetes.default.svc:443/abc": "",
	} {
		_, err := ParseTokenProxyURL(raw)
		require.Error(t, err, raw)
		assert.ErrorContains(t, err, problem, raw)
	}
}

// proxySeen is what a token proxy sees of one request.
type proxySeen struct {
	Method, Host, Path, Query, SNI string
	Form                           map[string]string
}

// startTestProxy serves what a token proxy serves the SDK (OpenID
// configuration and the token endpoint, on the Host the client names) over
// TLS for sni, and records each request.
func startTestProxy(t *testing.T, ca *testCA, sni string) (*httptest.Server, func() []proxySeen) {
	t.Helper()
	var (
		mu   sync.Mutex
		seen []proxySeen
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := proxySeen{Method: r.Method, Host: r.Host, Path: r.URL.Path, Query: r.URL.RawQuery, SNI: r.TLS.ServerName}
		if r.Method == http.MethodPost {
			require.NoError(t, r.ParseForm())
			s.Form = map[string]string{}
			for k := range r.PostForm {
				if k != "client_info" {
					s.Form[k] = r.PostForm.Get(k)
				}
			}
		}
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		tenant, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/proxy/"), "/")
		base := "https://" + r.Host + "/" + tenant
		switch {
		case strings.HasSuffix(r.URL.Path, "/v2.0/.well-known/openid-configuration"):
			_ = json.NewEncoder(w).Encode(map[string]any{
				"issuer": base + "/v2.0", "token_endpoint": base + "/oauth2/v2.0/token",
				"authorization_endpoint": base + "/oauth2/v2.0/authorize",
			})
		case strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token"):
			_ = json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "expires_in": 3600, "access_token": "proxied-access-token"})
		default:
			http.NotFound(w, r)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, sni)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, func() []proxySeen {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// TestProxyTransportMatchesSDK runs the Azure SDK's own token proxy
// (WorkloadIdentityCredentialOptions.EnableAzureProxy, configured by its
// environment variables) and kvnode's against the same proxy and requires
// that the proxy sees the same requests from both.
func TestProxyTransportMatchesSDK(t *testing.T) {
	const (
		tenant    = "72f988bf-86f1-41af-91ab-2d7cd011db47"
		clientID  = "0b5d6f0e-7c5e-4c8a-9f7e-2a1c3b4d5e6f"
		assertion = "service-account-token-for-the-binding-audience"
		sni       = "ao66vp0nd3sjj53vdvhe9jvutuohbfrbebhrjbtm3b6vpclpotcdg.ests.aks"
	)
	ca := newTestCA(t)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(caFile, ca.pem, 0o600))
	scope := policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}}

	sdkSrv, sdkSeen := startTestProxy(t, ca, sni)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(assertion), 0o600))
	t.Setenv(EnvTokenProxy, sdkSrv.URL+"/proxy")
	t.Setenv(EnvSNIName, sni)
	t.Setenv(EnvCAFile, caFile)
	sdk, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientID: clientID, TenantID: tenant, TokenFilePath: tokenFile,
		EnableAzureProxy: true, DisableInstanceDiscovery: true,
	})
	require.NoError(t, err)
	tok, err := sdk.GetToken(context.Background(), scope)
	require.NoError(t, err)
	require.Equal(t, "proxied-access-token", tok.Token)

	ourSrv, ourSeen := startTestProxy(t, ca, sni)
	creds := NewCredentials(Options{TokenProxy: &TokenProxy{URL: ourSrv.URL + "/proxy", SNIName: sni, CAFile: caFile}})
	cred, _, err := creds.Credential(Request{Mode: IdentityBinding, AuthorityHost: "https://login.microsoftonline.com/",
		TenantID: tenant, ClientID: clientID, ServiceAccountToken: assertion, Namespace: "apps", ServiceAccount: "web"})
	require.NoError(t, err)
	tok, err = cred.GetToken(context.Background(), scope)
	require.NoError(t, err)
	require.Equal(t, "proxied-access-token", tok.Token)

	want := sdkSeen()
	require.NotEmpty(t, want)
	assert.Equal(t, want, ourSeen())
	last := want[len(want)-1]
	assert.Equal(t, "login.microsoftonline.com", last.Host)
	assert.Equal(t, "/proxy/"+tenant+"/oauth2/v2.0/token", last.Path)
	assert.Equal(t, sni, last.SNI)
	assert.Equal(t, assertion, last.Form["client_assertion"])
}

func TestIdentityBindingRefusals(t *testing.T) {
	req := Request{Mode: IdentityBinding, TenantID: "t", ClientID: "c", ServiceAccountToken: "tok", Namespace: "apps", ServiceAccount: "web"}

	_, _, err := NewCredentials(Options{}).Credential(req)
	require.ErrorIs(t, err, ErrTokenProxyUnconfigured)
	var pe *ProxyError
	require.ErrorAs(t, err, &pe)
	assert.ErrorContains(t, err, "--token-proxy-url")

	_, _, err = NewCredentials(Options{TokenProxy: &TokenProxy{URL: "http://proxy.test"}}).Credential(req)
	require.ErrorAs(t, err, &pe)
	assert.ErrorContains(t, err, "must use https")

	failing := &TokenProxy{URL: "https://proxy.test", ResolveSNI: func(context.Context) (string, error) {
		return "", errors.New("the API server certificate has no SAN")
	}}
	_, _, err = NewCredentials(Options{TokenProxy: failing}).Credential(req)
	require.ErrorAs(t, err, &pe)
	assert.ErrorContains(t, err, "derive the SNI name")

	noToken := req
	noToken.ServiceAccountToken = ""
	_, _, err = NewCredentials(Options{TokenProxy: &TokenProxy{URL: "https://proxy.test", SNIName: "x"}}).Credential(noToken)
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Contains(t, fe.Problem, BindingAudience)
}

// TestProxyTransportReloadsCA replaces the CA file and expects the next
// request to be verified with the new CA.
func TestProxyTransportReloadsCA(t *testing.T) {
	const sni = "proxy.ests.aks"
	oldCA, newCA := newTestCA(t), newTestCA(t)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(caFile, oldCA.pem, 0o600))
	srv, _ := startTestProxy(t, newCA, sni)

	p, err := newProxyTransport(TokenProxy{URL: srv.URL, SNIName: sni, CAFile: caFile})
	require.NoError(t, err)
	get := func() error {
		req, err := http.NewRequest(http.MethodGet, "https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration", nil)
		require.NoError(t, err)
		resp, err := p.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	require.ErrorContains(t, get(), "certificate")
	require.NoError(t, os.WriteFile(caFile, newCA.pem, 0o600))
	require.NoError(t, get())
}

// testCA signs test server certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kvnode test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (c *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

func (c *testCA) leaf(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
