package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/kvnode/kvnode/pkg/bindings"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/podnet"
	"github.com/kvnode/kvnode/test/testenv"
)

// The nmi test's node and pods, a routed CNI in miniature. The node is the
// test process's own network namespace (testenv's private one); nmi's
// address is on its lo. Each pod is a named network namespace joined to the
// node by a veth pair: "eth0" with the pod's /32 and a default route via the
// gateway 10.244.0.1, which is on every node-side veth; the node routes the
// pod's /32 to its veth.
const (
	nmiNodeName = "node-1"
	nmiAddr     = "10.200.0.1"
	nmiPort     = 2579
	podGateway  = "10.244.0.1"
	nmiTenant   = "5b1f0c8e-7a2d-4c3b-9e1f-2a3b4c5d6e7f"
	nmiVault    = "https://vault.azure.net"
	nmiClientA  = "a1a1a1a1-0000-4000-8000-00000000000a"
	tokenQuery  = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
)

// nmiPod is a pod: a Pod object on node-1 and a network namespace.
type nmiPod struct {
	name, sa string
	ip       string
	netns    string // ip netns name
	hostIf   string // the node-side veth
	// started, when set, is reported as the pod's start time and the time
	// its sandbox got its network (PodReadyToStartContainers), as kubelet
	// reports them.
	started time.Time
}

// TestNMI runs nmi as a process on a node with three pods and the
// unmodified Azure SDK inside the pods: pod A has a workload identity
// (ServiceAccount annotation, federated credential at Entra ID), pod B a
// user-assigned managed identity of the node through an
// AzureIdentityBinding, pod C nothing.
func TestNMI(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	appA, miB := bindABC(ctx, t, cp, emu)

	podA, podB, podC := startPodsABC(ctx, t, cp)

	nmi := startNMI(t, cp, emu)
	nmi.waitReady(t)
	nmi.waitAntiSpoofing(t, podA, podB, podC)

	entraTokens := func(clientID string) int {
		n := 0
		for _, r := range emu.Requests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: http.MethodPost, Identity: clientID}) {
			if strings.HasSuffix(r.Path, "/oauth2/v2.0/token") {
				n++
			}
		}
		return n
	}
	imdsTokens := func(clientID string) int {
		return emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Identity: clientID, Status: http.StatusOK})
	}

	t.Run("workload identity", func(t *testing.T) {
		for i := range 2 {
			claims := sdkToken(t, podA, "-cred", "managed-identity", "token", "-scope", nmiVault+"/.default")
			assert.Equal(t, appA.ClientID, claims["appid"], "request %d", i)
			assert.Equal(t, nmiTenant, claims["tid"])
		}
		assert.Equal(t, 1, entraTokens(appA.ClientID), "two requests within the token's life make one exchange")
	})
	t.Run("managed identity through AzureIdentityBinding", func(t *testing.T) {
		for i := range 2 {
			claims := sdkToken(t, podB, "-cred", "managed-identity", "token", "-scope", nmiVault+"/.default")
			assert.Equal(t, miB.ClientID, claims["appid"], "request %d", i)
		}
		claims := sdkToken(t, podB, "-cred", "managed-identity", "-mi-client-id", miB.ClientID, "token", "-scope", nmiVault+"/.default")
		assert.Equal(t, miB.ClientID, claims["appid"])
		assert.Equal(t, 1, imdsTokens(miB.ClientID), "three requests within the token's life make one IMDS call")
	})
	t.Run("DefaultAzureCredential", func(t *testing.T) {
		claims := sdkToken(t, podA, "-cred", "default", "token", "-scope", nmiVault+"/.default")
		assert.Equal(t, appA.ClientID, claims["appid"])
		assert.Equal(t, 1, entraTokens(appA.ClientID), "served from the cache")
	})
	t.Run("unbound pod is refused", func(t *testing.T) {
		res := sdkInPod(t, podC, "-cred", "managed-identity", "token", "-scope", nmiVault+"/.default")
		require.NotNil(t, res.Err, "pod C got a token: %s", res.Stdout)
		assert.Equal(t, "auth", res.Err.Kind)
		assert.Equal(t, http.StatusForbidden, res.Err.Status, res.Err.Message)
	})
	t.Run("another pod's identity is refused", func(t *testing.T) {
		res := sdkInPod(t, podA, "-cred", "managed-identity", "-mi-client-id", miB.ClientID, "token", "-scope", nmiVault+"/.default")
		require.NotNil(t, res.Err, "pod A got B's token: %s", res.Stdout)
		assert.Equal(t, http.StatusForbidden, res.Err.Status, res.Err.Message)
		res = sdkInPod(t, podB, "-cred", "managed-identity", "-mi-client-id", appA.ClientID, "token", "-scope", nmiVault+"/.default")
		require.NotNil(t, res.Err, "pod B got A's token: %s", res.Stdout)
		assert.Equal(t, http.StatusForbidden, res.Err.Status, res.Err.Message)
		assert.Equal(t, 1, entraTokens(appA.ClientID))
	})
	t.Run("forged source address", func(t *testing.T) {
		// From its own address, C reaches nmi and is refused.
		code, out := curlInPod(t, podC, "")
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "403")

		// C takes A's address and asks as A. Anti-spoofing drops the SYN on
		// C's veth before NAT: nmi never sees a connection.
		requestsBefore := nmi.metric(t, `kvnode_nmi_requests_total{endpoint="token",outcome="forbidden"}`)
		dropsBefore := nmi.spoofDrops(t, podC)
		ipIn(t, podC, "addr", "add", podA.ip+"/32", "dev", "eth0")
		start := time.Now()
		code, out = curlInPod(t, podC, podA.ip)
		assert.NotEqual(t, 0, code, "the forged request got an answer: %s", out)
		assert.Less(t, time.Since(start), 10*time.Second)
		assert.Greater(t, nmi.spoofDrops(t, podC), dropsBefore, "C's forged packets were not dropped on its veth")
		assert.Equal(t, requestsBefore, nmi.metric(t, `kvnode_nmi_requests_total{endpoint="token",outcome="forbidden"}`))
		assert.Equal(t, 1, entraTokens(appA.ClientID), "no exchange for the forged request")
		assert.NotContains(t, out, "access_token")
		ipIn(t, podC, "addr", "del", podA.ip+"/32", "dev", "eth0")
	})
	t.Run("kvdriver's pod identity through /host/token/", func(t *testing.T) {
		// What kvdriver does for a usePodIdentity mount: ask nmi, on the
		// node-only listener, for the pod's token, and read Key Vault with it.
		const vault = "kvnode-nmi"
		require.NoError(t, emu.CreateVault(vault, emulator.VaultOptions{TenantID: nmiTenant}))
		require.NoError(t, emu.Grant(vault, appA.ObjectID, "secrets/get"))
		require.NoError(t, emu.Grant(vault, miB.ObjectID, "secrets/get"))
		_, err := emu.SetSecret(vault, "pod-secret", "read-with-the-pods-identity", emulator.SecretOptions{})
		require.NoError(t, err)

		creds := identity.NewCredentials(identity.Options{NMIEndpoint: "http://" + nmi.host})
		fetcher := keyvault.NewFetcher(keyvault.Options{ClientOptions: azcore.ClientOptions{Transport: emu.HTTPClient()}})
		fetch := func(p *nmiPod) (*keyvault.Result, error) {
			cred, key, err := creds.Credential(identity.Request{Mode: identity.PodIdentity, Namespace: "apps", PodName: p.name})
			require.NoError(t, err)
			return fetcher.Fetch(ctx, keyvault.Request{VaultURL: "https://" + vault + ".vault.azure.net/", Credential: cred, IdentityKey: key,
				Objects: []keyvault.Object{{Name: "pod-secret", Type: keyvault.TypeSecret}}})
		}
		for _, p := range []*nmiPod{podA, podB} {
			res, err := fetch(p)
			require.NoError(t, err, p.name)
			assert.Equal(t, "read-with-the-pods-identity", string(res.Files[0].Content), p.name)
		}
		_, err = fetch(podC)
		require.Error(t, err, "an unbound pod must not read the vault")
		assert.Equal(t, keyvault.KindAuthentication, keyvault.Classify(err), "%v", err)
		var refused *identity.PodIdentityError
		require.ErrorAs(t, err, &refused)
		assert.Equal(t, http.StatusForbidden, refused.Status)
		assert.Equal(t, 1, entraTokens(appA.ClientID), "nmi served pod A's cached token")
	})
	t.Run("no token in the logs", func(t *testing.T) {
		assert.NotContains(t, nmi.logs.String(), "eyJ", "nmi logged something that looks like a JWT")
	})
	t.Run("the chart's ClusterRole is enough", func(t *testing.T) {
		// Informers retry a Forbidden list quietly; the API server's
		// message in nmi's log gives it away.
		refused := regexp.MustCompile(`system:serviceaccount:` + chartNamespace + `:kvnode-nmi\\?" cannot`)
		assert.Empty(t, refused.FindAllString(nmi.logs.String(), 5), "nmi was refused something the chart's ClusterRole does not grant")
	})

	// A clean shutdown removes every rule nmi installed.
	nmi.stop(t)
	for _, table := range []string{"nat", "raw"} {
		out, err := exec.Command("iptables", "-w", "-t", table, "-S").CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.NotContains(t, string(out), "KVNODE", "table %s after nmi stopped", table)
	}
}

// requireNode skips unless the test runs in testenv's private namespace with
// iptables and ip, and refuses to run in the machine's own namespace.
func requireNode(t testing.TB) {
	t.Helper()
	testenv.RequireNetns(t)
	for _, tool := range []string{"iptables", "ip", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s is missing; run hack/install-deps.sh", tool)
		}
	}
	self, err := os.Readlink("/proc/self/ns/net")
	require.NoError(t, err)
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", os.Getppid()))
	require.NoError(t, err)
	require.NotEqual(t, parent, self, "refusing to run in the machine's network namespace")
}

// bindABC sets up the identities of pods A, B and C in namespace apps: A's
// ServiceAccount sa-a is annotated with an application that has a federated
// credential for it (workload identity); B (label pod-b) is bound to a
// managed identity of the node by an AzureIdentityBinding; sa-c has
// nothing.
func bindABC(ctx context.Context, t testing.TB, cp *controlplane.ControlPlane, emu *emulator.Emulator) (appA, miB emulator.Principal) {
	t.Helper()
	jwks, err := cp.JWKS(ctx)
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(cp.Issuer, jwks))
	appA, err = emu.AddApplication(emulator.Principal{TenantID: nmiTenant, ClientID: nmiClientA, Federated: []emulator.FederatedCredential{
		{Issuer: cp.Issuer, Subject: "system:serviceaccount:apps:sa-a"},
	}})
	require.NoError(t, err)
	miB, err = emu.AddManagedIdentity(emulator.Principal{TenantID: nmiTenant})
	require.NoError(t, err)

	require.NoError(t, cp.EnsureNamespace(ctx, "apps"))
	_, err = cp.CreateServiceAccount(ctx, "apps", "sa-a", map[string]string{bindings.ClientIDAnnotation: appA.ClientID})
	require.NoError(t, err)
	for _, sa := range []string{"sa-b", "sa-c"} {
		_, err = cp.CreateServiceAccount(ctx, "apps", sa, nil)
		require.NoError(t, err)
	}
	bindAzureIdentity(ctx, t, cp, "id-b", miB, "pod-b")
	return appA, miB
}

// bindAzureIdentity creates an AzureIdentity name for the managed identity
// mi and an AzureIdentityBinding giving it to pods labelled
// aadpodidbinding=selector, in namespace apps.
func bindAzureIdentity(ctx context.Context, t testing.TB, cp *controlplane.ControlPlane, name string, mi emulator.Principal, selector string) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cp.Config)
	require.NoError(t, err)
	createCR(ctx, t, dyn, bindings.AzureIdentitiesResource, "AzureIdentity", name,
		map[string]any{"type": int64(0), "clientID": mi.ClientID, "resourceID": mi.ResourceID})
	createCR(ctx, t, dyn, bindings.AzureIdentityBindingsResource, "AzureIdentityBinding", name+"-binding",
		map[string]any{"azureIdentity": name, "selector": selector})
}

func createCR(ctx context.Context, t testing.TB, dyn dynamic.Interface, gvr schema.GroupVersionResource, kind, name string, spec map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": gvr.Group + "/" + gvr.Version, "kind": kind,
		"metadata": map[string]any{"name": name, "namespace": "apps"},
		"spec":     spec,
	}}
	_, err := dyn.Resource(gvr).Namespace("apps").Create(ctx, u, metav1.CreateOptions{})
	require.NoError(t, err)
}

// startPodsABC creates bindABC's three pods on the node, each with its
// network namespace: A (workload identity), B (managed identity), C
// (nothing bound).
func startPodsABC(ctx context.Context, t testing.TB, cp *controlplane.ControlPlane) (a, b, c *nmiPod) {
	t.Helper()
	a = &nmiPod{name: "pod-a", sa: "sa-a", ip: "10.244.1.2"}
	b = &nmiPod{name: "pod-b", sa: "sa-b", ip: "10.244.1.3"}
	c = &nmiPod{name: "pod-c", sa: "sa-c", ip: "10.244.1.4"}
	for _, p := range []*nmiPod{a, b, c} {
		createNodePod(ctx, t, cp, p)
		addPodNetns(t, p)
	}
	return a, b, c
}

// createNodePod creates p's Pod on node-1 and reports its address, as
// kubelet would once the CNI has wired it.
func createNodePod(ctx context.Context, t testing.TB, cp *controlplane.ControlPlane, p *nmiPod) {
	t.Helper()
	pod, err := cp.Client.CoreV1().Pods("apps").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: map[string]string{bindings.SelectorLabel: p.name}},
		Spec: corev1.PodSpec{
			NodeName: nmiNodeName, ServiceAccountName: p.sa,
			Containers: []corev1.Container{{Name: "app", Image: "app:test"}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = p.ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: p.ip}}
	if !p.started.IsZero() {
		at := metav1.NewTime(p.started)
		pod.Status.StartTime = &at
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: at}}
	}
	_, err = cp.Client.CoreV1().Pods("apps").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	require.NoError(t, err)
}

// addPodNetns creates p's network namespace and veth pair, and removes them
// when the test ends.
func addPodNetns(t testing.TB, p *nmiPod) {
	t.Helper()
	p.netns = fmt.Sprintf("kvnode-nmi-%d-%s", os.Getpid(), p.name)
	p.hostIf = "nmi" + p.name // "nmipod-a": at most 15 bytes
	t.Cleanup(func() { removePodNetns(t, p) })
	require.NoError(t, p.network().Add())
}

// network is p's pod network as podnet wires it.
func (p *nmiPod) network() podnet.Pod {
	return podnet.Pod{Netns: p.netns, HostIf: p.hostIf, IP: p.ip, Gateway: podGateway}
}

// removePodNetns deletes p's veth pair and network namespace, as the CNI
// does when the pod's sandbox goes. It does nothing the second time.
func removePodNetns(t testing.TB, p *nmiPod) {
	t.Helper()
	if p.netns == "" {
		return
	}
	if err := p.network().Remove(); err != nil {
		t.Error(err)
	}
	p.netns = ""
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	require.NoError(t, podnet.IP(args...))
}

func ipIn(t testing.TB, p *nmiPod, args ...string) {
	t.Helper()
	ip(t, append([]string{"-n", p.netns}, args...)...)
}

// podEnv is a pod's environment: no proxy and no Azure settings, so the SDK
// dials 169.254.169.254:80 itself.
func podEnv(t testing.TB) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
}

// sdkInPod runs the unmodified Azure SDK client inside p's namespace.
func sdkInPod(t *testing.T, p *nmiPod, args ...string) testenv.SDKResult {
	t.Helper()
	bin := os.Getenv(testenv.EnvSDKClient)
	require.NotEmpty(t, bin, "%s is not set", testenv.EnvSDKClient)
	// -timeout is a credential flag: it goes before the operation.
	args = append([]string{"-timeout", "40s"}, args...)
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.netns, bin}, args...)...)
	cmd.Env = podEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := testenv.SDKResult{Args: args, Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Duration: time.Since(start)}
	if err != nil {
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee), "run sdkclient in %s: %v", p.name, err)
		res.ExitCode = ee.ExitCode()
		var out struct {
			Error *testenv.SDKFailure `json:"error"`
		}
		require.NoError(t, json.Unmarshal(res.Stdout, &out), "sdkclient exited %d: stdout %q stderr %q", res.ExitCode, res.Stdout, res.Stderr)
		require.NotNil(t, out.Error, "sdkclient exited %d without an error: %q", res.ExitCode, res.Stdout)
		res.Err = out.Error
	}
	return res
}

// sdkToken runs sdkclient's token operation in p and returns the token's
// claims.
func sdkToken(t *testing.T, p *nmiPod, args ...string) map[string]any {
	t.Helper()
	var out struct {
		Token struct {
			Claims map[string]any `json:"claims"`
		} `json:"token"`
	}
	sdkInPod(t, p, args...).Decode(t, &out)
	return out.Token.Claims
}

// curlInPod asks for a token from p's namespace with curl, from source
// address from when set, with a short timeout; it returns curl's exit code
// and its output (the body, then the status code).
func curlInPod(t *testing.T, p *nmiPod, from string) (int, string) {
	t.Helper()
	args := []string{"netns", "exec", p.netns, "curl", "-sS", "--max-time", "3", "-H", "Metadata: true",
		"-w", "\n%{http_code}\n"}
	if from != "" {
		args = append(args, "--interface", from)
	}
	args = append(args, "http://169.254.169.254"+tokenQuery)
	cmd := exec.Command("ip", args...)
	cmd.Env = podEnv(t)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	require.NoError(t, err)
	return 0, string(out)
}

// nmiProcess is a running nmi.
type nmiProcess struct {
	argv    []string // its command line, for restarts
	env     []string
	cmd     *exec.Cmd
	logs    *syncBuffer // every run's output, in order
	host    string      // its node-only listener
	done    chan error
	stopped bool
}

// startNMI runs nmi on the node with args as extra flags.
func startNMI(t testing.TB, cp *controlplane.ControlPlane, emu *emulator.Emulator, args ...string) *nmiProcess {
	t.Helper()
	return startNMIVia(t, cp, emu, "", args...)
}

// startNMIVia is startNMI with nmi reaching the API server at apiServer
// (https://host:port, e.g. a byte-counting proxy) instead of directly; ""
// is direct.
func startNMIVia(t testing.TB, cp *controlplane.ControlPlane, emu *emulator.Emulator, apiServer string, args ...string) *nmiProcess {
	t.Helper()
	// nmi's address on the node's lo: bindable before any pod exists.
	ip(t, "addr", "add", nmiAddr+"/32", "dev", "lo")
	t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", nmiAddr+"/32", "dev", "lo").Run() })

	// nmi acts as the chart's nmi ServiceAccount with the chart's
	// ClusterRole: a right the chart lacks fails the test as Forbidden.
	dir := t.TempDir()
	cfg := installChartRBAC(t, cp, "nmi")
	if apiServer != "" {
		cfg.Host = apiServer
	}
	kubeconfig, err := cp.WriteKubeconfig(dir, cfg)
	require.NoError(t, err)
	host := freeLoopbackAddr(t)
	n := &nmiProcess{logs: &syncBuffer{}, host: host}
	n.argv = append([]string{
		"--node-name", nmiNodeName, "--kubeconfig", kubeconfig,
		"--listen-addr", net.JoinHostPort(nmiAddr, strconv.Itoa(nmiPort)), "--host-addr", host,
		"--default-tenant-id", nmiTenant, "--reconcile-interval", "5s", "-v", "4"}, args...)
	// The emulator's proxy settings reach nmi's upstream calls (IMDS and
	// Entra ID); the loopback API server is dialled directly.
	n.env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, emu.Env()...)
	n.launch(t)
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			out := n.logs.String()
			if len(out) > 16<<10 {
				out = "...\n" + out[len(out)-16<<10:]
			}
			t.Logf("nmi output (last 16 KiB):\n%s", out)
		}
	})
	return n
}

// launch starts the nmi process (see startPinned).
func (n *nmiProcess) launch(t testing.TB) {
	t.Helper()
	n.cmd = exec.Command(testenv.Binary(t, "nmi"), n.argv...)
	n.cmd.Env = n.env
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	n.stopped = false
	var err error
	n.done, err = startPinned(n.cmd)
	require.NoError(t, err)
}

// startPinned starts cmd so that the kernel kills it (SIGKILL) when the test
// dies, and returns a channel that receives Wait's result. Pdeathsig fires
// when the thread that started the process exits, not the test process, and
// the tests lock threads into pod namespaces; so cmd is started from a
// thread locked for as long as cmd runs.
func startPinned(cmd *exec.Cmd) (chan error, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	done, started := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	return done, <-started
}

// stop sends SIGTERM and waits for nmi to remove its rules and exit.
func (n *nmiProcess) stop(t testing.TB) {
	t.Helper()
	if n.stopped {
		return
	}
	n.stopped = true
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.done:
		assert.NoError(t, err, "nmi exit")
	case <-time.After(15 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
		t.Error("nmi did not stop within 15s of SIGTERM")
	}
}

func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func (n *nmiProcess) get(t testing.TB, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + n.host + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

func (n *nmiProcess) waitReady(t testing.TB) {
	t.Helper()
	require.Eventually(t, func() bool {
		status, _ := n.get(t, "/readyz")
		return status == http.StatusOK
	}, 30*time.Second, 100*time.Millisecond, "nmi never became ready")
}

// waitAntiSpoofing waits until the raw table has a rule for every pod's veth.
func (n *nmiProcess) waitAntiSpoofing(t testing.TB, pods ...*nmiPod) {
	t.Helper()
	require.Eventually(t, func() bool {
		out, err := exec.Command("iptables", "-w", "-t", "raw", "-S").Output()
		if err != nil {
			return false
		}
		for _, p := range pods {
			if !strings.Contains(string(out), "! -s "+p.ip+"/32 -i "+p.hostIf+" -j DROP") {
				return false
			}
		}
		return true
	}, 15*time.Second, 100*time.Millisecond, "anti-spoofing rules for the pods never appeared")
}

// spoofDrops is the packet count of the anti-spoofing rule of p's veth.
func (n *nmiProcess) spoofDrops(t *testing.T, p *nmiPod) int {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "-t", "raw", "-L", "-v", "-x", "-n").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == "DROP" && strings.Contains(line, " "+p.hostIf+" ") {
			c, err := strconv.Atoi(f[0])
			require.NoError(t, err)
			return c
		}
	}
	t.Fatalf("no anti-spoofing rule for %s:\n%s", p.hostIf, out)
	return 0
}

// metric reads one sample from nmi's /metrics (0 when absent).
func (n *nmiProcess) metric(t testing.TB, name string) float64 {
	t.Helper()
	status, body := n.get(t, "/metrics")
	require.Equal(t, http.StatusOK, status, body)
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	return 0
}

// TestNMINoTokenInLogs serves a workload-identity token, a managed-identity
// token and a refusal with nmi at the default verbosity and at -v=10 (where
// client-go logs its requests), then looks for the tokens the pods got, and
// anything JWT-shaped (the ServiceAccount tokens nmi exchanges, Entra ID's
// answers), in everything nmi wrote.
func TestNMINoTokenInLogs(t *testing.T) {
	requireNode(t)
	for _, verbosity := range []string{"0", "10"} {
		t.Run("v="+verbosity, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cp, emu := startNode(t)
			bindABC(ctx, t, cp, emu)
			podA, podB, podC := startPodsABC(ctx, t, cp)
			nmi := startNMI(t, cp, emu, "-v", verbosity)
			nmi.waitReady(t)
			nmi.waitAntiSpoofing(t, podA, podB, podC)

			var tokens []string
			for _, p := range []*nmiPod{podA, podB} {
				code, out := curlInPod(t, p, "")
				require.Equal(t, 0, code, out)
				body, status, _ := strings.Cut(strings.TrimSpace(out), "\n")
				require.Equal(t, "200", status, "%s: %s", p.name, body)
				var tok struct {
					AccessToken string `json:"access_token"`
				}
				require.NoError(t, json.Unmarshal([]byte(body), &tok))
				require.NotEmpty(t, tok.AccessToken)
				tokens = append(tokens, tok.AccessToken)
			}
			code, out := curlInPod(t, podC, "")
			require.Equal(t, 0, code, out)
			assert.True(t, strings.HasSuffix(strings.TrimSpace(out), "403"), out)

			nmi.stop(t)
			logs := nmi.logs.String()
			require.NotEmpty(t, logs)
			for i, tok := range tokens {
				assert.NotContains(t, logs, tok, "the token of pod %d is in nmi's log", i)
				assert.NotContains(t, logs, tok[len(tok)-20:], "the signature of pod %d's token is in nmi's log", i)
			}
			assert.NotRegexp(t, `eyJ[A-Za-z0-9_-]{8,}`, logs, "nmi logged something JWT-shaped")
			assert.NotRegexp(t, `eyJ[A-Za-z0-9_-]{8,}`, hexDumpText(logs), "nmi logged something JWT-shaped in a hex dump")
			assert.NotContains(t, logs, `"Response Body"`, "client-go logged an API answer")
			assert.NotContains(t, logs, `"Request Body" body=<`, "client-go logged an API request's body")
			if verbosity == "10" {
				assert.Contains(t, logs, "Log verbosity capped")
			}
			t.Logf("nmi at -v=%s wrote %d bytes of log, no token in them", verbosity, len(logs))
		})
	}
}

// hexDumpLine matches a line of a hex dump as client-go writes request and
// response bodies into the log: offset, hex bytes, |text|.
var hexDumpLine = regexp.MustCompile(`(?m)^\s*[0-9a-f]{8}  (?:[0-9a-f]{2} {1,2}){1,16}\s*\|(.{1,16})\|$`)

// hexDumpText joins the text columns of every hex dump in logs, so that a
// token split over the dump's lines shows whole.
func hexDumpText(logs string) string {
	var b strings.Builder
	for _, m := range hexDumpLine.FindAllStringSubmatch(logs, -1) {
		b.WriteString(m[1])
	}
	return b.String()
}
