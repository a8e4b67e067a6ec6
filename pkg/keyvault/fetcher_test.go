package keyvault

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

// The integration tests run the real Azure SDK against the project's Azure
// emulator, reached as a forward proxy with its CA trusted: the same
// configuration a user behind a corporate proxy passes. testenv runs them in
// a network namespace with only loopback.
func TestMain(m *testing.M) { testenv.Main(m) }

const (
	testTenant = "7d2a1c54-3e4f-4b6a-9c8d-0e1f2a3b4c5d"
	testVault  = "kv-fetch"
	// plantedClientSecret must never appear in an error either.
	plantedClientSecret = "planted-client-secret-3f7a"
)

// fetchEnv is an emulator with one vault and one application.
type fetchEnv struct {
	e        *emulator.Emulator
	app      emulator.Principal
	hc       *http.Client
	vaultURL string
}

func newFetchEnv(t testing.TB) *fetchEnv {
	t.Helper()
	testenv.RequireNetns(t)
	e := emulator.StartT(t)
	app, err := e.AddApplication(emulator.Principal{TenantID: testTenant, ClientID: "11111111-2222-4333-8444-555555555555", Secret: plantedClientSecret})
	require.NoError(t, err)
	require.NoError(t, e.CreateVault(testVault, emulator.VaultOptions{TenantID: testTenant}))

	proxy, err := url.Parse(e.ProxyURL())
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(e.CACertPEM()))
	hc := &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyURL(proxy),
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
	}}
	t.Cleanup(hc.CloseIdleConnections)
	vu, err := VaultURL(testVault, "vault.azure.net")
	require.NoError(t, err)
	return &fetchEnv{e: e, app: app, hc: hc, vaultURL: vu}
}

// credential returns a new client-secret credential for p over env's proxy.
func (env *fetchEnv) credential(t testing.TB, p emulator.Principal) azcore.TokenCredential {
	t.Helper()
	return env.credentialWith(t, p, env.hc)
}

func (env *fetchEnv) credentialWith(t testing.TB, p emulator.Principal, transport *http.Client) azcore.TokenCredential {
	t.Helper()
	cred, err := azidentity.NewClientSecretCredential(p.TenantID, p.ClientID, p.Secret,
		&azidentity.ClientSecretCredentialOptions{ClientOptions: azcore.ClientOptions{Transport: transport}})
	require.NoError(t, err)
	return cred
}

func (env *fetchEnv) fetcher(opts Options) *Fetcher {
	opts.ClientOptions.Transport = env.hc
	return NewFetcher(opts)
}

func (env *fetchEnv) request(t testing.TB, objs ...Object) Request {
	return Request{VaultURL: env.vaultURL, Credential: env.credential(t, env.app), IdentityKey: "sp/" + env.app.ClientID, Objects: objs}
}

func (env *fetchEnv) setSecret(t testing.TB, name, value string, opts emulator.SecretOptions) string {
	t.Helper()
	v, err := env.e.SetSecret(testVault, name, value, opts)
	require.NoError(t, err)
	return v
}

// count is how many Key Vault or Entra requests matched.
func (env *fetchEnv) kvCount(status int) int {
	return env.e.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Vault: testVault, Status: status})
}

func (env *fetchEnv) tokenRequests() int {
	return env.e.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: http.MethodPost})
}

// files maps a Result's files by path.
func files(t testing.TB, res *Result) map[string]File {
	t.Helper()
	out := map[string]File{}
	for _, f := range res.Files {
		_, dup := out[f.Path]
		require.False(t, dup, "file %s twice", f.Path)
		out[f.Path] = f
	}
	return out
}

func TestFetchEveryObjectKind(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID, "secrets/get", "keys/get", "certificates/get"))
	raw := []byte{0, 1, 2, 0xfe, 0xff}
	vPlain := env.setSecret(t, "db-password", "s3cret\n", emulator.SecretOptions{ContentType: "text/plain"})
	vOld := env.setSecret(t, "api-token", "old-token", emulator.SecretOptions{})
	env.setSecret(t, "api-token", "new-token", emulator.SecretOptions{})
	env.setSecret(t, "blob-b64", base64.StdEncoding.EncodeToString(raw), emulator.SecretOptions{})
	env.setSecret(t, "blob-hex", "0001", emulator.SecretOptions{})
	rsaVer, err := env.e.CreateKey(testVault, "rsa-key", emulator.KeyOptions{Type: "RSA-HSM", Size: 3072})
	require.NoError(t, err)
	ecKeys := map[string]string{}
	for _, crv := range []string{"P-256", "P-384", "P-521"} {
		name := "ec-" + strings.ToLower(strings.ReplaceAll(crv, "-", ""))
		ecKeys[crv] = name
		_, err := env.e.CreateKey(testVault, name, emulator.KeyOptions{Type: "EC-HSM", Curve: crv})
		require.NoError(t, err)
	}
	web, err := env.e.CreateCertificate(testVault, "web", emulator.CertificateOptions{ChainLength: 3, ShuffleChain: true})
	require.NoError(t, err)
	web4, err := env.e.CreateCertificate(testVault, "web4", emulator.CertificateOptions{ChainLength: 4, KeyType: "EC", ShuffleChain: true})
	require.NoError(t, err)
	webPEM, err := env.e.CreateCertificate(testVault, "web-pem", emulator.CertificateOptions{ContentType: emulator.ContentTypePEM, ShuffleChain: true})
	require.NoError(t, err)

	objs := []Object{
		{Name: "db-password", Type: TypeSecret, FileMode: 0o600},
		{Name: "api-token", Type: TypeSecret, Version: vOld, Alias: "api-token-old"},
		{Name: "api-token", Type: TypeSecret, Alias: "api-token-new"},
		{Name: "blob-b64", Type: TypeSecret, Encoding: EncodingBase64},
		{Name: "blob-hex", Type: TypeSecret, Encoding: EncodingHex},
		{Name: "rsa-key", Type: TypeKey, Alias: "keys/rsa.pem"},
		{Name: "web", Type: TypeCert, Alias: "web.crt"},
		{Name: "web", Type: TypeSecret, Alias: "web.pem"},
		{Name: "web", Type: TypeSecret, Alias: "web.pfx", Format: FormatPFX, Encoding: EncodingBase64},
		{Name: "web", Type: TypeSecret, Alias: "web.pfx.b64", Format: FormatPFX},
		{Name: "web", Type: TypeKey, Alias: "web.pub"},
		{Name: "web4", Type: TypeSecret, Alias: "web4.pem"},
		{Name: "web-pem", Type: TypeSecret, Alias: "web-pem.pem"},
	}
	for _, crv := range []string{"P-256", "P-384", "P-521"} {
		objs = append(objs, Object{Name: ecKeys[crv], Type: TypeKey})
	}
	f := env.fetcher(Options{})
	env.e.ResetRequests()
	res, err := f.Fetch(ctx, env.request(t, objs...))
	require.NoError(t, err)
	got := files(t, res)
	require.Len(t, got, len(objs))
	assert.Equal(t, 1, env.e.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Method: "GET", Object: "secrets/web", Status: http.StatusOK}),
		"one GET of the certificate's secret for its three files")

	assert.Equal(t, File{Path: "db-password", Content: []byte("s3cret\n"), Mode: 0o600}, got["db-password"])
	assert.Equal(t, "old-token", string(got["api-token-old"].Content))
	assert.Equal(t, "new-token", string(got["api-token-new"].Content))
	assert.Equal(t, DefaultFileMode, got["api-token-new"].Mode)
	assert.Equal(t, raw, got["blob-b64"].Content)
	assert.Equal(t, []byte{0, 1}, got["blob-hex"].Content)

	rsaPub := decodePEM(t, got["keys/rsa.pem"].Content)
	require.Len(t, rsaPub, 1)
	assert.Equal(t, "PUBLIC KEY", rsaPub[0].Type)
	pub, err := x509.ParsePKIXPublicKey(rsaPub[0].Bytes)
	require.NoError(t, err)
	assert.Equal(t, 3072, pub.(interface{ Size() int }).Size()*8)
	for crv, name := range ecKeys {
		blocks := decodePEM(t, got[name].Content)
		require.Len(t, blocks, 1, crv)
		pub, err := x509.ParsePKIXPublicKey(blocks[0].Bytes)
		require.NoError(t, err, crv)
		assert.Contains(t, fmt.Sprintf("%T", pub), "ecdsa", crv)
	}

	certPEM := decodePEM(t, got["web.crt"].Content)
	require.Len(t, certPEM, 1)
	assert.Equal(t, web.Leaf.Raw, certPEM[0].Bytes)
	requireKeyAndChain(t, got["web.pem"].Content, web.Key, web.Chain)
	requireKeyAndChain(t, got["web4.pem"].Content, web4.Key, web4.Chain)
	assert.Equal(t, web.SecretValue, string(got["web.pfx.b64"].Content))
	key, leaf, _, err := pkcs12.DecodeChain(got["web.pfx"].Content, "")
	require.NoError(t, err)
	assert.Equal(t, web.Leaf.Raw, leaf.Raw)
	assert.True(t, web.Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.(crypto.Signer).Public()))
	webPub, err := x509.ParsePKIXPublicKey(decodePEM(t, got["web.pub"].Content)[0].Bytes)
	require.NoError(t, err)
	assert.True(t, web.Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(webPub))
	requireKeyAndChain(t, got["web-pem.pem"].Content, webPEM.Key, webPEM.Chain)

	// Versions, in the order of the files.
	require.Len(t, res.Versions, len(res.Files))
	versions := map[string]string{}
	for i, v := range res.Versions {
		versions[res.Files[i].Path] = v.ID + "@" + v.Version
	}
	assert.Equal(t, "secret/db-password@"+vPlain, versions["db-password"])
	assert.Equal(t, "secret/api-token@"+vOld, versions["api-token-old"])
	assert.Equal(t, "key/rsa-key@"+rsaVer, versions["keys/rsa.pem"])
	assert.Equal(t, "cert/web@"+web.Version, versions["web.crt"])
	assert.Equal(t, "secret/web@"+web.Version, versions["web.pem"])
	for i, o := range objs {
		assert.Equal(t, o.FileName(), res.Files[i].Path, "files follow the objects' order")
	}
}

// fiveObjects seeds and names the 5 objects of a typical mount: three
// secrets, a key and a certificate.
func fiveObjects(t testing.TB, env *fetchEnv) []Object {
	t.Helper()
	for _, n := range []string{"s1", "s2", "s3"} {
		env.setSecret(t, n, "value-of-"+n, emulator.SecretOptions{})
	}
	_, err := env.e.CreateKey(testVault, "k1", emulator.KeyOptions{})
	require.NoError(t, err)
	_, err = env.e.CreateCertificate(testVault, "c1", emulator.CertificateOptions{ChainLength: 2})
	require.NoError(t, err)
	return []Object{
		{Name: "s1", Type: TypeSecret}, {Name: "s2", Type: TypeSecret}, {Name: "s3", Type: TypeSecret},
		{Name: "k1", Type: TypeKey}, {Name: "c1", Type: TypeCert},
	}
}

func TestFetchRequestCounts(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	objs := fiveObjects(t, env)
	f := env.fetcher(Options{})

	type counts struct{ challenges, tokens, gets, all int }
	measure := func(req Request) counts {
		t.Helper()
		env.e.ResetRequests()
		res, err := f.Fetch(ctx, req)
		require.NoError(t, err)
		require.Len(t, res.Files, 5)
		return counts{
			challenges: env.kvCount(http.StatusUnauthorized),
			tokens:     env.tokenRequests(),
			gets:       env.kvCount(http.StatusOK),
			all:        env.e.CountRequests(emulator.RequestFilter{}),
		}
	}
	req := env.request(t, objs...)

	// Cold: one challenge per SDK client (secrets, keys, certificates), one
	// token for the identity, one GET per object. Instance and OpenID
	// discovery are the credential's, once per credential.
	cold := measure(req)
	assert.Equal(t, 3, cold.challenges, "one 401 per SDK client")
	assert.Equal(t, 1, cold.tokens, "one token request for the identity")
	assert.Equal(t, 5, cold.gets, "one GET per object")
	t.Logf("cold fetch of 5 objects: %d requests in all (upstream provider: ~21)", cold.all)

	// Warm: only the GETs.
	for i := 0; i < 3; i++ {
		warm := measure(req)
		assert.Equal(t, counts{0, 0, 5, 5}, warm, "warm fetch %d", i)
	}

	// A new credential object for the same identity (what a caller that
	// builds one per mount passes): the cached clients and token still serve.
	req.Credential = env.credential(t, env.app)
	assert.Equal(t, counts{0, 0, 5, 5}, measure(req), "new credential, same identity key")

	// Another identity gets its own clients: challenges and a token again.
	other, err := env.e.AddApplication(emulator.Principal{TenantID: testTenant, ClientID: "22222222-2222-4333-8444-555555555555", Secret: "other-secret"})
	require.NoError(t, err)
	require.NoError(t, env.e.Grant(testVault, other.ObjectID))
	otherReq := Request{VaultURL: env.vaultURL, Credential: env.credential(t, other), IdentityKey: "sp/" + other.ClientID, Objects: objs}
	c := measure(otherReq)
	assert.Equal(t, 3, c.challenges)
	assert.Equal(t, 1, c.tokens)
	assert.Equal(t, 5, c.gets)
	assert.Equal(t, 2, f.clients.len())
	assert.Equal(t, 5, env.e.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Identity: other.ClientID}))
}

func TestFetchConcurrentColdCallsShareOneChallengeAndToken(t *testing.T) {
	env := newFetchEnv(t)
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	objs := fiveObjects(t, env)
	f := env.fetcher(Options{})
	cred := env.credential(t, env.app)
	env.e.ResetRequests()

	const callers = 10
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := f.Fetch(context.Background(), Request{VaultURL: env.vaultURL, Credential: cred, IdentityKey: "sp/" + env.app.ClientID, Objects: objs})
			if err == nil && len(res.Files) != 5 {
				err = fmt.Errorf("%d files", len(res.Files))
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, 3, env.kvCount(http.StatusUnauthorized), "one 401 per SDK client across all callers")
	assert.Equal(t, 1, env.tokenRequests())
	assert.Equal(t, callers*5, env.kvCount(http.StatusOK))
}

// inflight counts concurrent requests to Key Vault and slows each down so
// that parallel ones overlap.
type inflight struct {
	base      http.RoundTripper
	delay     time.Duration
	cur, peak atomic.Int32
}

func (i *inflight) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Hostname(), ".vault.azure.net") {
		n := i.cur.Add(1)
		defer i.cur.Add(-1)
		for {
			p := i.peak.Load()
			if n <= p || i.peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-time.After(i.delay):
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return i.base.RoundTrip(r)
}

func TestFetchRunsInParallelWithinTheLimit(t *testing.T) {
	env := newFetchEnv(t)
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	var objs []Object
	for i := range 12 {
		name := fmt.Sprintf("p%02d", i)
		env.setSecret(t, name, "v"+name, emulator.SecretOptions{})
		objs = append(objs, Object{Name: name, Type: TypeSecret})
	}
	counter := &inflight{base: env.hc.Transport, delay: 50 * time.Millisecond}
	f := NewFetcher(Options{ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: counter}}, MaxParallel: 4})
	res, err := f.Fetch(context.Background(), env.request(t, objs...))
	require.NoError(t, err)
	for i, o := range objs {
		assert.Equal(t, o.Name, res.Files[i].Path)
		assert.Equal(t, "v"+o.Name, string(res.Files[i].Content))
	}
	assert.Equal(t, int32(4), counter.peak.Load(), "requests in flight at most MaxParallel, and that many")
}

func TestFetchVersionHistory(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID, "secrets/get", "secrets/list", "certificates/get", "certificates/list"))
	// Key Vault's created time has a resolution of one second.
	var vs []string
	for i := range 4 {
		if i > 0 {
			time.Sleep(1100 * time.Millisecond)
		}
		vs = append(vs, env.setSecret(t, "rotating", fmt.Sprintf("value-%d", i), emulator.SecretOptions{}))
	}
	require.NoError(t, env.e.DisableVersion(testVault, emulator.KindSecrets, "rotating", vs[2]))
	c1, err := env.e.CreateCertificate(testVault, "cert-hist", emulator.CertificateOptions{ChainLength: 1})
	require.NoError(t, err)
	time.Sleep(1100 * time.Millisecond)
	c2, err := env.e.CreateCertificate(testVault, "cert-hist", emulator.CertificateOptions{ChainLength: 1})
	require.NoError(t, err)

	f := env.fetcher(Options{})
	res, err := f.Fetch(ctx, env.request(t,
		Object{Name: "rotating", Type: TypeSecret, VersionHistory: 3, Alias: "hist", FileMode: 0o400},
		Object{Name: "cert-hist", Type: TypeCert, VersionHistory: 5},
		Object{Name: "rotating", Type: TypeSecret, Alias: "latest"},
	))
	require.NoError(t, err)
	var paths []string
	for _, fl := range res.Files {
		paths = append(paths, fl.Path)
	}
	assert.Equal(t, []string{"hist/0", "hist/1", "hist/2", "cert-hist/0", "cert-hist/1", "latest"}, paths)
	got := files(t, res)
	assert.Equal(t, "value-3", string(got["hist/0"].Content))
	assert.Equal(t, "value-1", string(got["hist/1"].Content), "the disabled version is skipped")
	assert.Equal(t, "value-0", string(got["hist/2"].Content))
	assert.Equal(t, os.FileMode(0o400), got["hist/0"].Mode)
	assert.Equal(t, c2.Leaf.Raw, decodePEM(t, got["cert-hist/0"].Content)[0].Bytes)
	assert.Equal(t, c1.Leaf.Raw, decodePEM(t, got["cert-hist/1"].Content)[0].Bytes)
	assert.Equal(t, []ObjectVersion{
		{"secret/rotating/0", vs[3]}, {"secret/rotating/1", vs[1]}, {"secret/rotating/2", vs[0]},
		{"cert/cert-hist/0", c2.Version}, {"cert/cert-hist/1", c1.Version},
		{"secret/rotating", vs[3]},
	}, res.Versions)

	// A pinned objectVersion starts the history there, as upstream
	// documents; a version that is not an enabled one is not found.
	res, err = f.Fetch(ctx, env.request(t, Object{Name: "rotating", Type: TypeSecret, VersionHistory: 3, Version: strings.ToUpper(vs[1])}))
	require.NoError(t, err)
	got = files(t, res)
	assert.Len(t, got, 2, "only two enabled versions from the pinned one back")
	assert.Equal(t, "value-1", string(got["rotating/0"].Content))
	assert.Equal(t, "value-0", string(got["rotating/1"].Content))
	_, err = f.Fetch(ctx, env.request(t, Object{Name: "rotating", Type: TypeSecret, VersionHistory: 3, Version: vs[2]}))
	require.Error(t, err)
	assert.Equal(t, KindNotFound, Classify(err))
	assert.Contains(t, err.Error(), "objectVersion "+vs[2]+" is not an enabled version of it")

	// Listing needs the list permission.
	other, err := env.e.AddApplication(emulator.Principal{TenantID: testTenant, ClientID: "33333333-2222-4333-8444-555555555555", Secret: "s"})
	require.NoError(t, err)
	require.NoError(t, env.e.Grant(testVault, other.ObjectID, "secrets/get"))
	_, err = f.Fetch(ctx, Request{VaultURL: env.vaultURL, Credential: env.credential(t, other), IdentityKey: "sp/" + other.ClientID,
		Objects: []Object{{Name: "rotating", Type: TypeSecret, VersionHistory: 2}}})
	require.Error(t, err)
	assert.Equal(t, KindPermissionDenied, Classify(err))
	assert.Contains(t, err.Error(), "list versions of secret kv-fetch/rotating: Key Vault answered 403")
}
