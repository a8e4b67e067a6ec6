package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/emulator"
)

const (
	e2eTenant   = "0d9c8b7a-6f5e-4d3c-8b2a-19f8e7d6c5b4"
	e2eVault    = "kvnode-e2e"
	spClientID  = "11111111-2222-4333-8444-555555555555"
	spSecret    = "e2e-service-principal-secret"
	wiClientID  = "66666666-7777-4888-8999-000000000000"
	miClientID  = "99999999-8888-4777-8666-555555555555"
	dbPassword1 = "first-db-password-planted-in-the-emulator"
	dbPassword2 = "second-db-password-planted-in-the-emulator"
)

// vaultFixture is what the e2e vault holds, for checking the files.
type vaultFixture struct {
	pfxCert, pemCert *emulator.IssuedCertificate
	firstDBVersion   string
	plantedSecrets   []string
}

func seedVault(t testing.TB, e *driverEnv) *vaultFixture {
	t.Helper()
	emu := e.emu
	jwks, err := e.cp.JWKS(context.Background())
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(e.cp.Issuer, jwks))

	sp, err := emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: spClientID, Secret: spSecret})
	require.NoError(t, err)
	wi, err := emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: wiClientID, Federated: []emulator.FederatedCredential{
		{Issuer: e.cp.Issuer, Subject: "system:serviceaccount:apps:web"},
	}})
	require.NoError(t, err)
	mi, err := emu.AddManagedIdentity(emulator.Principal{TenantID: e2eTenant, ClientID: miClientID})
	require.NoError(t, err)

	require.NoError(t, emu.CreateVault(e2eVault, emulator.VaultOptions{TenantID: e2eTenant}))
	for _, p := range []emulator.Principal{sp, wi, mi} {
		require.NoError(t, emu.Grant(e2eVault, p.ObjectID))
	}
	f := &vaultFixture{}
	f.firstDBVersion, err = emu.SetSecret(e2eVault, "db-password", dbPassword1, emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = emu.SetSecret(e2eVault, "db-password", dbPassword2, emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = emu.SetSecret(e2eVault, "api-key", "a3Zub2RlLWFwaS1rZXktYnl0ZXM=", emulator.SecretOptions{}) // "kvnode-api-key-bytes"
	require.NoError(t, err)
	for i, v := range []string{"history-0", "history-1", "history-2", "history-3"} {
		version, err := emu.SetSecret(e2eVault, "history", v, emulator.SecretOptions{})
		require.NoError(t, err)
		if i == 2 {
			require.NoError(t, emu.DisableVersion(e2eVault, "secrets", "history", version))
		}
		time.Sleep(1100 * time.Millisecond) // distinct creation times (Unix seconds)
	}
	_, err = emu.CreateKey(e2eVault, "rsa-key", emulator.KeyOptions{Type: "RSA", Size: 2048})
	require.NoError(t, err)
	_, err = emu.CreateKey(e2eVault, "ec-key", emulator.KeyOptions{Type: "EC", Curve: "P-384"})
	require.NoError(t, err)
	f.pfxCert, err = emu.CreateCertificate(e2eVault, "web-tls", emulator.CertificateOptions{
		ContentType: "application/x-pkcs12", ChainLength: 4, KeyType: "RSA", ShuffleChain: true})
	require.NoError(t, err)
	f.pemCert, err = emu.CreateCertificate(e2eVault, "web-pem", emulator.CertificateOptions{
		ContentType: "application/x-pem-file", ChainLength: 3, KeyType: "EC", ShuffleChain: true})
	require.NoError(t, err)
	f.plantedSecrets = []string{dbPassword1, dbPassword2, spSecret, "history-1", "kvnode-api-key-bytes"}
	return f
}

// everyObject is a SecretProviderClass objects parameter with every object
// kind and option, as written for the upstream Azure provider.
func everyObject(f *vaultFixture) string {
	return `array:
  - |
    objectName: db-password
    objectType: secret
    filePermission: "0600"
  - |
    objectName: db-password
    objectType: secret
    objectVersion: ` + f.firstDBVersion + `
    objectAlias: db-password-v1
  - |
    objectName: api-key
    objectType: secret
    objectEncoding: base64
    objectAlias: api-key.bin
  - |
    objectName: history
    objectType: secret
    objectVersionHistory: 3
  - |
    objectName: rsa-key
    objectType: key
  - |
    objectName: ec-key
    objectType: key
    objectAlias: keys/ec.pem
  - |
    objectName: web-tls
    objectType: cert
    objectAlias: tls/leaf.crt
  - |
    objectName: web-tls
    objectType: secret
    objectAlias: tls/bundle.pem
  - |
    objectName: web-tls
    objectType: secret
    objectFormat: pfx
    objectEncoding: base64
    objectAlias: tls/bundle.pfx
  - |
    objectName: web-pem
    objectType: secret
    objectAlias: pem/bundle.pem
`
}

func pemBlocks(t *testing.T, data []byte) []*pem.Block {
	t.Helper()
	var out []*pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		out = append(out, b)
	}
	require.Empty(t, bytes.TrimSpace(data), "trailing bytes after the PEM blocks")
	return out
}

// expectedBundle is the private key (PKCS#8) then the chain leaf to root.
func expectedBundle(t *testing.T, c *emulator.IssuedCertificate) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	require.NoError(t, err)
	out := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	for _, cert := range c.Chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out
}

func readFile(t *testing.T, dir, name string) ([]byte, os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, name)
	b, err := os.ReadFile(p)
	require.NoError(t, err, name)
	st, err := os.Stat(p)
	require.NoError(t, err)
	return b, st.Mode().Perm()
}

func assertTmpfs(t *testing.T, dir string) {
	t.Helper()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	assert.Equal(t, int64(unix.TMPFS_MAGIC), int64(st.Type), "%s must be a tmpfs", dir)
}

func TestKVDriverServicePrincipalEveryObjectKind(t *testing.T) {
	e := startDriverEnv(t)
	f := seedVault(t, e)
	ctx := callCtx(t)
	require.NoError(t, e.cp.EnsureNamespace(ctx, "apps"))
	e.createClass(t, "apps", "every-object", map[string]string{
		"keyvaultName": e2eVault, "tenantId": e2eTenant, "objects": everyObject(f),
	})
	pod := e.createPod(t, "apps", "web-0", "default-sa")
	req := e.publishRequest(pod, "secrets", "every-object", map[string]string{"clientid": spClientID, "clientsecret": spSecret}, "")
	mkTargetParent(t, req.TargetPath)

	for i := range 2 { // kubelet publishes, then republishes: both succeed
		_, err := e.node.NodePublishVolume(ctx, req)
		require.NoError(t, err, "publish %d", i)
	}
	dir := req.TargetPath
	assertTmpfs(t, dir)

	b, mode := readFile(t, dir, "db-password")
	assert.Equal(t, dbPassword2, string(b))
	assert.Equal(t, os.FileMode(0o600), mode)
	b, mode = readFile(t, dir, "db-password-v1")
	assert.Equal(t, dbPassword1, string(b))
	assert.Equal(t, os.FileMode(0o644), mode)
	b, _ = readFile(t, dir, "api-key.bin")
	assert.Equal(t, "kvnode-api-key-bytes", string(b))
	for i, want := range []string{"history-3", "history-1", "history-0"} { // newest first, disabled skipped
		b, _ = readFile(t, dir, filepath.Join("history", string(rune('0'+i))))
		assert.Equal(t, want, string(b), "history/%d", i)
	}

	b, _ = readFile(t, dir, "rsa-key")
	blocks := pemBlocks(t, b)
	require.Len(t, blocks, 1)
	assert.Equal(t, "PUBLIC KEY", blocks[0].Type)
	pub, err := x509.ParsePKIXPublicKey(blocks[0].Bytes)
	require.NoError(t, err)
	assert.IsType(t, &rsa.PublicKey{}, pub)
	b, _ = readFile(t, dir, "keys/ec.pem")
	blocks = pemBlocks(t, b)
	require.Len(t, blocks, 1)
	pub, err = x509.ParsePKIXPublicKey(blocks[0].Bytes)
	require.NoError(t, err)
	require.IsType(t, &ecdsa.PublicKey{}, pub)
	assert.Equal(t, elliptic.P384(), pub.(*ecdsa.PublicKey).Curve)

	b, _ = readFile(t, dir, "tls/leaf.crt")
	assert.Equal(t, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.pfxCert.Leaf.Raw})), string(b))
	b, _ = readFile(t, dir, "tls/bundle.pem")
	assert.Equal(t, string(expectedBundle(t, f.pfxCert)), string(b), "key first, then the shuffled chain ordered leaf to root")
	b, _ = readFile(t, dir, "tls/bundle.pfx")
	assert.Equal(t, f.pfxCert.SecretValue, base64.StdEncoding.EncodeToString(b), "objectFormat pfx with objectEncoding base64 is the binary PFX")
	b, _ = readFile(t, dir, "pem/bundle.pem")
	assert.NotEqual(t, f.pemCert.SecretValue, string(b), "Key Vault keeps a PEM chain in upload order (shuffled here)")
	assert.Equal(t, string(expectedBundle(t, f.pemCert)), string(b), "a PEM certificate's secret: key first, then the chain leaf to root, as from a PFX")

	// The atomic writer's layout, as kubelet's.
	link, err := os.Readlink(filepath.Join(dir, "db-password"))
	require.NoError(t, err)
	assert.Equal(t, filepath.Join("..data", "db-password"), link)

	// The pod status the upstream driver records, written in the background.
	var st *unstructured.Unstructured
	require.Eventually(t, func() bool {
		st, err = e.dyn.Resource(spc.SecretProviderClassPodStatusesResource).Namespace("apps").
			Get(ctx, "web-0-apps-every-object", metav1.GetOptions{})
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "pod status not recorded")
	assert.Equal(t, "node-1", st.GetLabels()[spc.InternalNodeLabel])
	assert.Equal(t, string(pod.UID), string(st.GetOwnerReferences()[0].UID))
	status := st.Object["status"].(map[string]any)
	assert.Equal(t, true, status["mounted"])
	assert.Equal(t, dir, status["targetPath"])
	assert.NotEmpty(t, status["objects"])

	// Rotation at the next republish after the object cache's TTL.
	_, err = e.emu.SetSecret(e2eVault, "db-password", "third-db-password", emulator.SecretOptions{})
	require.NoError(t, err)
	time.Sleep(driverCacheTTL)
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	b, _ = readFile(t, dir, "db-password")
	assert.Equal(t, "third-db-password", string(b))

	for i := range 2 { // idempotent
		_, err = e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: dir})
		require.NoError(t, err, "unpublish %d", i)
	}
	assert.NoDirExists(t, dir)

	for _, s := range f.plantedSecrets {
		assert.NotContains(t, e.logs.String(), s, "a secret value reached the driver's logs")
	}
}

func TestKVDriverWorkloadIdentity(t *testing.T) {
	e := startDriverEnv(t)
	seedVault(t, e)
	ctx := callCtx(t)
	require.NoError(t, e.cp.EnsureNamespace(ctx, "apps"))
	e.createClass(t, "apps", "wi", map[string]string{
		"keyvaultName": e2eVault, "tenantId": e2eTenant, "clientID": wiClientID,
		"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n",
	})
	web := e.createPod(t, "apps", "web-0", "web")
	intruder := e.createPod(t, "apps", "intruder-0", "intruder")
	token := func(pod string, sa string) string {
		p, err := e.cp.Client.CoreV1().Pods("apps").Get(ctx, pod, metav1.GetOptions{})
		require.NoError(t, err)
		st, err := e.cp.ServiceAccountToken(ctx, "apps", sa, []string{emulator.DefaultFederatedAudience}, time.Hour, p)
		require.NoError(t, err)
		return st.Token
	}

	webToken := token("web-0", "web")
	req := e.publishRequest(web, "secrets", "wi", nil, webToken)
	mkTargetParent(t, req.TargetPath)
	_, err := e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	b, _ := readFile(t, req.TargetPath, "db-password")
	assert.Equal(t, dbPassword2, string(b))
	// Two round trips to Entra ID for a new identity of the public cloud:
	// the tenant's OpenID configuration and the token; no instance
	// discovery.
	var entra []string
	for _, r := range e.emu.Requests(emulator.RequestFilter{Service: emulator.ServiceEntra}) {
		entra = append(entra, r.Method+" "+r.Path)
	}
	assert.Equal(t, []string{"GET /" + e2eTenant + "/v2.0/.well-known/openid-configuration", "POST /" + e2eTenant + "/oauth2/v2.0/token"}, entra)

	// Kubernetes 1.35+ passes the token in the request's secrets instead.
	inSecrets := e.publishRequest(web, "secrets2", "wi", nil, webToken)
	inSecrets.Secrets = map[string]string{"csi.storage.k8s.io/serviceAccount.tokens": inSecrets.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]}
	delete(inSecrets.VolumeContext, "csi.storage.k8s.io/serviceAccount.tokens")
	mkTargetParent(t, inSecrets.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, inSecrets)
	require.NoError(t, err)
	assert.Equal(t, 1, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: "POST", Identity: wiClientID}),
		"the second mount of the same service account reuses the token")

	// A pod of another service account naming the same client ID is refused.
	bad := e.publishRequest(intruder, "secrets", "wi", nil, token("intruder-0", "intruder"))
	mkTargetParent(t, bad.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, bad)
	requireCode(t, err, "PermissionDenied", "AADSTS700213")
	assert.NoDirExists(t, bad.TargetPath)
}

func TestKVDriverVMManagedIdentity(t *testing.T) {
	e := startDriverEnv(t)
	seedVault(t, e)
	ctx := callCtx(t)
	require.NoError(t, e.cp.EnsureNamespace(ctx, "apps"))
	e.createClass(t, "apps", "vm", map[string]string{
		"keyvaultName": e2eVault, "tenantId": e2eTenant, "useVMManagedIdentity": "true", "userAssignedIdentityID": miClientID,
		"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n",
	})
	pod := e.createPod(t, "apps", "batch-0", "batch")
	req := e.publishRequest(pod, "secrets", "vm", nil, "")
	mkTargetParent(t, req.TargetPath)
	_, err := e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	b, _ := readFile(t, req.TargetPath, "db-password")
	assert.Equal(t, dbPassword2, string(b))
	assert.Equal(t, 1, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Identity: miClientID, Status: 200}))
}

func requireCode(t *testing.T, err error, code string, contains string) {
	t.Helper()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "code = "+code)
	assert.Contains(t, err.Error(), contains)
}
