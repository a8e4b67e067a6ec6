package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/kubelet"
	"github.com/kvnode/kvnode/test/testenv"
)

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// driverCacheTTL is kvdriver's object cache TTL in the e2e tests: short, so
// that a rotation test waits only this long for the new version.
const driverCacheTTL = time.Second

// driverEnv is a node: a control plane with the CRDs, the Azure emulator,
// a kvdriver process, and a kubelet root for target paths.
type driverEnv struct {
	cp      *controlplane.ControlPlane
	emu     *emulator.Emulator
	dyn     dynamic.Interface
	node    csipb.NodeClient
	ident   csipb.IdentityClient
	logs    *syncBuffer
	kubelet string
	// socket is the CSI endpoint kvdriver serves, unix://<path>.
	socket string
	// planted are credentials a test handed kvdriver that must never be
	// printed.
	planted []string
	// metrics is kvdriver's /metrics URL.
	metrics string
	// providers is kvdriver's --providers-dir: empty unless a test starts
	// a provider plugin there.
	providers string
	// proc is the kvdriver process; exited is closed, and exitErr set,
	// once it has exited.
	proc    *exec.Cmd
	exited  chan struct{}
	exitErr error
}

func startDriverEnv(t testing.TB) *driverEnv {
	t.Helper()
	return startDriverEnvArgs(t, "--object-cache-ttl", driverCacheTTL.String())
}

// startDriverEnvArgs starts the node with extra kvdriver arguments.
func startDriverEnvArgs(t testing.TB, driverArgs ...string) *driverEnv {
	t.Helper()
	testenv.RequireNetns(t)
	cp, emu := startNode(t)
	return startKVDriver(t, cp, emu, driverArgs...)
}

// startNode starts what every node of the e2e tests shares: a control plane
// with the chart's CRDs and the Azure emulator, both stopped when t ends.
func startNode(t testing.TB) (*controlplane.ControlPlane, *emulator.Emulator) {
	t.Helper()
	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{filepath.Join("..", "..", "charts", "kvnode", "crds")}})
	emu := emulator.StartT(t)
	return cp, emu
}

// startKVDriver runs the kvdriver binary on a node whose control plane (with
// the CRDs) and emulator already run.
func startKVDriver(t testing.TB, cp *controlplane.ControlPlane, emu *emulator.Emulator, driverArgs ...string) *driverEnv {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cp.Config)
	require.NoError(t, err)

	dir := t.TempDir()
	// Registered after TempDir, so it runs before TempDir's removal: a test
	// that stops early leaves tmpfs mounts that kubelet would have unpublished.
	t.Cleanup(func() { unmountUnder(t, filepath.Join(dir, "kubelet")) })
	// kvdriver runs as the chart's ServiceAccount, with the chart's RBAC.
	kubeconfig, err := cp.WriteKubeconfig(dir, installDriverRBAC(t, cp))
	require.NoError(t, err)
	sock := filepath.Join(dir, "csi.sock")
	logs := &syncBuffer{}
	metricsAddr := freeLoopbackAddr(t)
	// Never the node's own provider directories.
	providers := filepath.Join(dir, "providers")
	require.NoError(t, os.Mkdir(providers, 0o750))
	cmd := exec.Command(testenv.Binary(t, "kvdriver"),
		append([]string{"--endpoint", "unix://" + sock, "--nodeid", "node-1", "--kubeconfig", kubeconfig, "-v", "5",
			"--metrics-addr", metricsAddr, "--providers-dir", providers,
			// Every republish fetches again, so that rotation tests need not
			// wait out the poll interval; a test sets its own after this.
			"--rotation-poll-interval", "0s"}, driverArgs...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, emu.Env()...)
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	env := &driverEnv{proc: cmd, exited: make(chan struct{})}
	go func() { env.exitErr = cmd.Wait(); close(env.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-env.exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-env.exited
		}
		if t.Failed() {
			out := logs.String()
			if len(out) > 16<<10 {
				out = "...\n" + out[len(out)-16<<10:]
			}
			t.Logf("kvdriver output (last 16 KiB):\n%s", out)
		}
	})

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	env.cp, env.emu, env.dyn, env.node, env.ident = cp, emu, dyn, csipb.NewNodeClient(conn), csipb.NewIdentityClient(conn)
	env.logs, env.kubelet, env.socket, env.metrics = logs, filepath.Join(dir, "kubelet"), "unix://"+sock, "http://"+metricsAddr+"/metrics"
	env.providers = providers
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := env.ident.Probe(ctx, &csipb.ProbeRequest{})
		return err == nil && resp.GetReady().GetValue()
	}, 30*time.Second, 50*time.Millisecond, "kvdriver never became ready:\n%s", logs)
	return env
}

// createClass stores a SecretProviderClass.
func (e *driverEnv) createClass(t testing.TB, namespace, name string, params map[string]string) {
	t.Helper()
	class := &spc.SecretProviderClass{
		TypeMeta:   metav1.TypeMeta{APIVersion: spc.SchemeGroupVersion.String(), Kind: "SecretProviderClass"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       spc.SecretProviderClassSpec{Provider: "azure", Parameters: params},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(class)
	require.NoError(t, err)
	_, err = e.dyn.Resource(spc.SecretProviderClassesResource).Namespace(namespace).
		Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// createPod stores a pod object (no kubelet runs it; the test is kubelet).
func (e *driverEnv) createPod(t testing.TB, namespace, name, serviceAccount string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if _, err := e.cp.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, serviceAccount, metav1.GetOptions{}); err != nil {
		_, err := e.cp.CreateServiceAccount(ctx, namespace, serviceAccount, nil)
		require.NoError(t, err)
	}
	pod, err := e.cp.Client.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: serviceAccount,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	return pod
}

// publishRequest is what kubelet sends for an inline csi volume of pod with
// podInfoOnMount, and tokenRequests when token is set.
func (e *driverEnv) publishRequest(pod *corev1.Pod, volumeName, class string, secrets map[string]string, token string) *csipb.NodePublishVolumeRequest {
	var tokens kubelet.Tokens
	if token != "" {
		tokens = kubelet.Tokens{emulator.DefaultFederatedAudience: token}
	}
	return kubelet.PublishRequest(e.kubelet, pod, volumeName, class, secrets, tokens)
}

// mkTargetParent creates what kubelet creates before it publishes.
func mkTargetParent(t testing.TB, target string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o750))
}

func callCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// unmountUnder detaches every mount below root.
func unmountUnder(t testing.TB, root string) {
	t.Helper()
	mounts, err := mount.New("").List()
	if err != nil {
		t.Errorf("list mounts: %v", err)
		return
	}
	for _, m := range mounts {
		if strings.HasPrefix(m.Path, root+string(filepath.Separator)) {
			if err := unix.Unmount(m.Path, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", m.Path, err)
			}
		}
	}
}

// metric returns the sum of the samples of kvdriver's metric name whose
// labels include labels.
func (e *driverEnv) metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	resp, err := http.Get(e.metrics)
	require.NoError(t, err)
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	var sum float64
	fam, ok := families[name]
	if !ok {
		return 0
	}
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}
