package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	applycorev1 "k8s.io/client-go/applyconfigurations/core/v1"
	applymetav1 "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/secretsync"
	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

// The Secret sync component against a real kube-apiserver: it runs in the
// test process as kvdriver's ServiceAccount, with the chart's RBAC and
// admission policy installed as the chart renders them by default, on
// files that the kvdriver binary really mounted from the emulator.

const (
	syncNamespace   = "apps"
	syncValue1      = "sync-username-planted-in-the-emulator"
	syncValue2      = "sync-username-rotated-in-the-emulator"
	syncDockerAuth  = "c3luYy11c2VyOnN5bmMtcmVnaXN0cnktcGFzc3dvcmQ=" // sync-user:sync-registry-password
	syncPolicyName  = "kvnode-kvdriver-secrets"
	kvdriverAccount = "system:serviceaccount:" + chartNamespace + ":kvnode-kvdriver"
)

var syncDockerConfig = `{"auths":{"registry.example.com":{"auth":"` + syncDockerAuth + `"}}}`

// requestLog records the requests a client sends, as "GET", "POST",
// "PATCH apply", "PATCH strategic", ...
type requestLog struct {
	mu   sync.Mutex
	reqs []string
}

func (l *requestLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		entry := r.Method
		switch ct := r.Header.Get("Content-Type"); {
		case strings.HasPrefix(ct, "application/apply-patch"):
			entry += " apply"
		case ct == string(types.StrategicMergePatchType):
			entry += " strategic"
		case r.Method == http.MethodPatch:
			entry += " " + ct
		}
		l.mu.Lock()
		l.reqs = append(l.reqs, entry)
		l.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

// take returns the requests since the last call.
func (l *requestLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.reqs
	l.reqs = nil
	return out
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// syncEnv is a control plane with the chart's kvdriver RBAC and Secret
// admission policy, and kvdriver's credentials.
type syncEnv struct {
	cp *controlplane.ControlPlane
	// asDriver is a client configuration of kvdriver's ServiceAccount.
	asDriver *rest.Config
	// driver is a clientset of asDriver.
	driver kubernetes.Interface
	// requests are the requests of the Syncers made by newSyncer.
	requests *requestLog
	// logs is where their loggers write, at the highest verbosity.
	logs *syncBuffer
	ctx  context.Context
}

// startSyncEnv installs the chart's kvdriver RBAC and admission policy on cp
// and waits until the API server enforces the policy.
func startSyncEnv(t *testing.T, cp *controlplane.ControlPlane) *syncEnv {
	t.Helper()
	ctx := callCtx(t)
	asDriver := installDriverRBAC(t, cp)
	var policy []*unstructured.Unstructured
	for _, o := range renderChart(t) {
		if o.GetKind() == "ValidatingAdmissionPolicy" || o.GetKind() == "ValidatingAdmissionPolicyBinding" {
			policy = append(policy, o)
		}
	}
	require.Len(t, policy, 2, "the chart renders the policy and its binding by default")
	applyObjects(t, cp.Config, policy, false)
	require.NoError(t, cp.EnsureNamespace(ctx, syncNamespace))

	driver, err := kubernetes.NewForConfig(asDriver)
	require.NoError(t, err)
	// The policy is in force once the API server's policy informer has it.
	require.Eventually(t, func() bool {
		_, err := driver.CoreV1().Secrets(syncNamespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "probe"}},
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), syncPolicyName)
	}, 30*time.Second, 100*time.Millisecond, "the admission policy never took effect")
	// The policy's status (type checking) is written by
	// kube-controller-manager, which these tests do not run; an expression
	// that failed to evaluate would deny every request (failurePolicy
	// Fail), which the tests of what kvdriver can do would catch.
	return &syncEnv{cp: cp, asDriver: asDriver, driver: driver, requests: &requestLog{}, logs: &syncBuffer{}, ctx: ctx}
}

// newSyncer returns a Syncer, one node's, acting as kvdriver, whose
// requests e.requests records.
func (e *syncEnv) newSyncer(t *testing.T, opts secretsync.Options) *secretsync.Syncer {
	t.Helper()
	cfg := rest.CopyConfig(e.asDriver)
	cfg.Wrap(e.requests.wrap)
	core, err := kube.NewCore(cfg)
	require.NoError(t, err)
	return secretsync.New(core, opts)
}

// syncCtx carries a logger that writes everything, client-go's request
// and response bodies included if they were let through, to e.logs.
func (e *syncEnv) syncCtx() context.Context {
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(e.logs), textlogger.Verbosity(10)))
	return klog.NewContext(e.ctx, logger)
}

// secret reads a Secret with the administrator's client.
func (e *syncEnv) secret(t *testing.T, name string) *corev1.Secret {
	t.Helper()
	s, err := e.cp.Client.CoreV1().Secrets(syncNamespace).Get(e.ctx, name, metav1.GetOptions{})
	require.NoError(t, err, "Secret %s", name)
	return s
}

func (e *syncEnv) createPod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	pod, err := e.cp.Client.CoreV1().Pods(syncNamespace).Create(e.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: syncNamespace, Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return pod
}

func syncPod(p *corev1.Pod) secretsync.Pod {
	return secretsync.Pod{Namespace: p.Namespace, Name: p.Name, UID: p.UID}
}

// podOwners are the owner references kvdriver gives a Secret for pods.
func podOwners(pods ...*corev1.Pod) []metav1.OwnerReference {
	var out []metav1.OwnerReference
	for _, p := range pods {
		out = append(out, metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: p.Name, UID: p.UID})
	}
	return out
}

// mountedFiles reads a volume kvdriver wrote, as kvdriver hands it to the
// Syncer: every file below the atomic writer's ..data, by its path
// relative to the mount.
func mountedFiles(t *testing.T, target string) map[string][]byte {
	t.Helper()
	dataDir, err := os.Readlink(filepath.Join(target, "..data"))
	require.NoError(t, err)
	root := filepath.Join(target, dataDir)
	files := map[string][]byte{}
	require.NoError(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		files[rel], err = os.ReadFile(p)
		return err
	}))
	return files
}

// createSyncClass stores a SecretProviderClass with secretObjects.
func (e *driverEnv) createSyncClass(t *testing.T, name, objects string, secretObjects []spc.SecretObject) {
	t.Helper()
	class := &spc.SecretProviderClass{
		TypeMeta:   metav1.TypeMeta{APIVersion: spc.SchemeGroupVersion.String(), Kind: "SecretProviderClass"},
		ObjectMeta: metav1.ObjectMeta{Namespace: syncNamespace, Name: name},
		Spec: spc.SecretProviderClassSpec{Provider: "azure", SecretObjects: secretObjects, Parameters: map[string]string{
			"keyvaultName": e2eVault, "tenantId": e2eTenant, "objects": objects,
		}},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(class)
	require.NoError(t, err)
	_, err = e.dyn.Resource(spc.SecretProviderClassesResource).Namespace(syncNamespace).
		Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// publish has kvdriver publish pod's volume of class (again, if it is
// mounted) and returns the files it wrote.
func (e *driverEnv) publish(t *testing.T, pod *corev1.Pod, class string) map[string][]byte {
	t.Helper()
	req := e.publishRequest(pod, "secrets-store-inline", class, map[string]string{"clientid": spClientID, "clientsecret": spSecret}, "")
	mkTargetParent(t, req.TargetPath)
	_, err := e.node.NodePublishVolume(callCtx(t), req)
	require.NoError(t, err)
	return mountedFiles(t, req.TargetPath)
}

// seedSyncVault fills the e2e vault with what the upstream examples mount.
func seedSyncVault(t *testing.T, e *driverEnv) *emulator.IssuedCertificate {
	t.Helper()
	sp, err := e.emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: spClientID, Secret: spSecret})
	require.NoError(t, err)
	require.NoError(t, e.emu.CreateVault(e2eVault, emulator.VaultOptions{TenantID: e2eTenant}))
	require.NoError(t, e.emu.Grant(e2eVault, sp.ObjectID))
	_, err = e.emu.SetSecret(e2eVault, "username", syncValue1, emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = e.emu.CreateKey(e2eVault, "signing-key", emulator.KeyOptions{Type: "RSA", Size: 2048})
	require.NoError(t, err)
	_, err = e.emu.SetSecret(e2eVault, "dockerconfigjson", syncDockerConfig, emulator.SecretOptions{})
	require.NoError(t, err)
	cert, err := e.emu.CreateCertificate(e2eVault, "ingresscert", emulator.CertificateOptions{
		ContentType: "application/x-pkcs12", ChainLength: 3, KeyType: "RSA", ShuffleChain: true, Subject: "CN=demo.test.com"})
	require.NoError(t, err)
	return cert
}

// upstreamTLS is the kubernetes.io/tls data the upstream driver builds from
// a certificate-backed secret: the key as PKCS#1 (RSA) or SEC 1 (EC), the
// chain as kvdriver orders it in the mount, leaf to root.
func upstreamTLS(t *testing.T, c *emulator.IssuedCertificate) map[string][]byte {
	t.Helper()
	var key []byte
	switch k := c.Key.(type) {
	case *rsa.PrivateKey:
		key = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		key = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	default:
		t.Fatalf("unexpected key %T", c.Key)
	}
	var chain []byte
	for _, cert := range c.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return map[string][]byte{"tls.key": key, "tls.crt": chain}
}

// assertSecret checks everything of a synced Secret that the upstream
// driver sets, and that nothing else is set.
func assertSecret(t *testing.T, s *corev1.Secret, typ corev1.SecretType, labels, annotations map[string]string, data map[string][]byte, owners []metav1.OwnerReference) {
	t.Helper()
	assert.Equal(t, typ, s.Type, "type")
	assert.Equal(t, labels, s.Labels, "labels")
	assert.Equal(t, annotations, s.Annotations, "annotations")
	assert.Equal(t, len(data), len(s.Data), "number of keys")
	for k, v := range data {
		assert.Equal(t, string(v), string(s.Data[k]), "data[%s]", k)
	}
	assert.ElementsMatch(t, owners, s.OwnerReferences, "owner references")
	assert.Nil(t, s.Immutable)
	assert.Empty(t, s.Finalizers)
}

// assertNoSecretIn checks that logs hold none of values, as they are or
// base64-encoded as a Secret's data travels in API requests.
func assertNoSecretIn(t *testing.T, logs string, values ...string) {
	t.Helper()
	for _, v := range values {
		assert.NotContains(t, logs, v, "a secret value reached the logs")
		assert.NotContains(t, logs, base64.StdEncoding.EncodeToString([]byte(v)), "a base64-encoded secret value reached the logs")
	}
}

// The upstream documentation's sync examples (sync-with-k8s-secrets.md,
// set-env-var.md, ingress-tls.md, the dockerconfigjson example), mounted
// by the kvdriver binary and synced as kvdriver's ServiceAccount: the
// Secrets the upstream driver would create, owners, rotation, and no
// request when nothing changed.
func TestSecretSyncUpstreamExamples(t *testing.T) {
	testenv.RequireNetns(t)
	cp, emu := startNode(t)
	// No object cache: a rotation shows at the next republish.
	// kvdriver only mounts here; the test syncs with its own Syncer, whose
	// requests it counts (TestKVDriverSyncsSecrets has the binary sync).
	d := startKVDriver(t, cp, emu, "--object-cache-ttl", "0", "--sync-secrets=false")
	e := startSyncEnv(t, cp)
	cert := seedSyncVault(t, d)
	clock := clocktesting.NewFakeClock(time.Now())
	syncer := e.newSyncer(t, secretsync.Options{Clock: clock})
	ctx := e.syncCtx()

	envClass := []spc.SecretObject{{SecretName: "foosecret", Type: "Opaque", Labels: map[string]string{"environment": "test"},
		Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "username"}}}}
	d.createSyncClass(t, "azure-sync", `array:
  - |
    objectName: username
    objectType: secret
    objectAlias: secretalias
  - |
    objectName: signing-key
    objectType: key
`, envClass)
	tlsClass := []spc.SecretObject{{SecretName: "ingress-tls-csi", Type: "kubernetes.io/tls",
		Data: []spc.SecretObjectData{{ObjectName: "ingresscert", Key: "tls.key"}, {ObjectName: "ingresscert", Key: "tls.crt"}}}}
	d.createSyncClass(t, "azure-tls", "array:\n  - |\n    objectName: ingresscert\n    objectType: secret\n", tlsClass)
	dockerClass := []spc.SecretObject{{SecretName: "dockerconfig", Type: "kubernetes.io/dockerconfigjson",
		Data: []spc.SecretObjectData{{ObjectName: "dockerconfigjson", Key: ".dockerconfigjson"}}}}
	d.createSyncClass(t, "azure-docker-config", "array:\n  - |\n    objectName: dockerconfigjson\n    objectType: secret\n", dockerClass)

	managed := map[string]string{secretsync.ManagedLabel: "true"}
	web0, web1 := d.createPod(t, syncNamespace, "busybox-0", "default"), d.createPod(t, syncNamespace, "busybox-1", "default")
	ingress := d.createPod(t, syncNamespace, "ingress-nginx-0", "default")
	puller := d.createPod(t, syncNamespace, "private-image-0", "default")

	t.Run("env var: Opaque with the class's labels", func(t *testing.T) {
		require.NoError(t, syncer.Sync(ctx, syncPod(web0), envClass, d.publish(t, web0, "azure-sync")))
		assert.Equal(t, []string{"PATCH apply", "PATCH strategic"}, e.requests.take(), "the content, then the pod as owner")
		assertSecret(t, e.secret(t, "foosecret"), corev1.SecretTypeOpaque, map[string]string{"environment": "test", secretsync.ManagedLabel: "true"}, nil,
			map[string][]byte{"username": []byte(syncValue1)}, podOwners(web0))
	})

	t.Run("ingress: kubernetes.io/tls from a certificate-backed secret, key and chain", func(t *testing.T) {
		require.NoError(t, syncer.Sync(ctx, syncPod(ingress), tlsClass, d.publish(t, ingress, "azure-tls")))
		assertSecret(t, e.secret(t, "ingress-tls-csi"), corev1.SecretTypeTLS, managed, nil, upstreamTLS(t, cert), podOwners(ingress))
		e.requests.take()
	})

	t.Run("image pull: kubernetes.io/dockerconfigjson", func(t *testing.T) {
		require.NoError(t, syncer.Sync(ctx, syncPod(puller), dockerClass, d.publish(t, puller, "azure-docker-config")))
		assertSecret(t, e.secret(t, "dockerconfig"), corev1.SecretTypeDockerConfigJson, managed, nil,
			map[string][]byte{".dockerconfigjson": []byte(syncDockerConfig)}, podOwners(puller))
		e.requests.take()
	})

	rv := e.secret(t, "foosecret").ResourceVersion
	t.Run("a republish with nothing changed sends no request", func(t *testing.T) {
		for range 3 {
			require.NoError(t, syncer.Sync(ctx, syncPod(web0), envClass, d.publish(t, web0, "azure-sync")))
		}
		assert.Empty(t, e.requests.take())
		assert.Equal(t, rv, e.secret(t, "foosecret").ResourceVersion)
	})

	t.Run("a second consumer pod shares the Secret and is an owner too", func(t *testing.T) {
		require.NoError(t, syncer.Sync(ctx, syncPod(web1), envClass, d.publish(t, web1, "azure-sync")))
		assert.Equal(t, []string{"PATCH strategic"}, e.requests.take(), "the content is unchanged: only the owner is added")
		assertSecret(t, e.secret(t, "foosecret"), corev1.SecretTypeOpaque, map[string]string{"environment": "test", secretsync.ManagedLabel: "true"}, nil,
			map[string][]byte{"username": []byte(syncValue1)}, podOwners(web0, web1))
	})

	t.Run("a rotation updates the Secret and keeps its owners", func(t *testing.T) {
		_, err := d.emu.SetSecret(e2eVault, "username", syncValue2, emulator.SecretOptions{})
		require.NoError(t, err)
		require.NoError(t, syncer.Sync(ctx, syncPod(web1), envClass, d.publish(t, web1, "azure-sync")))
		assert.Equal(t, []string{"PATCH apply"}, e.requests.take())
		s := e.secret(t, "foosecret")
		assertSecret(t, s, corev1.SecretTypeOpaque, map[string]string{"environment": "test", secretsync.ManagedLabel: "true"}, nil,
			map[string][]byte{"username": []byte(syncValue2)}, podOwners(web0, web1))
		assert.NotEqual(t, rv, s.ResourceVersion)
		rv = s.ResourceVersion

		require.NoError(t, syncer.Sync(ctx, syncPod(web0), envClass, d.publish(t, web0, "azure-sync")))
		assert.Empty(t, e.requests.take(), "the node already applied the rotated content")
	})

	t.Run("after a resync the requests go again and the API server stores nothing", func(t *testing.T) {
		clock.Step(secretsync.DefaultResync)
		require.NoError(t, syncer.Sync(ctx, syncPod(web0), envClass, d.publish(t, web0, "azure-sync")))
		assert.Equal(t, []string{"PATCH apply", "PATCH strategic"}, e.requests.take())
		assert.Equal(t, rv, e.secret(t, "foosecret").ResourceVersion, "an unchanged apply and patch write nothing")
	})

	t.Run("a Secret deleted behind kvdriver's back comes back with the next consumer", func(t *testing.T) {
		require.NoError(t, cp.Client.CoreV1().Secrets(syncNamespace).Delete(e.ctx, "foosecret", metav1.DeleteOptions{}))
		web2 := d.createPod(t, syncNamespace, "busybox-2", "default")
		require.NoError(t, syncer.Sync(ctx, syncPod(web2), envClass, d.publish(t, web2, "azure-sync")))
		assert.Equal(t, []string{"PATCH strategic", "PATCH apply", "PATCH strategic"}, e.requests.take())
		assertSecret(t, e.secret(t, "foosecret"), corev1.SecretTypeOpaque, map[string]string{"environment": "test", secretsync.ManagedLabel: "true"}, nil,
			map[string][]byte{"username": []byte(syncValue2)}, podOwners(web2))
	})

	t.Run("a Secret the upstream driver synced is taken over", func(t *testing.T) {
		// As the upstream driver leaves it: its manager, the managed label,
		// an owner reference to the pods' ReplicaSet, a label a person added.
		rs := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "ingress-nginx-5d4f", UID: "0b6d3c52-3a0e-4f7e-9d55-6c1f0f6a2b11"}
		_, err := cp.Client.CoreV1().Secrets(syncNamespace).Create(e.ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "legacy-tls", Labels: map[string]string{secretsync.ManagedLabel: "true", "team": "edge"}, OwnerReferences: []metav1.OwnerReference{rs}},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.key": []byte("old key"), "tls.crt": []byte("old chain")},
		}, metav1.CreateOptions{FieldManager: "secrets-store-csi-driver"})
		require.NoError(t, err)
		legacy := []spc.SecretObject{{SecretName: "legacy-tls", Type: "kubernetes.io/tls", Data: tlsClass[0].Data}}
		require.NoError(t, syncer.Sync(ctx, syncPod(ingress), legacy, d.publish(t, ingress, "azure-tls")))
		assertSecret(t, e.secret(t, "legacy-tls"), corev1.SecretTypeTLS, map[string]string{secretsync.ManagedLabel: "true", "team": "edge"}, nil,
			upstreamTLS(t, cert), append(podOwners(ingress), rs))
		e.requests.take()
	})

	assertNoSecretIn(t, e.logs.String(), syncValue1, syncValue2, syncDockerConfig, string(upstreamTLS(t, cert)["tls.key"]))
	assert.Contains(t, e.logs.String(), "synced Secret", "the logger captured the Syncer's lines")
}

// Bad entries of spec.secretObjects: a *FieldError naming the field, no
// request, and the Secret as it was; the good entries of the class are
// synced all the same.
func TestSecretSyncBadConfiguration(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{})
	e := startSyncEnv(t, cp)
	syncer := e.newSyncer(t, secretsync.Options{})
	ctx := e.syncCtx()
	pod := e.createPod(t, "web-0")
	files := map[string][]byte{"secretalias": []byte(syncValue1)}
	good := spc.SecretObject{SecretName: "foosecret", Type: "Opaque", Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "username"}}}
	require.NoError(t, syncer.Sync(ctx, syncPod(pod), []spc.SecretObject{good}, files))
	rv := e.secret(t, "foosecret").ResourceVersion
	e.requests.take()

	for _, tc := range []struct {
		name  string
		obj   spc.SecretObject
		field string
	}{
		{"an objectName that is not mounted", spc.SecretObject{SecretName: "foosecret", Type: "Opaque",
			Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "username"}, {ObjectName: "secret2", Key: "password"}}}, "secretObjects[0].data[1].objectName"},
		{"a type kvdriver does not sync", spc.SecretObject{SecretName: "foosecret", Type: "kubernetes.io/service-account-token",
			Data: good.Data}, "secretObjects[0].type"},
		{"an empty secretName", spc.SecretObject{Type: "Opaque", Data: good.Data}, "secretObjects[0].secretName"},
		{"a key that is not a Secret key", spc.SecretObject{SecretName: "foosecret", Type: "Opaque",
			Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "user name"}}}, "secretObjects[0].data[0].key"},
		{"tls from a file with no key", spc.SecretObject{SecretName: "newtls", Type: "kubernetes.io/tls",
			Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "tls.key"}, {ObjectName: "secretalias", Key: "tls.crt"}}}, "secretObjects[0].data[0].objectName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := spc.SecretObject{SecretName: "other-" + strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"), Type: "Opaque", Data: good.Data}
			err := syncer.Sync(ctx, syncPod(pod), []spc.SecretObject{tc.obj, other}, files)
			errs := secretsync.Errors(err)
			require.Len(t, errs, 1, "%v", err)
			var fe *secretsync.FieldError
			require.ErrorAs(t, errs[0], &fe)
			assert.Equal(t, tc.field, fe.Field)
			assert.NotContains(t, err.Error(), syncValue1)
			assert.Equal(t, []string{"PATCH apply", "PATCH strategic"}, e.requests.take(), "only the good entry is written")
			assert.Equal(t, rv, e.secret(t, "foosecret").ResourceVersion, "the Secret is as it was")
			_, err = cp.Client.CoreV1().Secrets(syncNamespace).Get(e.ctx, "newtls", metav1.GetOptions{})
			assert.True(t, apierrors.IsNotFound(err), "nothing is created for a bad entry")
			e.secret(t, other.SecretName)
		})
	}
}

// What kvdriver's ServiceAccount cannot do with Secrets, proved with its
// own credentials against the chart's RBAC and admission policy.
func TestSecretSyncWhatKVDriverCannotDo(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{})
	e := startSyncEnv(t, cp)
	ctx := e.ctx
	secrets := e.driver.CoreV1().Secrets(syncNamespace)
	admin := cp.Client.CoreV1().Secrets(syncNamespace)
	pod := e.createPod(t, "web-0")
	syncer := e.newSyncer(t, secretsync.Options{})
	managed := spc.SecretObject{SecretName: "managed", Type: "Opaque", Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "username"}}}
	require.NoError(t, syncer.Sync(e.syncCtx(), syncPod(pod), []spc.SecretObject{managed}, map[string][]byte{"secretalias": []byte(syncValue1)}))
	_, err := admin.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "users"}, Data: map[string][]byte{"password": []byte("a person's")}}, metav1.CreateOptions{})
	require.NoError(t, err)
	forbiddenByRBAC := func(t *testing.T, err error) {
		t.Helper()
		require.Error(t, err)
		assert.True(t, apierrors.IsForbidden(err), "%v", err)
		assert.Contains(t, err.Error(), `User "`+kvdriverAccount+`" cannot`)
	}
	deniedByPolicy := func(t *testing.T, err error, why string) {
		t.Helper()
		require.Error(t, err)
		assert.True(t, apierrors.IsForbidden(err), "%v", err)
		assert.Contains(t, err.Error(), "ValidatingAdmissionPolicy '"+syncPolicyName+"'")
		assert.Contains(t, err.Error(), why)
	}
	labelled := map[string]string{secretsync.ManagedLabel: "true"}
	apply := func(ac *applycorev1.SecretApplyConfiguration) error {
		_, err := secrets.Apply(ctx, ac, metav1.ApplyOptions{FieldManager: "kvdriver", Force: true})
		return err
	}
	patch := func(name, body string) error {
		_, err := secrets.Patch(ctx, name, types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{FieldManager: "kvdriver"})
		return err
	}

	t.Run("read any Secret, its own included", func(t *testing.T) {
		for _, name := range []string{"managed", "users"} {
			_, err := secrets.Get(ctx, name, metav1.GetOptions{})
			forbiddenByRBAC(t, err)
		}
		_, err := secrets.List(ctx, metav1.ListOptions{})
		forbiddenByRBAC(t, err)
		_, err = e.driver.CoreV1().Secrets("").List(ctx, metav1.ListOptions{LabelSelector: secretsync.ManagedLabel + "=true"})
		forbiddenByRBAC(t, err)
		_, err = secrets.Watch(ctx, metav1.ListOptions{})
		forbiddenByRBAC(t, err)
	})

	t.Run("update or delete a Secret", func(t *testing.T) {
		_, err := secrets.Update(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "managed", Labels: labelled}}, metav1.UpdateOptions{})
		forbiddenByRBAC(t, err)
		forbiddenByRBAC(t, secrets.Delete(ctx, "managed", metav1.DeleteOptions{}))
		forbiddenByRBAC(t, secrets.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}))
	})

	t.Run("write a Secret without the managed label", func(t *testing.T) {
		_, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unlabelled"}}, metav1.CreateOptions{})
		deniedByPolicy(t, err, "writes only Secrets labelled")
		deniedByPolicy(t, apply(applycorev1.Secret("unlabelled", syncNamespace).WithStringData(map[string]string{"k": "v"})), "writes only Secrets labelled")
		deniedByPolicy(t, apply(applycorev1.Secret("unlabelled", syncNamespace).WithLabels(map[string]string{secretsync.ManagedLabel: "yes"})), "writes only Secrets labelled")
	})

	t.Run("take over a Secret it does not manage", func(t *testing.T) {
		deniedByPolicy(t, apply(applycorev1.Secret("users", syncNamespace).WithLabels(labelled).WithStringData(map[string]string{"password": "kvdriver's"})), "does not take over")
		deniedByPolicy(t, patch("users", `{"metadata":{"labels":{"`+secretsync.ManagedLabel+`":"true"}}}`), "does not take over")
		// The Syncer reports it, and the Secret stays the person's.
		err := syncer.Sync(e.syncCtx(), syncPod(pod), []spc.SecretObject{{SecretName: "users", Type: "Opaque", Data: managed.Data}},
			map[string][]byte{"secretalias": []byte(syncValue1)})
		var we *secretsync.WriteError
		require.ErrorAs(t, err, &we)
		assert.Equal(t, "apply", we.Op)
		deniedByPolicy(t, we.Err, "does not take over")
		s, err := admin.Get(ctx, "users", metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, map[string][]byte{"password": []byte("a person's")}, s.Data)
		assert.Empty(t, s.Labels)
	})

	t.Run("remove the managed label", func(t *testing.T) {
		deniedByPolicy(t, patch("managed", `{"metadata":{"labels":{"`+secretsync.ManagedLabel+`":null}}}`), "never removes that label")
		deniedByPolicy(t, apply(applycorev1.Secret("managed", syncNamespace).WithLabels(map[string]string{secretsync.ManagedLabel: "false"})), "never removes that label")
		_, err := secrets.Apply(ctx, applycorev1.Secret("managed", syncNamespace).WithLabels(map[string]string{"other": "x"}),
			metav1.ApplyOptions{FieldManager: "kvdriver", Force: true}) // dropping it from kvdriver's own apply
		deniedByPolicy(t, err, "never removes that label")
		assert.Equal(t, "true", e.secret(t, "managed").Labels[secretsync.ManagedLabel])
	})

	t.Run("write a type outside syncSecret.types", func(t *testing.T) {
		for _, tc := range []struct {
			typ         corev1.SecretType
			annotations map[string]string
		}{
			{corev1.SecretTypeServiceAccountToken, map[string]string{corev1.ServiceAccountNameKey: "default"}},
			{corev1.SecretTypeBootstrapToken, nil},
			{"helm.sh/release.v1", nil},
		} {
			name := "typed-" + strings.NewReplacer("/", "-", ".", "-").Replace(string(tc.typ))
			deniedByPolicy(t, apply(applycorev1.Secret(name, syncNamespace).WithLabels(labelled).WithType(tc.typ).WithAnnotations(tc.annotations)),
				"only Secrets of the types")
		}
	})

	t.Run("add an owner that is not a Pod, or a controlling one", func(t *testing.T) {
		owner := func(apiVersion, kind string, controller bool) string {
			return fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":%q,"kind":%q,"name":"x","uid":"5a3b6a2e-0d8f-4c55-8e0b-3c9c2f4d1a77","controller":%t}]}}`, apiVersion, kind, controller)
		}
		deniedByPolicy(t, patch("managed", owner("apps/v1", "Deployment", false)), "adds only Pods as owners")
		deniedByPolicy(t, patch("managed", owner("v1", "Pod", true)), "adds only Pods as owners")
		deniedByPolicy(t, apply(applycorev1.Secret("owned", syncNamespace).WithLabels(labelled).
			WithOwnerReferences(applymetav1.OwnerReference().WithAPIVersion("v1").WithKind("Namespace").WithName("apps").WithUID("6e4f1d0c-2b7a-4d3e-9f8a-1b2c3d4e5f60"))),
			"adds only Pods as owners")
		// What kvdriver itself does is allowed: a Pod, not controlling.
		require.NoError(t, patch("managed", owner("v1", "Pod", false)))
	})

	// Nothing above reached a Secret.
	s, err := admin.Get(ctx, "managed", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, map[string][]byte{"username": []byte(syncValue1)}, s.Data)
	list, err := admin.List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	var names []string
	for _, s := range list.Items {
		names = append(names, s.Name)
	}
	assert.ElementsMatch(t, []string{"managed", "users"}, names)
}

// Server-side apply that creates a Secret is authorised as both patch and
// create: kvdriver's ClusterRole needs both verbs, and no more.
func TestSecretSyncApplyNeedsCreateAndPatch(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{})
	ctx := callCtx(t)
	require.NoError(t, cp.EnsureNamespace(ctx, syncNamespace))
	for i, tc := range []struct {
		verbs  []string
		create bool // the apply may create the Secret
		update bool // the apply may change an existing one
	}{
		{verbs: []string{"patch"}, create: false, update: true},
		{verbs: []string{"create"}, create: false, update: false},
		{verbs: []string{"create", "patch"}, create: true, update: true},
	} {
		t.Run(strings.Join(tc.verbs, "+"), func(t *testing.T) {
			name := fmt.Sprintf("probe-%d", i)
			_, err := cp.CreateServiceAccount(ctx, syncNamespace, name, nil)
			require.NoError(t, err)
			_, err = cp.Client.RbacV1().Roles(syncNamespace).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: tc.verbs}}}, metav1.CreateOptions{})
			require.NoError(t, err)
			_, err = cp.Client.RbacV1().RoleBindings(syncNamespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
				RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: syncNamespace}}}, metav1.CreateOptions{})
			require.NoError(t, err)
			cfg, err := cp.AsServiceAccount(ctx, syncNamespace, name)
			require.NoError(t, err)
			cs, err := kubernetes.NewForConfig(cfg)
			require.NoError(t, err)
			// The binding is in force once the authorizer's cache has it.
			require.Eventually(t, func() bool {
				r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
					Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
						Namespace: syncNamespace, Verb: tc.verbs[0], Resource: "secrets"}}}, metav1.CreateOptions{})
				return err == nil && r.Status.Allowed
			}, 30*time.Second, 50*time.Millisecond)
			apply := func(secret string) error {
				ac := applycorev1.Secret(secret, syncNamespace).WithStringData(map[string]string{"k": "v"})
				_, err := cs.CoreV1().Secrets(syncNamespace).Apply(ctx, ac, metav1.ApplyOptions{FieldManager: "probe", Force: true})
				return err
			}
			err = apply(name + "-new")
			if tc.create {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.True(t, apierrors.IsForbidden(err), "%v", err)
			}
			_, err = cp.Client.CoreV1().Secrets(syncNamespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-existing"}}, metav1.CreateOptions{})
			require.NoError(t, err)
			err = apply(name + "-existing")
			if tc.update {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.True(t, apierrors.IsForbidden(err), "%v", err)
			}
		})
	}
}

// Many pods of one Deployment, spread over nodes (one Syncer each), publish
// at once: every Secret write succeeds and the Secret ends with the content
// and every pod as an owner.
func TestSecretSyncConcurrentNodesConverge(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{})
	e := startSyncEnv(t, cp)
	const nodes, podsPerNode = 3, 4
	var pods []*corev1.Pod
	for i := range nodes * podsPerNode {
		pods = append(pods, e.createPod(t, fmt.Sprintf("web-%d", i)))
	}
	class := []spc.SecretObject{{SecretName: "foosecret", Type: "Opaque", Labels: map[string]string{"app": "web"},
		Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "username"}}}}
	syncers := make([]*secretsync.Syncer, nodes)
	for n := range nodes {
		syncers[n] = e.newSyncer(t, secretsync.Options{})
	}
	run := func(value string) {
		files := map[string][]byte{"secretalias": []byte(value)}
		var wg sync.WaitGroup
		errs := make([]error, len(pods))
		for i, p := range pods {
			wg.Go(func() { errs[i] = syncers[i%nodes].Sync(e.syncCtx(), syncPod(p), class, files) })
		}
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "pod %d", i)
		}
	}
	run(syncValue1)
	count := map[string]int{}
	for _, r := range e.requests.take() {
		count[r]++
	}
	assert.Equal(t, map[string]int{"PATCH apply": nodes, "PATCH strategic": len(pods)}, count, "one apply per node, one owner patch per pod")
	assertSecret(t, e.secret(t, "foosecret"), corev1.SecretTypeOpaque, map[string]string{"app": "web", secretsync.ManagedLabel: "true"}, nil,
		map[string][]byte{"username": []byte(syncValue1)}, podOwners(pods...))

	run(syncValue2) // a rotation reaching every node at once
	assertSecret(t, e.secret(t, "foosecret"), corev1.SecretTypeOpaque, map[string]string{"app": "web", secretsync.ManagedLabel: "true"}, nil,
		map[string][]byte{"username": []byte(syncValue2)}, podOwners(pods...))
	count = map[string]int{}
	for _, r := range e.requests.take() {
		count[r]++
	}
	assert.Equal(t, map[string]int{"PATCH apply": nodes}, count)
}

// The rights the chart gives kvdriver over Secrets, pinned so that they
// cannot grow unseen, and the policy's types, which must be the Syncer's.
func TestSecretSyncChartRights(t *testing.T) {
	baseRules := []any{
		map[string]any{"apiGroups": []any{"secrets-store.csi.x-k8s.io"}, "resources": []any{"secretproviderclasses"}, "verbs": []any{"get", "list", "watch"}},
		map[string]any{"apiGroups": []any{"secrets-store.csi.x-k8s.io"}, "resources": []any{"secretproviderclasspodstatuses"}, "verbs": []any{"get", "create", "update"}},
		map[string]any{"apiGroups": []any{""}, "resources": []any{"events"}, "verbs": []any{"create", "patch"}},
	}
	secretRule := map[string]any{"apiGroups": []any{""}, "resources": []any{"secrets"}, "verbs": []any{"create", "patch"}}
	for _, tc := range []struct {
		name   string
		values []string
		rules  []any
		policy bool
	}{
		{"defaults", nil, append(baseRules[:3:3], secretRule), true},
		{"sync off", []string{"syncSecret.enabled=false"}, baseRules, false},
		{"policy off (clusters before 1.30)", []string{"syncSecret.admissionPolicy.enabled=false"}, append(baseRules[:3:3], secretRule), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			byKind := kinds(renderChart(t, tc.values...))
			require.Contains(t, byKind, "ClusterRole/kvnode-kvdriver")
			assert.Equal(t, tc.rules, byKind["ClusterRole/kvnode-kvdriver"].Object["rules"])
			vap, binding := byKind["ValidatingAdmissionPolicy/"+syncPolicyName], byKind["ValidatingAdmissionPolicyBinding/"+syncPolicyName]
			if !tc.policy {
				assert.Nil(t, vap)
				assert.Nil(t, binding)
				return
			}
			require.NotNil(t, vap)
			require.NotNil(t, binding)
			actions, _, _ := unstructured.NestedStringSlice(binding.Object, "spec", "validationActions")
			assert.Equal(t, []string{"Deny"}, actions)
			failure, _, _ := unstructured.NestedString(vap.Object, "spec", "failurePolicy")
			assert.Equal(t, "Fail", failure)
			conds, _, _ := unstructured.NestedSlice(vap.Object, "spec", "matchConditions")
			require.Len(t, conds, 1)
			assert.Equal(t, `request.userInfo.username == "`+kvdriverAccount+`"`, conds[0].(map[string]any)["expression"])
			var want []string
			for _, typ := range secretsync.DefaultTypes() {
				want = append(want, fmt.Sprintf("%q", typ))
			}
			assert.Contains(t, fmt.Sprint(vap.Object["spec"]), "object.type in ["+strings.Join(want, ",")+"]",
				"the policy's types are the Syncer's defaults")
		})
	}
}

// TestKVDriverSyncsSecrets: the kvdriver binary, under the chart's RBAC and
// admission policy, writes the Secrets of a class's secretObjects when it
// publishes (the upstream docs' env-var and ingress TLS examples), owned by
// the consumer pods; a rotation updates them at the next republish; a bad
// entry and a disabled sync are Warning events on the pod, never a failed
// mount; and no Secret value reaches the driver's log.
func TestKVDriverSyncsSecrets(t *testing.T) {
	testenv.RequireNetns(t)
	cp, emu := startNode(t)
	d := startKVDriver(t, cp, emu, "--object-cache-ttl", "0", "-v", "10")
	disabled := startKVDriver(t, cp, emu, "--object-cache-ttl", "0", "--sync-secrets=false")
	e := startSyncEnv(t, cp)
	cert := seedSyncVault(t, d)
	ctx := callCtx(t)

	envClass := []spc.SecretObject{{SecretName: "foosecret", Type: "Opaque", Labels: map[string]string{"environment": "test"},
		Data: []spc.SecretObjectData{{ObjectName: "secretalias", Key: "username"}}}}
	d.createSyncClass(t, "azure-sync", "array:\n  - |\n    objectName: username\n    objectType: secret\n    objectAlias: secretalias\n", envClass)
	tlsClass := []spc.SecretObject{{SecretName: "ingress-tls-csi", Type: "kubernetes.io/tls",
		Data: []spc.SecretObjectData{{ObjectName: "ingresscert", Key: "tls.key"}, {ObjectName: "ingresscert", Key: "tls.crt"}}}}
	d.createSyncClass(t, "azure-tls", "array:\n  - |\n    objectName: ingresscert\n    objectType: secret\n", tlsClass)
	badClass := []spc.SecretObject{{SecretName: "bad", Type: "Opaque", Data: []spc.SecretObjectData{{ObjectName: "not-mounted", Key: "k"}}}}
	d.createSyncClass(t, "azure-bad-sync", "array:\n  - |\n    objectName: username\n    objectType: secret\n", badClass)
	d.waitForClasses(t, syncNamespace)
	disabled.waitForClasses(t, syncNamespace)

	web0, web1 := e.createPod(t, "web-0"), e.createPod(t, "web-1")
	for _, pod := range []*corev1.Pod{web0, web1} {
		d.publish(t, pod, "azure-sync")
		d.publish(t, pod, "azure-tls")
	}
	assertSecret(t, e.secret(t, "foosecret"), corev1.SecretTypeOpaque,
		map[string]string{"environment": "test", secretsync.ManagedLabel: "true"}, nil,
		map[string][]byte{"username": []byte(syncValue1)}, podOwners(web0, web1))
	assertSecret(t, e.secret(t, "ingress-tls-csi"), corev1.SecretTypeTLS,
		map[string]string{secretsync.ManagedLabel: "true"}, nil, upstreamTLS(t, cert), podOwners(web0, web1))

	// A rotation reaches the Secret at kubelet's next republish.
	_, err := emu.SetSecret(e2eVault, "username", syncValue2, emulator.SecretOptions{})
	require.NoError(t, err)
	d.publish(t, web0, "azure-sync")
	assert.Equal(t, syncValue2, string(e.secret(t, "foosecret").Data["username"]))

	// A bad entry: the volume mounts, the pod is told.
	bad := e.createPod(t, "bad-0")
	files := d.publish(t, bad, "azure-bad-sync")
	assert.Equal(t, syncValue2, string(files["username"]))
	requireWarning(t, cp, bad, "FailedToCreateSecret", "secretObjects[0].data[0].objectName")
	_, err = cp.Client.CoreV1().Secrets(syncNamespace).Get(ctx, "bad", metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "nothing written for a bad entry: %v", err)

	// Sync disabled: the volume mounts, the pod is told.
	off := e.createPod(t, "off-0")
	disabled.publish(t, off, "azure-sync")
	requireWarning(t, cp, off, "FailedToCreateSecret", "Secret sync is disabled on this node")

	assertNoSecretIn(t, d.logs.String(), syncValue1, syncValue2)
	assert.Greater(t, d.metric(t, "sync_k8s_secret_total", map[string]string{"provider": "azure"}), float64(0))
	assert.Greater(t, d.metric(t, "sync_k8s_secret_duration_sec", nil), float64(0))
	assert.Equal(t, float64(1), d.metric(t, "kvnode_sync_k8s_secret_error_total", nil), "the bad entry")
}

// requireWarning waits for a Warning event on pod with reason and a message
// containing want.
func requireWarning(t *testing.T, cp *controlplane.ControlPlane, pod *corev1.Pod, reason, want string) {
	t.Helper()
	require.Eventually(t, func() bool {
		list, err := cp.Client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{
			FieldSelector: "involvedObject.name=" + pod.Name + ",type=Warning,reason=" + reason})
		if err != nil {
			return false
		}
		for _, ev := range list.Items {
			if strings.Contains(ev.Message, want) {
				return true
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "no %s event on %s saying %q", reason, pod.Name, want)
}
