package cluster_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kvnode/kvnode/test/cluster"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/images"
	"github.com/kvnode/kvnode/test/pinned"
	"github.com/kvnode/kvnode/test/testenv"
)

const (
	tenant    = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	vaultName = "kvnode-cluster"
	vaultURL  = "https://" + vaultName + ".vault.azure.net/"
	appNS     = "apps"
	chartNS   = "kvnode"
	// webReplicas pods mount the class at once: the report's sample.
	webReplicas = 10
)

// TestChartOnRealNode installs charts/kvnode with helm on a real
// single-node cluster (kubelet, containerd, runc, the CNI bridge), with
// values that only point the images at the local ones and Azure at the
// emulator, and runs workloads as users write them: a Deployment mounting
// a SecretProviderClass (secret, key, certificate; rotation; a synced
// Secret as an environment variable), pods reading Key Vault with an
// unmodified managed-identity and default credential through nmi (and one
// without a binding, refused), a usePodIdentity mount, then deletes them
// all and uninstalls as the chart's notes say, and checks the node is
// clean. It ends with a report: pod start times, tokens, Key Vault calls.
func TestChartOnRealNode(t *testing.T) {
	set := images.LoadT(t)
	before := nodeBefore()
	n := cluster.StartT(t, cluster.Options{Images: set, Kubernetes: true})
	cp := n.ControlPlane
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(cp.Config)
	require.NoError(t, err)
	started := time.Now()

	// The emulator on the node's address, where pods reach it through the
	// bridge's gateway and host-network pods directly.
	emu, err := emulator.Start(emulator.Options{Dir: t.TempDir(), Addr: cluster.NodeIP + ":0"})
	require.NoError(t, err)
	t.Cleanup(func() { emu.Close() })
	ids := setUpAzure(ctx, t, cp.Client, emu, cp.Issuer)
	jwks, err := cp.JWKS(ctx)
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(cp.Issuer, jwks))

	installChart(ctx, t, n, emu)
	waitDaemonSetsReady(ctx, t, cp.Client)

	// The workloads, as YAML a user would apply.
	apply(ctx, t, dyn, appManifests(emu, ids))
	times := newStartTimes(ctx, t, cp.Client)

	t.Run("mount", func(t *testing.T) { testMount(ctx, t, cp.Client, emu) })
	t.Run("identity", func(t *testing.T) { testIdentity(ctx, t, cp.Client) })
	t.Run("usePodIdentity", func(t *testing.T) {
		pod := waitPodPhase(ctx, t, cp.Client, "podid", corev1.PodSucceeded)
		logs := podLogs(ctx, t, cp.Client, pod.Name)
		assert.Contains(t, logs, "file /mnt/secrets-store/db-password: "+digest(dbPassword), "the volume was read with the pod's own identity, through nmi")
		assert.Positive(t, emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Identity: ids.podIdentity, Status: 200}),
			"nmi asked the node's IMDS for the pod's AzureIdentity")
	})
	t.Run("rotation", func(t *testing.T) { testRotation(ctx, t, cp.Client, emu) })

	report := times.report()
	tokens := emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Status: 200}) +
		emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Status: 200})
	nmiServed := nmiTokensServed(t)
	kvCalls := emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault})

	t.Run("cleanup", func(t *testing.T) { testCleanup(ctx, t, n, dyn, before) })

	fmt.Printf("\ncluster report (TestChartOnRealNode, %s in all)\n", time.Since(started).Round(time.Second))
	fmt.Printf("  pods run: %d, creation to Running (watch, as kubelet reported it): %s\n", times.count(), report)
	fmt.Printf("  tokens: %d answered by nmi to pods and kvdriver; %d issued by the emulator's Entra ID and IMDS\n", nmiServed, tokens)
	fmt.Printf("  Key Vault requests: %d (%d pods mounted one class; kvdriver's object cache shares one identity's fetches)\n", kvCalls, webReplicas)
}

// Azure side: one vault, an application the web and reader ServiceAccounts
// federate to, a user-assigned managed identity for the AzureIdentity.
type azureIDs struct {
	app, podIdentity, podIdentityResource string
}

var dbPassword = "first-password-" + strings.Repeat("x", 16)

func setUpAzure(ctx context.Context, t *testing.T, client kubernetes.Interface, emu *emulator.Emulator, issuer string) azureIDs {
	t.Helper()
	app, err := emu.AddApplication(emulator.Principal{TenantID: tenant, ClientID: "0d3c9a4e-5b1f-4c2a-9e7d-6f8a1b2c3d4e", Federated: []emulator.FederatedCredential{
		{Issuer: issuer, Subject: "system:serviceaccount:" + appNS + ":web"},
		{Issuer: issuer, Subject: "system:serviceaccount:" + appNS + ":reader"},
	}})
	require.NoError(t, err)
	mi, err := emu.AddManagedIdentity(emulator.Principal{TenantID: tenant})
	require.NoError(t, err)
	require.NoError(t, emu.CreateVault(vaultName, emulator.VaultOptions{TenantID: tenant}))
	for _, oid := range []string{app.ObjectID, mi.ObjectID} {
		require.NoError(t, emu.Grant(vaultName, oid, "secrets/get", "keys/get", "certificates/get"))
	}
	_, err = emu.SetSecret(vaultName, "db-password", dbPassword, emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = emu.CreateKey(vaultName, "signing-key", emulator.KeyOptions{})
	require.NoError(t, err)
	_, err = emu.CreateCertificate(vaultName, "web-tls", emulator.CertificateOptions{})
	require.NoError(t, err)
	return azureIDs{app: app.ClientID, podIdentity: mi.ClientID, podIdentityResource: mi.ResourceID}
}

// installChart runs helm install into the kvnode namespace, labelled for
// the privileged Pod Security level as the README says. The values only
// name the local images and send Azure's traffic to the emulator; nmi is
// told the CNI is a bridge (requirePodRoute=false, as the values document
// for the CNI bridge plugin), and rotation is checked every 10 s (with
// objects cached for 10 s, not a minute).
func installChart(ctx context.Context, t *testing.T, n *cluster.Node, emu *emulator.Emulator) {
	t.Helper()
	_, err := n.ControlPlane.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: chartNS, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"},
	}}, metav1.CreateOptions{})
	require.NoError(t, err)
	proxyEnv := fmt.Sprintf(`
    - {name: HTTPS_PROXY, value: %[1]q}
    - {name: HTTP_PROXY, value: %[1]q}
    - {name: NO_PROXY, value: %[2]q}
    - {name: SSL_CERT_FILE, value: /etc/kvnode-proxy/ca.crt}`, emu.ProxyURL(), cluster.ServiceIP)
	caVolume := fmt.Sprintf(`
  extraVolumes:
    - name: proxy-ca
      hostPath: {path: %q, type: File}
  extraVolumeMounts:
    - {name: proxy-ca, mountPath: /etc/kvnode-proxy/ca.crt, readOnly: true}`, emu.CAFile())
	values := fmt.Sprintf(`image:
  repository: kvnode.local/kvnode
  tag: local
  pullPolicy: Never
registrar:
  image: kvnode.local/csi-node-driver-registrar:local
livenessProbe:
  image: kvnode.local/livenessprobe:local
kvdriver:
  objectCacheTTL: 10s
  rotationPollInterval: 10s
  env:%[1]s%[2]s
nmi:
  image:
    repository: kvnode.local/nmi
    tag: local
    pullPolicy: Never
  requirePodRoute: false
  defaultTenantID: %[3]s
  env:%[1]s%[2]s
`, proxyEnv, caVolume, tenant)
	valuesFile := filepath.Join(t.TempDir(), "values.yaml")
	require.NoError(t, os.WriteFile(valuesFile, []byte(values), 0o600))
	root := filepath.Join("..", "..")
	out, err := helm(t, n, "install", "kvnode", filepath.Join(root, "charts", "kvnode"), "-n", chartNS, "-f", valuesFile, "--wait=false")
	require.NoError(t, err, "helm install: %s", out)
	assert.Contains(t, out, "STATUS: deployed")
}

func helm(t *testing.T, n *cluster.Node, args ...string) (string, error) {
	t.Helper()
	bin, err := pinned.Helm.Path()
	require.NoError(t, err, "helm")
	cmd := exec.Command(bin, append(args, "--kubeconfig", n.Kubeconfig)...)
	dir := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+dir+"/cache", "HELM_CONFIG_HOME="+dir+"/config", "HELM_DATA_HOME="+dir+"/data")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitDaemonSetsReady waits for kubelet to run both DaemonSets' pods and
// for them to be Ready (kvdriver registered by the registrar, nmi's rules
// in place).
func waitDaemonSetsReady(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	t.Helper()
	eventually(ctx, t, 3*time.Minute, "the kvnode DaemonSets are ready", func() (bool, string) {
		list, err := client.AppsV1().DaemonSets(chartNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		if len(list.Items) != 2 {
			return false, fmt.Sprintf("%d DaemonSets", len(list.Items))
		}
		var state []string
		ready := true
		for _, ds := range list.Items {
			st := ds.Status
			state = append(state, fmt.Sprintf("%s: %d/%d ready", ds.Name, st.NumberReady, st.DesiredNumberScheduled))
			ready = ready && st.DesiredNumberScheduled == 1 && st.NumberReady == 1
		}
		if !ready {
			state = append(state, podStates(ctx, client, chartNS))
		}
		return ready, strings.Join(state, "; ")
	})
	eventually(ctx, t, time.Minute, "kubelet registered the CSI driver", func() (bool, string) {
		csiNode, err := client.StorageV1().CSINodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, d := range csiNode.Spec.Drivers {
			if d.Name == "secrets-store.csi.k8s.io" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("CSINode drivers %v", csiNode.Spec.Drivers)
	})
}

// appManifests are the workloads, in the upstream documentation's shapes.
func appManifests(emu *emulator.Emulator, ids azureIDs) string {
	proxyEnv := fmt.Sprintf(`
        - {name: HTTPS_PROXY, value: %q}
        - {name: SSL_CERT_FILE, value: /etc/emulator/ca.crt}`, emu.ProxyURL())
	ca := strings.ReplaceAll(strings.TrimSpace(string(emu.CACertPEM())), "\n", "\n    ")
	objects := `
      array:
        - |
          objectName: db-password
          objectType: secret
        - |
          objectName: signing-key
          objectType: key
        - |
          objectName: web-tls
          objectType: cert`
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: emulator-ca, namespace: %[1]s}
data:
  ca.crt: |
    %[2]s
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: %[1]s}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
  namespace: %[1]s
  annotations:
    azure.workload.identity/client-id: %[3]s
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: stranger, namespace: %[1]s}
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: azure-kvname-wi, namespace: %[1]s}
spec:
  provider: azure
  secretObjects:
    - secretName: db-creds
      type: Opaque
      data:
        - objectName: db-password
          key: password
  parameters:
    usePodIdentity: "false"
    clientID: %[3]s
    keyvaultName: %[4]s
    tenantId: %[5]s
    objects: |%[6]s
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: azure-kvname-podid, namespace: %[1]s}
spec:
  provider: azure
  parameters:
    usePodIdentity: "true"
    keyvaultName: %[4]s
    tenantId: %[5]s
    objects: |
      array:
        - |
          objectName: db-password
          objectType: secret
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %[1]s}
spec:
  replicas: %[7]d
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      serviceAccountName: web
      containers:
        - name: app
          image: kvnode.local/app:local
          imagePullPolicy: Never
          env:
            - {name: SECRET_FILE, value: /mnt/secrets-store/db-password}
            - {name: SECRET_ENV, value: DB_PASSWORD}
            - {name: INTERVAL, value: 2s}
            - name: DB_PASSWORD
              valueFrom:
                secretKeyRef: {name: db-creds, key: password}
          volumeMounts:
            - {name: secrets-store-inline, mountPath: /mnt/secrets-store, readOnly: true}
      volumes:
        - name: secrets-store-inline
          csi:
            driver: secrets-store.csi.k8s.io
            readOnly: true
            volumeAttributes:
              secretProviderClass: azure-kvname-wi
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentity
metadata: {name: podid-identity, namespace: %[1]s}
spec:
  type: 0
  resourceID: %[8]s
  clientID: %[9]s
---
apiVersion: aadpodidentity.k8s.io/v1
kind: AzureIdentityBinding
metadata: {name: podid-identity-binding, namespace: %[1]s}
spec:
  azureIdentity: podid-identity
  selector: podid
---
apiVersion: v1
kind: Pod
metadata:
  name: podid
  namespace: %[1]s
  labels: {aadpodidbinding: podid}
spec:
  restartPolicy: Never
  containers:
    - name: app
      image: kvnode.local/app:local
      imagePullPolicy: Never
      env:
        - {name: SECRET_FILE, value: /mnt/secrets-store/db-password}
      volumeMounts:
        - {name: secrets-store-inline, mountPath: /mnt/secrets-store, readOnly: true}
  volumes:
    - name: secrets-store-inline
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: azure-kvname-podid
`, appNS, ca, ids.app, vaultName, tenant, objects, webReplicas, ids.podIdentityResource, ids.podIdentity) +
		readerPod("reader-mi", "reader", "managed-identity", proxyEnv) +
		readerPod("reader-default", "reader", "default", proxyEnv) +
		readerPod("stranger", "stranger", "managed-identity", proxyEnv)
}

// readerPod is a pod of ServiceAccount sa that reads the vault's secret
// once with the SDK's credential (managed-identity or default): through
// the emulator's proxy for Key Vault, and to 169.254.169.254, where nmi
// answers, for its token.
func readerPod(name, sa, credential, proxyEnv string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  serviceAccountName: %s
  restartPolicy: Never
  containers:
    - name: app
      image: kvnode.local/app:local
      imagePullPolicy: Never
      env:
        - {name: KEYVAULT_URL, value: %s}
        - {name: SECRET_NAME, value: db-password}
        - {name: CREDENTIAL, value: %s}%s
      volumeMounts:
        - {name: emulator-ca, mountPath: /etc/emulator, readOnly: true}
  volumes:
    - name: emulator-ca
      configMap: {name: emulator-ca}
`, name, appNS, sa, vaultURL, credential, proxyEnv)
}

// testMount checks the web Deployment: every replica Running, the volume's
// files the vault's objects, the synced Secret in the environment.
func testMount(ctx context.Context, t *testing.T, client kubernetes.Interface, emu *emulator.Emulator) {
	// On Kubernetes 1.35+ kubelet passes the pods' tokens only in the
	// request's secrets, so the workload-identity mounts below prove that
	// kvdriver reads them there.
	drv, err := client.StorageV1().CSIDrivers().Get(ctx, "secrets-store.csi.k8s.io", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, ptr.To(true), drv.Spec.ServiceAccountTokenInSecrets, "the chart's CSIDriver on a Kubernetes 1.35+ node")
	eventually(ctx, t, 3*time.Minute, "the web replicas run", func() (bool, string) {
		pods := listPods(ctx, t, client, "app=web")
		running := 0
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning {
				running++
			}
		}
		return running == webReplicas, fmt.Sprintf("%d of %d running; %s", running, webReplicas, podStates(ctx, client, appNS))
	})
	pod := listPods(ctx, t, client, "app=web")[0]
	dir := filepath.Join(cluster.KubeletDir, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", "secrets-store-inline", "mount")
	assert.Contains(t, cluster.Mounts(dir), dir, "the pod's volume is a mount, seen from the node")
	b, err := os.ReadFile(filepath.Join(dir, "db-password"))
	require.NoError(t, err)
	assert.Equal(t, dbPassword, string(b))
	b, err = os.ReadFile(filepath.Join(dir, "signing-key"))
	require.NoError(t, err)
	blk, _ := pem.Decode(b)
	require.NotNil(t, blk, "signing-key is PEM")
	assert.Equal(t, "PUBLIC KEY", blk.Type)
	_, err = x509.ParsePKIXPublicKey(blk.Bytes)
	assert.NoError(t, err)
	b, err = os.ReadFile(filepath.Join(dir, "web-tls"))
	require.NoError(t, err)
	blk, _ = pem.Decode(b)
	require.NotNil(t, blk, "web-tls is PEM")
	cert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	assert.Equal(t, "web-tls", cert.Subject.CommonName)

	logs := podLogs(ctx, t, client, pod.Name)
	assert.Contains(t, logs, "file /mnt/secrets-store/db-password: "+digest(dbPassword), "the container reads the mounted secret")
	assert.Contains(t, logs, "env DB_PASSWORD: "+digest(dbPassword), "the synced Secret reached the container's environment")
	sec, err := client.CoreV1().Secrets(appNS).Get(ctx, "db-creds", metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, dbPassword, string(sec.Data["password"]))
	assert.Equal(t, "true", sec.Labels["secrets-store.csi.k8s.io/managed"])
	assert.Len(t, sec.OwnerReferences, webReplicas, "each mounting pod owns the synced Secret")
}

// testIdentity checks the pods that read Key Vault themselves through nmi.
func testIdentity(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	for _, name := range []string{"reader-mi", "reader-default"} {
		pod := waitPodPhase(ctx, t, client, name, corev1.PodSucceeded)
		assert.Regexp(t, `secret db-password version [0-9a-f]+: `+regexp.QuoteMeta(digest(dbPassword)), podLogs(ctx, t, client, pod.Name), name)
	}
	pod := waitPodPhase(ctx, t, client, "stranger", corev1.PodFailed)
	logs := podLogs(ctx, t, client, pod.Name)
	assert.NotContains(t, logs, digest(dbPassword), "a pod with no binding reads nothing")
	assert.Contains(t, logs, "ManagedIdentityCredential", "the SDK's managed-identity credential failed")
}

// testRotation rotates the secret in the vault and waits for the running
// web containers to read the new value from their files, not restarted.
func testRotation(ctx context.Context, t *testing.T, client kubernetes.Interface, emu *emulator.Emulator) {
	const rotated = "rotated-password"
	_, err := emu.SetSecret(vaultName, "db-password", rotated, emulator.SecretOptions{})
	require.NoError(t, err)
	pod := listPods(ctx, t, client, "app=web")[0]
	eventually(ctx, t, 3*time.Minute, "the rotated secret reaches the running container", func() (bool, string) {
		return strings.Contains(podLogs(ctx, t, client, pod.Name), "file /mnt/secrets-store/db-password: "+digest(rotated)), "not yet in its log"
	})
	p, err := client.CoreV1().Pods(appNS).Get(ctx, pod.Name, metav1.GetOptions{})
	require.NoError(t, err)
	require.Len(t, p.Status.ContainerStatuses, 1)
	assert.Zero(t, p.Status.ContainerStatuses[0].RestartCount, "no restart")
	assert.Equal(t, pod.UID, p.UID, "the same pod")
	eventually(ctx, t, time.Minute, "the synced Secret follows the rotation", func() (bool, string) {
		sec, err := client.CoreV1().Secrets(appNS).Get(ctx, "db-creds", metav1.GetOptions{})
		return err == nil && string(sec.Data["password"]) == rotated, "not yet"
	})
}

// testCleanup deletes the workloads and uninstalls the chart as its notes
// say, then checks that nothing is left: no volume mounts, no synced
// Secret, no interception rules, and after the node stops, nothing on the
// machine.
func testCleanup(ctx context.Context, t *testing.T, n *cluster.Node, dyn dynamic.Interface, before map[string]bool) {
	client := n.ControlPlane.Client
	grace := int64(1)
	require.NoError(t, client.AppsV1().Deployments(appNS).Delete(ctx, "web", metav1.DeleteOptions{}))
	require.NoError(t, client.CoreV1().Pods(appNS).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &grace}, metav1.ListOptions{}))
	eventually(ctx, t, 2*time.Minute, "the pods are gone", func() (bool, string) {
		pods := listPods(ctx, t, client, "")
		return len(pods) == 0, fmt.Sprintf("%d pods left", len(pods))
	})
	assert.Empty(t, csiMounts(), "kubelet unpublished every volume: no tmpfs left")
	eventually(ctx, t, time.Minute, "the garbage collector removed the synced Secret with its pods", func() (bool, string) {
		_, err := client.CoreV1().Secrets(appNS).Get(ctx, "db-creds", metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})

	require.Contains(t, iptablesSave(t), "169.254.169.254", "nmi's rules are in place before the uninstall")
	// The chart's notes: let nmi remove its rules as it stops, then
	// uninstall.
	out, err := helm(t, n, "upgrade", "kvnode", filepath.Join("..", "..", "charts", "kvnode"), "-n", chartNS, "--reuse-values", "--set", "nmi.removeRulesOnExit=true")
	require.NoError(t, err, "helm upgrade: %s", out)
	eventually(ctx, t, 2*time.Minute, "nmi rolled out with removeRulesOnExit", func() (bool, string) {
		ds, err := client.AppsV1().DaemonSets(chartNS).Get(ctx, "kvnode-nmi", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		st := ds.Status
		return st.ObservedGeneration >= ds.Generation && st.UpdatedNumberScheduled == 1 && st.NumberReady == 1, podStates(ctx, client, chartNS)
	})
	out, err = helm(t, n, "uninstall", "kvnode", "-n", chartNS, "--wait", "--timeout", "2m")
	require.NoError(t, err, "helm uninstall: %s", out)
	eventually(ctx, t, 2*time.Minute, "the kvnode pods are gone", func() (bool, string) {
		pods, err := client.CoreV1().Pods(chartNS).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, podStates(ctx, client, chartNS)
	})
	assert.NotContains(t, iptablesSave(t), "169.254.169.254", "nmi removed its rules as it stopped")
	// Cleared by nmi --cleanup too, had nmi been killed; harmless now.
	cleanup := exec.Command(testenv.Binary(t, "nmi"), "--cleanup", "--node-name="+cluster.NodeName, "--listen-addr="+cluster.NodeIP+":2579")
	out2, err := cleanup.CombinedOutput()
	assert.NoError(t, err, "nmi --cleanup: %s", out2)
	assert.Empty(t, csiMounts(), "no volume mount is left")

	require.NoError(t, n.Stop())
	assertNodeGone(t, n, before)
}

// csiMounts lists the CSI volume mounts under kubelet's pods directory.
func csiMounts() []string {
	var out []string
	for _, m := range cluster.Mounts(filepath.Join(cluster.KubeletDir, "pods")) {
		if strings.Contains(m, "kubernetes.io~csi") {
			out = append(out, m)
		}
	}
	return out
}

func iptablesSave(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("iptables-save").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}

// nmiTokensServed reads from nmi's node-only listener how many token
// requests it answered with a token (pods' and kvdriver's).
func nmiTokensServed(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://127.0.0.1:2579/metrics")
	if err != nil {
		t.Errorf("nmi metrics: %v", err)
		return -1
	}
	defer resp.Body.Close()
	total := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "kvnode_nmi_requests_total{") && strings.Contains(line, `outcome="ok"`) &&
			(strings.Contains(line, `endpoint="token"`) || strings.Contains(line, `endpoint="host_token"`)) {
			var v float64
			if _, err := fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%g", &v); err == nil {
				total += int(v)
			}
		}
	}
	return total
}

// startTimes records, from a watch, when each app pod first appeared and
// when it was first Running.
type startTimes struct {
	mu      sync.Mutex
	created map[string]time.Time
	running map[string]time.Duration
}

func newStartTimes(ctx context.Context, t *testing.T, client kubernetes.Interface) *startTimes {
	t.Helper()
	st := &startTimes{created: map[string]time.Time{}, running: map[string]time.Duration{}}
	w, err := client.CoreV1().Pods(appNS).Watch(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	t.Cleanup(w.Stop)
	go func() {
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			now := time.Now()
			st.mu.Lock()
			if _, ok := st.created[pod.Name]; !ok {
				st.created[pod.Name] = pod.CreationTimestamp.Time
				if now.Sub(pod.CreationTimestamp.Time) < time.Second {
					st.created[pod.Name] = now // finer than the timestamp's seconds
				}
			}
			if _, ok := st.running[pod.Name]; !ok && pod.Status.Phase != corev1.PodPending && pod.Status.Phase != "" {
				st.running[pod.Name] = now.Sub(st.created[pod.Name])
			}
			st.mu.Unlock()
		}
	}()
	return st
}

func (st *startTimes) count() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.running)
}

func (st *startTimes) report() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var ds []time.Duration
	for _, d := range st.running {
		ds = append(ds, d)
	}
	if len(ds) == 0 {
		return "none"
	}
	slices.Sort(ds)
	return fmt.Sprintf("p50 %s, max %s over %d pods", ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), len(ds))
}

func listPods(ctx context.Context, t *testing.T, client kubernetes.Interface, selector string) []corev1.Pod {
	t.Helper()
	list, err := client.CoreV1().Pods(appNS).List(ctx, metav1.ListOptions{LabelSelector: selector})
	require.NoError(t, err)
	return list.Items
}

func waitPodPhase(ctx context.Context, t *testing.T, client kubernetes.Interface, name string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(ctx, t, 3*time.Minute, "pod "+name+" is "+string(phase), func() (bool, string) {
		p, err := client.CoreV1().Pods(appNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = p
		if p.Status.Phase == phase {
			return true, ""
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod %s is %s, want %s; its log:\n%s", name, p.Status.Phase, phase, podLogs(ctx, t, client, name))
		}
		return false, podStates(ctx, client, appNS)
	})
	return pod
}

func podLogs(ctx context.Context, t *testing.T, client kubernetes.Interface, name string) string {
	t.Helper()
	b, err := client.CoreV1().Pods(appNS).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(b)
}

// podStates summarises the pods of namespace, for a wait that times out.
func podStates(ctx context.Context, client kubernetes.Interface, namespace string) string {
	list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range list.Items {
		s := p.Name + "=" + string(p.Status.Phase)
		for _, c := range p.Status.ContainerStatuses {
			if w := c.State.Waiting; w != nil {
				s += fmt.Sprintf(" (%s: %s %s)", c.Name, w.Reason, w.Message)
			}
		}
		out = append(out, s)
	}
	ev, err := client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range ev.Items {
			if e.Type == corev1.EventTypeWarning {
				out = append(out, fmt.Sprintf("event %s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message))
			}
		}
	}
	return strings.Join(out, "; ")
}

// eventually polls cond until it holds, failing t after timeout with the
// last state cond described.
func eventually(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting %s for %s: %s", timeout, what, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// apply creates each object of a multi-document YAML manifest.
func apply(ctx context.Context, t *testing.T, dyn dynamic.Interface, manifest string) {
	t.Helper()
	for _, doc := range strings.Split(manifest, "\n---\n") {
		var obj unstructured.Unstructured
		require.NoError(t, yaml.Unmarshal([]byte(doc), &obj.Object), doc)
		gvk := obj.GroupVersionKind()
		gvr, ok := resources[gvk.Kind]
		require.True(t, ok, "no resource for kind %s", gvk.Kind)
		var err error
		if obj.GetNamespace() == "" {
			_, err = dyn.Resource(gvr).Create(ctx, &obj, metav1.CreateOptions{})
		} else {
			_, err = dyn.Resource(gvr).Namespace(obj.GetNamespace()).Create(ctx, &obj, metav1.CreateOptions{})
		}
		require.NoError(t, err, "create %s %s", gvk.Kind, obj.GetName())
	}
}

var resources = map[string]schema.GroupVersionResource{
	"Namespace":            {Version: "v1", Resource: "namespaces"},
	"ConfigMap":            {Version: "v1", Resource: "configmaps"},
	"ServiceAccount":       {Version: "v1", Resource: "serviceaccounts"},
	"Pod":                  {Version: "v1", Resource: "pods"},
	"Deployment":           {Group: "apps", Version: "v1", Resource: "deployments"},
	"SecretProviderClass":  {Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasses"},
	"AzureIdentity":        {Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentities"},
	"AzureIdentityBinding": {Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentitybindings"},
}

// digest is how the test app prints a value.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%d bytes sha256 %s", len(s), hex.EncodeToString(sum[:]))
}
