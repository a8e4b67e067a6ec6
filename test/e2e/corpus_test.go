package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	yamlv3 "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kvnode/kvnode/pkg/bindings"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/kubelet"
)

// The corpus: SecretProviderClasses as the upstream secrets-store CSI
// driver's and Azure provider's own documentation, examples and e2e suites
// write them (testdata/corpus, each file naming its source). Each runs
// through the kvdriver binary as it stands, against a vault holding the
// objects the manifests name, and the files are compared byte for byte with
// what the upstream provider writes by its documented rules, computed here
// from the emulator's own material (upstreamFiles), not from kvdriver's code.
//
// The manifests are not edited: the placeholders their authors left for the
// user ($KEYVAULT_NAME, <client id of ...>) are filled as the upstream suites
// fill them (envsubst), and the emulator is the world they describe (vault
// kvname in tenant tid). Every pod's volume is the one these documents give:
// the csi driver secrets-store.csi.k8s.io, readOnly, volumeAttributes naming
// the class, and for a service principal a nodePublishSecretRef; kubelet
// passes the pod's workload-identity token, as the chart's CSIDriver asks.

const (
	corpusVault    = "kvname"
	corpusTenant   = "tid"
	corpusWIClient = "c0ffee00-0000-4000-8000-00000000c0de"
	corpusMIClient = "c0ffee00-0000-4000-8000-0000000000a1"
	corpusSA       = "corpus"
	// corpusHistory is how many versions the corpus's history secrets
	// hold: the documents ask for 5, and with exactly 5 versions upstream's
	// loop (which writes one more file than asked when more exist) and its
	// documentation agree.
	corpusHistory = 5
)

// corpusEntry is one manifest of the corpus.
type corpusEntry struct {
	file   string
	source string
	// refuses is the refusal upstream answers (empty: it mounts).
	refuses string
	// differs explains a documented difference: what kvdriver does instead.
	differs string
	// kvnodeRefuses is the message of a refusal where kvdriver knowingly
	// does not mount what upstream mounts (listed in the README).
	kvnodeRefuses string
	class         map[string]any
}

// corpusFixture is what the corpus vault holds.
type corpusFixture struct {
	secrets map[string][]string // name -> values, oldest first
	certs   map[string]*emulator.IssuedCertificate
	envFile string
}

func TestKVDriverCorpus(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	jwks, err := cp.JWKS(ctx)
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(cp.Issuer, jwks))
	fx := seedCorpus(t, emu)

	nmi := startNMI(t, cp, emu)
	nmi.waitReady(t)
	// The AKS token proxy, as the chart configures kvdriver for it.
	sni := identity.SNIName("kvnode-corpus-cluster")
	require.NoError(t, emu.EnableTokenProxy(emulator.TokenProxyOptions{Host: "kubernetes.default.svc.cluster.local", SNIName: sni}))
	e := startKVDriver(t, cp, emu, "--nmi-endpoint", "http://"+nmi.host, "--object-cache-ttl", "0", "--sync-secrets",
		"--token-proxy-url", "https://kubernetes.default.svc.cluster.local", "--token-proxy-sni-name", sni, "--token-proxy-ca-file", emu.CAFile())

	entries := loadCorpus(t, fx)
	require.GreaterOrEqual(t, len(entries), 40)
	sources := map[string]bool{}
	for _, en := range entries {
		sources[en.source] = true
	}
	t.Logf("corpus: %d SecretProviderClasses from %d upstream files", len(entries), len(sources))

	for i, en := range entries {
		t.Run(strings.TrimSuffix(en.file, ".yaml"), func(t *testing.T) {
			ns := fmt.Sprintf("corpus-%02d", i+1)
			if m, _ := en.class["metadata"].(map[string]any); m["namespace"] != nil {
				ns = m["namespace"].(string)
			}
			require.NoError(t, cp.EnsureNamespace(ctx, ns))
			subject := "system:serviceaccount:" + ns + ":" + corpusSA
			require.NoError(t, emu.AddFederatedCredential(corpusWIClient, emulator.FederatedCredential{Issuer: cp.Issuer, Subject: subject}))
			for _, id := range []string{corpusWIClient, corpusMIClient} {
				require.NoError(t, emu.AddIdentityBinding(emulator.IdentityBinding{ClientID: id, Issuer: cp.Issuer, Subject: subject}))
			}
			obj := &unstructured.Unstructured{Object: en.class}
			obj.SetNamespace(ns)
			_, err := e.dyn.Resource(spc.SecretProviderClassesResource).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{})
			require.NoError(t, err)
			e.waitForClasses(t, ns)

			params, _, _ := unstructured.NestedStringMap(en.class, "spec", "parameters")
			pod := e.createPod(t, ns, fmt.Sprintf("app-%02d", i+1), corpusSA)
			if params["usePodIdentity"] == "true" {
				bindCorpusPod(ctx, t, e, pod, fmt.Sprintf("10.244.9.%d", i+1))
			}
			req := e.publishRequest(pod, "secrets-store-inline", obj.GetName(), nil, "")
			kubelet.SetTokens(req, kubelet.Tokens{ // both audiences the chart's CSIDriver asks for
				emulator.DefaultFederatedAudience: corpusToken(ctx, t, e, pod, emulator.DefaultFederatedAudience),
				identity.BindingAudience:          corpusToken(ctx, t, e, pod, identity.BindingAudience)})
			if servicePrincipalMode(params) {
				req.Secrets = spCredentials(spClientID, spSecret) // nodePublishSecretRef: secrets-store-creds
			}
			mkTargetParent(t, req.TargetPath)
			_, err = e.node.NodePublishVolume(ctx, req)
			if en.refuses != "" {
				require.Error(t, err, "upstream refuses: %s", en.refuses)
				assert.NotEqual(t, codes.Internal, status.Code(err), err)
				e.assertNothingPublished(t, pod, req.TargetPath, false)
				t.Logf("refused as upstream refuses (%s): %v", en.refuses, err)
				return
			}
			if en.kvnodeRefuses != "" {
				require.Error(t, err)
				assert.Contains(t, status.Convert(err).Message(), en.kvnodeRefuses)
				e.assertNothingPublished(t, pod, req.TargetPath, false)
				t.Logf("kvdriver refuses what upstream mounts: %s", en.kvnodeRefuses)
				return
			}
			require.NoError(t, err)
			want, modes := upstreamFiles(t, emu, fx, params)
			assertFiles(t, req.TargetPath, want, modes)
			assertSyncedSecrets(ctx, t, e, en.class, want)
			if en.differs != "" {
				t.Logf("documented difference: %s", en.differs)
			}
			_, err = e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
			require.NoError(t, err)
		})
	}
}

// seedCorpus fills the emulator with the identities and objects the corpus
// names, in tenant tid and vault kvname.
func seedCorpus(t *testing.T, emu *emulator.Emulator) *corpusFixture {
	t.Helper()
	sp, err := emu.AddApplication(emulator.Principal{TenantID: corpusTenant, ClientID: spClientID, Secret: spSecret})
	require.NoError(t, err)
	wi, err := emu.AddApplication(emulator.Principal{TenantID: corpusTenant, ClientID: corpusWIClient})
	require.NoError(t, err)
	mi, err := emu.AddManagedIdentity(emulator.Principal{TenantID: corpusTenant, ClientID: corpusMIClient})
	require.NoError(t, err)
	system, err := emu.SetSystemAssignedIdentity(emulator.Principal{TenantID: corpusTenant})
	require.NoError(t, err)
	require.NoError(t, emu.CreateVault(corpusVault, emulator.VaultOptions{TenantID: corpusTenant}))
	for _, p := range []emulator.Principal{sp, wi, mi, system} {
		require.NoError(t, emu.Grant(corpusVault, p.ObjectID))
	}

	fx := &corpusFixture{secrets: map[string][]string{}, certs: map[string]*emulator.IssuedCertificate{}}
	set := func(name, value string) {
		_, err := emu.SetSecret(corpusVault, name, value, emulator.SecretOptions{})
		require.NoError(t, err)
		fx.secrets[name] = append(fx.secrets[name], value)
	}
	// Secrets with a history: one version a second (versions are ordered
	// by creation time, in Unix seconds).
	for v := 1; v <= corpusHistory; v++ {
		for _, name := range []string{"secret1", "secret-wi-corpus", "secret-msi-corpus", "secret-pi-corpus"} {
			set(name, fmt.Sprintf("%s value %d", name, v))
		}
		if v < corpusHistory {
			time.Sleep(1100 * time.Millisecond)
		}
	}
	set("secret2", "secret2 value")
	set("secret3", "secret3 value")
	set("dockerconfigjson", `{"auths":{"registry.example":{"auth":"dXNlcjpwYXNz"}}}`)
	for name, opts := range map[string]emulator.KeyOptions{
		"key1": {Type: "RSA", Size: 2048}, "key2": {Type: "EC", Curve: "P-256"},
		"rsahsmkey1": {Type: "RSA-HSM", Size: 2048}, "echsmkey1": {Type: "EC-HSM", Curve: "P-384"},
	} {
		_, err := emu.CreateKey(corpusVault, name, opts)
		require.NoError(t, err)
	}
	for name, opts := range map[string]emulator.CertificateOptions{
		"cert1":       {ContentType: emulator.ContentTypePKCS12, ChainLength: 3},
		"cert2-pfx":   {ContentType: emulator.ContentTypePKCS12, ChainLength: 2},
		"tls-cert":    {ContentType: emulator.ContentTypePKCS12, ChainLength: 2, DNSNames: []string{"demo.azure.com"}},
		"pemcert1":    {ContentType: "application/x-pem-file", ChainLength: 3},
		"pkcs12cert1": {ContentType: emulator.ContentTypePKCS12, ChainLength: 3},
		"ecccert1":    {ContentType: emulator.ContentTypePKCS12, ChainLength: 2, KeyType: "EC"},
	} {
		c, err := emu.CreateCertificate(corpusVault, name, opts)
		require.NoError(t, err)
		fx.certs[name] = c
	}
	// An Azure Stack environment file (cloudEnvFileName), its endpoints
	// those the emulator serves.
	fx.envFile = filepath.Join(t.TempDir(), "azurestackcloud.json")
	require.NoError(t, os.WriteFile(fx.envFile, []byte(`{
  "name": "AzureStackCloud",
  "activeDirectoryEndpoint": "https://login.microsoftonline.com/",
  "keyVaultEndpoint": "https://vault.azure.net/",
  "keyVaultDNSSuffix": "vault.azure.net",
  "resourceIdentifiers": {"keyVault": "https://vault.azure.net"}
}`), 0o644))
	return fx
}

// loadCorpus reads testdata/corpus, filling the placeholders as the
// upstream suites do.
func loadCorpus(t *testing.T, fx *corpusFixture) []corpusEntry {
	t.Helper()
	vars := map[string]string{
		"API_VERSION": "secrets-store.csi.x-k8s.io/v1", "KEYVAULT_NAME": corpusVault, "AKV_NAME": corpusVault,
		"TENANT_ID": corpusTenant, "AZURE_TENANT_ID": corpusTenant,
		"SECRET_NAME": "secret1", "SECRET_VERSION": "", "KEY_NAME": "key1", "KEY_VERSION": "", "CERT_NAME": "tls-cert",
		"IDENTITY_CLIENT_ID": corpusWIClient, "AZURE_CLIENT_ID": corpusWIClient,
		"USER_ASSIGNED_IDENTITY_CLIENT_ID": corpusMIClient, "USER_ASSIGNED_IDENTITY_ID": corpusMIClient,
		"AZURE_ENVIRONMENT_FILEPATH": fx.envFile,
	}
	// Prose placeholders, for the reader to replace.
	literal := strings.NewReplacer(
		"<client id of user assigned identity>", corpusMIClient,
		"<client id of the user-assigned managed identity>", corpusMIClient,
		"<client id of the Azure AD Application or user-assigned managed identity to use for workload identity>", corpusWIClient,
		`"client_id"`, strconv.Quote(corpusWIClient),
		"{{.Name}}", "azure-load",
	)
	envsubst := regexp.MustCompile(`\$\{([A-Z_]+)\}|\$([A-Z_]+)`)
	dir := filepath.Join("testdata", "corpus")
	files, err := os.ReadDir(dir)
	require.NoError(t, err)
	var entries []corpusEntry
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f.Name()))
		require.NoError(t, err)
		en := corpusEntry{file: f.Name()}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "# source: "); ok {
				en.source = v
			}
			if v, ok := strings.CutPrefix(line, "# upstream: refuses: "); ok {
				en.refuses = v
			}
			if v, ok := strings.CutPrefix(line, "# kvnode refuses: "); ok {
				en.kvnodeRefuses = v
			}
			if v, ok := strings.CutPrefix(line, "# kvnode differs: "); ok {
				en.differs = v
			}
		}
		require.NotEmpty(t, en.source, "%s names no source", f.Name())
		text := envsubst.ReplaceAllStringFunc(literal.Replace(string(b)), func(m string) string {
			name := strings.Trim(m, "${}")
			if v, ok := vars[name]; ok {
				return v
			}
			t.Fatalf("%s: no value for %s", f.Name(), m)
			return m
		})
		require.NoError(t, yaml.Unmarshal([]byte(text), &en.class), f.Name())
		entries = append(entries, en)
	}
	return entries
}

func servicePrincipalMode(p map[string]string) bool {
	return p["clientID"] == "" && p["useVMManagedIdentity"] != "true" && p["usePodIdentity"] != "true" && p["useAzureTokenProxy"] != "true"
}

// corpusToken is the token for audience kubelet passes for pod.
func corpusToken(ctx context.Context, t *testing.T, e *driverEnv, pod *corev1.Pod, audience string) string {
	t.Helper()
	st, err := e.cp.ServiceAccountToken(ctx, pod.Namespace, pod.Spec.ServiceAccountName, []string{audience}, time.Hour, pod)
	require.NoError(t, err)
	return st.Token
}

// bindCorpusPod gives pod a managed identity through an
// AzureIdentityBinding, as aad-pod-identity users do, and reports the pod
// Running on nmi's node.
func bindCorpusPod(ctx context.Context, t *testing.T, e *driverEnv, pod *corev1.Pod, ip string) {
	t.Helper()
	mi, err := e.emu.AddManagedIdentity(emulator.Principal{TenantID: corpusTenant})
	require.NoError(t, err)
	require.NoError(t, e.emu.Grant(corpusVault, mi.ObjectID))
	for _, cr := range []struct {
		res  string
		kind string
		name string
		spec map[string]any
	}{
		{"azureidentities", "AzureIdentity", "corpus-id", map[string]any{"type": int64(0), "clientID": mi.ClientID, "resourceID": mi.ResourceID}},
		{"azureidentitybindings", "AzureIdentityBinding", "corpus-id-binding", map[string]any{"azureIdentity": "corpus-id", "selector": "corpus"}},
	} {
		gvr := bindings.AzureIdentitiesResource
		if cr.kind == "AzureIdentityBinding" {
			gvr = bindings.AzureIdentityBindingsResource
		}
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gvr.Group + "/" + gvr.Version, "kind": cr.kind,
			"metadata": map[string]any{"name": cr.name, "namespace": pod.Namespace}, "spec": cr.spec}}
		_, err := e.dyn.Resource(gvr).Namespace(pod.Namespace).Create(ctx, u, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	pod.Labels = map[string]string{bindings.SelectorLabel: "corpus"}
	pod.Spec.NodeName = nmiNodeName
	// nodeName is set at creation only: recreate the pod object bound to
	// the node, as the scheduler would have placed it.
	require.NoError(t, e.cp.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	fresh, err := e.cp.Client.CoreV1().Pods(pod.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Labels: pod.Labels}, Spec: pod.Spec}, metav1.CreateOptions{})
	require.NoError(t, err)
	fresh.Status.Phase = corev1.PodRunning
	fresh.Status.PodIP, fresh.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	fresh, err = e.cp.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
	require.NoError(t, err)
	*pod = *fresh
	time.Sleep(time.Second) // nmi's informers see the binding and the pod
}

// corpusObject is an entry of the objects array as upstream reads it:
// yaml.v3 into strings, every field trimmed.
type corpusObject struct {
	ObjectName           string `yaml:"objectName"`
	ObjectAlias          string `yaml:"objectAlias"`
	ObjectVersion        string `yaml:"objectVersion"`
	ObjectVersionHistory int32  `yaml:"objectVersionHistory"`
	ObjectType           string `yaml:"objectType"`
	ObjectFormat         string `yaml:"objectFormat"`
	ObjectEncoding       string `yaml:"objectEncoding"`
	FilePermission       string `yaml:"filePermission"`
}

// upstreamFiles computes the files the upstream Azure provider writes for
// the class parameters (its documented rules; see the README's
// compatibility section):
//   - the file is objectAlias, else objectName; with objectVersionHistory
//     N > 1, a directory of that name with files 0 (the latest) to N-1;
//   - secret: the value; objectEncoding base64 or hex decodes it. A
//     certificate's secret stored as PKCS#12 becomes PEM (the private key
//     as PKCS#8, then the certificates from leaf to root), unless
//     objectFormat is pfx (the stored base64, decoded with objectEncoding
//     base64); stored as PEM, it is written as stored;
//   - key: the public key, PKIX PEM; cert: the leaf certificate, PEM;
//   - mode filePermission (octal), else 0644.
func upstreamFiles(t *testing.T, emu *emulator.Emulator, fx *corpusFixture, params map[string]string) (map[string]string, map[string]os.FileMode) {
	t.Helper()
	var array struct {
		Array []string `yaml:"array"`
	}
	require.NoError(t, yamlv3.Unmarshal([]byte(params["objects"]), &array))
	files, modes := map[string]string{}, map[string]os.FileMode{}
	for _, entry := range array.Array {
		var o corpusObject
		require.NoError(t, yamlv3.Unmarshal([]byte(entry), &o))
		name := strings.TrimSpace(o.ObjectAlias)
		if name == "" {
			name = strings.TrimSpace(o.ObjectName)
		}
		mode := os.FileMode(0o644)
		if p := strings.TrimSpace(o.FilePermission); p != "" {
			m, err := strconv.ParseUint(p, 8, 32)
			require.NoError(t, err)
			mode = os.FileMode(m)
		}
		put := func(file string, content []byte) {
			files[file], modes[file] = string(content), mode
		}
		versions := contentVersions(t, emu, fx, o)
		if o.ObjectVersionHistory <= 1 {
			put(name, versions[len(versions)-1])
			continue
		}
		for i := 0; i < int(o.ObjectVersionHistory) && i < len(versions); i++ {
			put(path.Join(name, strconv.Itoa(i)), versions[len(versions)-1-i])
		}
	}
	return files, modes
}

// contentVersions is what upstream writes for each version of o, oldest
// first.
func contentVersions(t *testing.T, emu *emulator.Emulator, fx *corpusFixture, o corpusObject) [][]byte {
	t.Helper()
	name := strings.TrimSpace(o.ObjectName)
	cert := fx.certs[name]
	switch strings.TrimSpace(o.ObjectType) {
	case "key":
		var pub crypto.PublicKey
		if cert != nil {
			pub = cert.Leaf.PublicKey
		} else {
			var err error
			pub, err = emu.PublicKey(corpusVault, name, "")
			require.NoError(t, err)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		require.NoError(t, err)
		return [][]byte{pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
	case "cert":
		require.NotNil(t, cert, "no certificate %s in the corpus vault", name)
		return [][]byte{pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw})}
	}
	if cert != nil {
		var content []byte
		switch {
		case !bytes.HasPrefix([]byte(cert.SecretValue), []byte("-----")) && strings.EqualFold(o.ObjectFormat, "pfx"):
			content = []byte(cert.SecretValue)
		case !bytes.HasPrefix([]byte(cert.SecretValue), []byte("-----")):
			der, err := x509.MarshalPKCS8PrivateKey(cert.Key)
			require.NoError(t, err)
			content = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
			for _, c := range cert.Chain {
				content = append(content, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
			}
		default:
			content = []byte(cert.SecretValue)
		}
		return [][]byte{decodeAs(t, content, o.ObjectEncoding)}
	}
	values, ok := fx.secrets[name]
	require.True(t, ok, "no secret %s in the corpus vault", name)
	var out [][]byte
	for _, v := range values {
		out = append(out, decodeAs(t, []byte(v), o.ObjectEncoding))
	}
	return slices.Clip(out)
}

func decodeAs(t *testing.T, content []byte, encoding string) []byte {
	t.Helper()
	switch strings.ToLower(strings.TrimSpace(encoding)) {
	case "base64":
		b, err := base64.StdEncoding.DecodeString(string(content))
		require.NoError(t, err)
		return b
	case "hex":
		b, err := hex.DecodeString(string(content))
		require.NoError(t, err)
		return b
	}
	return content
}

// assertSyncedSecrets checks the Secrets the class's secretObjects ask for
// against what the upstream driver builds from the mounted files: each
// data key holds its object's file, except in a kubernetes.io/tls Secret,
// where tls.key is the private key (PKCS#1 for RSA, SEC 1 for EC) and
// tls.crt the file's certificates; every Secret carries the managed label.
func assertSyncedSecrets(ctx context.Context, t *testing.T, e *driverEnv, class map[string]any, files map[string]string) {
	t.Helper()
	objs, _, _ := unstructured.NestedSlice(class, "spec", "secretObjects")
	ns := class["metadata"].(map[string]any)["namespace"].(string)
	for _, so := range objs {
		so := so.(map[string]any)
		name, _ := so["secretName"].(string)
		typ, _ := so["type"].(string)
		want := map[string]string{}
		data, _ := so["data"].([]any)
		for _, d := range data {
			d := d.(map[string]any)
			key, obj := strings.TrimSpace(d["key"].(string)), strings.TrimSpace(d["objectName"].(string))
			content := files[obj]
			if typ == string(corev1.SecretTypeTLS) {
				content = tlsPart(t, []byte(content), key)
			}
			want[key] = content
		}
		var got *corev1.Secret
		require.Eventually(t, func() bool {
			s, err := e.cp.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
			got = s
			return err == nil
		}, 10*time.Second, 50*time.Millisecond, "Secret %s/%s never synced", ns, name)
		assert.Equal(t, corev1.SecretType(typ), got.Type)
		gotData := map[string]string{}
		for k, v := range got.Data {
			gotData[k] = string(v)
		}
		assert.Equal(t, want, gotData, "Secret %s/%s", ns, name)
		assert.Equal(t, "true", got.Labels["secrets-store.csi.k8s.io/managed"])
	}
}

func tlsPart(t *testing.T, content []byte, key string) string {
	t.Helper()
	var certs []byte
	var keyDER []byte
	for {
		b, rest := pem.Decode(content)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certs = append(certs, pem.EncodeToMemory(b)...)
		} else {
			keyDER = b.Bytes
		}
		content = rest
	}
	if key == corev1.TLSCertKey {
		return string(certs)
	}
	require.Equal(t, corev1.TLSPrivateKeyKey, key)
	var k any
	var err error
	if k, err = x509.ParsePKCS8PrivateKey(keyDER); err != nil {
		if k, err = x509.ParsePKCS1PrivateKey(keyDER); err != nil {
			k, err = x509.ParseECPrivateKey(keyDER)
		}
	}
	require.NoError(t, err)
	switch k := k.(type) {
	case *rsa.PrivateKey:
		return string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}))
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	}
	t.Fatalf("unexpected key type %T", k)
	return ""
}
