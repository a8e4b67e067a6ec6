// Package cluster starts the single-node Kubernetes cluster kvnode's
// cluster tests install the chart on: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet, containerd, runc and the
// CNI bridge plugin, with the images of make images imported.
//
// The node is the test process's own namespaces: the package's TestMain
// calls testenv.NodeMain, which runs the tests in a network namespace that
// has only loopback and in a mount namespace whose mounts never reach the
// machine. Everything the node runs listens there, pods are wired to it by
// the bridge plugin, and nothing can send a packet off the machine. The
// fixed paths kubelet, containerd and the CNI plugins write to
// (/var/lib/kubelet, /var/log/pods, /run/containerd, ...) get a tmpfs each
// inside that namespace. Stop takes everything down, whether the test
// passes, fails or is interrupted: processes, containers and their shims,
// mounts, the cgroups the node made and the directories it had to create
// on the machine as mount points.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/kvnode/kvnode/test/containerd"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/images"
	"github.com/kvnode/kvnode/test/netns"
	"github.com/kvnode/kvnode/test/testenv"
)

const (
	// NodeName is the node's name (kubelet's --hostname-override).
	NodeName = "kvnode-node"
	// NodeIP is the node's address (its InternalIP, the pods' status.hostIP),
	// on the namespace's lo: it exists before any pod does.
	NodeIP = "10.199.0.2"
	// ServiceIP is the kubernetes Service's cluster IP, the first of the
	// service range. kube-apiserver serves on it, port 443, on lo, so that
	// in-cluster clients reach it without a kube-proxy.
	ServiceIP = "10.0.0.1"
	// PodSubnet is the bridge's pod network; PodGateway is the node's
	// address on the bridge (cni0).
	PodSubnet  = "10.244.0.0/24"
	PodGateway = "10.244.0.1"
)

// nodePaths are the fixed paths on which kubelet, containerd and the CNI
// plugins keep state whatever their configuration says. Each gets a tmpfs
// in the node's mount namespace.
var nodePaths = []string{
	"/var/lib/kubelet", // kubelet's root: pods, plugins, device-plugins
	"/var/log/pods",
	"/var/log/containers",
	"/var/lib/cni",    // the CNI plugins' cache
	"/run/containerd", // the shims' sockets, runc's state
	"/run/netns",      // the pods' network namespaces
	// The provider socket directories the chart's kvdriver mounts from
	// the node (hostPath DirectoryOrCreate: kubelet makes them).
	"/etc/kubernetes",
	"/run/secrets-store-csi-providers",
}

// KubeletDir is kubelet's root directory (the chart's kubeletDir default).
const KubeletDir = "/var/lib/kubelet"

// Options says what the node starts with.
type Options struct {
	// Images are imported into containerd; the "pause" one is the pod
	// sandbox.
	Images images.Set
	// Kubernetes starts the control plane, kube-controller-manager,
	// kube-scheduler and kubelet; without it the node has containerd only.
	Kubernetes bool
}

// Node is a running test node.
type Node struct {
	// Dir holds the node's files: logs, configuration, containerd's root.
	Dir string
	// Containerd is the node's container runtime.
	Containerd *containerd.Containerd
	// ControlPlane is etcd and kube-apiserver (Options.Kubernetes).
	ControlPlane *controlplane.ControlPlane
	// Kubeconfig is an admin kubeconfig file for the cluster.
	Kubeconfig string
	// CAFile is the cluster CA (the API server's serving certificate's).
	CAFile string

	procs    []*process // kubelet first: stopped in this order
	mounted  []string   // node paths with their tmpfs, in mount order
	made     []string   // directories made on the machine, outermost first
	addrs    []string   // addresses put on lo
	cgroups  netns.CgroupSet
	mu       sync.Mutex // held while starting
	stopOnce sync.Once
	stopErr  error
}

// Main is the TestMain of a package that starts a node: it runs the tests
// in the node's namespaces (testenv.NodeMain), having built programs.
func Main(m *testing.M, programs ...string) { testenv.NodeMain(m, programs...) }

// StartT starts a node for t and tears it down when t ends or the process
// is interrupted (SIGINT, SIGTERM), even while it is still starting. It
// skips t where the machine cannot run one.
func StartT(t testing.TB, opts Options) *Node {
	t.Helper()
	testenv.RequireNetns(t)
	containerd.Skip(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: ip (iproute2) is not on PATH; make deps installs it")
	}
	n := &Node{Dir: t.TempDir(), cgroups: netns.NodeCgroups()}
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, syscall.SIGINT, syscall.SIGTERM)
	stopped := make(chan struct{})
	go func() {
		select {
		case sig := <-interrupted:
			n.Stop()
			signal.Reset(sig)
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal)) // die of it, as without us
		case <-stopped:
		}
	}()
	t.Cleanup(func() {
		signal.Stop(interrupted)
		close(stopped)
		if err := n.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			n.logTails(t)
		}
	})
	if err := n.start(opts); err != nil {
		t.Fatal(err)
	}
	return n
}

// start brings the node up; Stop waits for it to finish.
func (n *Node) start(opts Options) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	pause, ok := opts.Images["pause"]
	if !ok {
		return errors.New("the images have no pause (sandbox) image")
	}
	if err := n.mountNodePaths(); err != nil {
		return err
	}
	for _, a := range []string{NodeIP, ServiceIP} {
		if out, err := exec.Command("ip", "addr", "add", a+"/32", "dev", "lo").CombinedOutput(); err != nil {
			return fmt.Errorf("ip addr add %s dev lo: %w: %s", a, err, out)
		}
		n.addrs = append(n.addrs, a)
	}
	c, err := containerd.Start(filepath.Join(n.Dir, "containerd"), containerd.Options{SandboxImage: pause.Ref, InCallerNamespaces: true})
	if err != nil {
		return err
	}
	n.Containerd = c
	if err := n.writeCNIConfig(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Import(ctx, opts.Images.Paths()...); err != nil {
		return err
	}
	if !opts.Kubernetes {
		return nil
	}
	return n.startKubernetes(ctx)
}

// mountNodePaths puts a tmpfs on each of nodePaths, making the mount
// points the machine lacks. kubelet's is a shared mount, so that a plugin
// container's Bidirectional mounts under it (pod volumes) reach kubelet and
// the pods' containers.
func (n *Node) mountNodePaths() error {
	for _, p := range nodePaths {
		if err := n.mkdirAll(p); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
			return fmt.Errorf("mount a tmpfs on %s: %w", p, err)
		}
		n.mounted = append(n.mounted, p)
	}
	if err := unix.Mount("", KubeletDir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", KubeletDir, err)
	}
	return nil
}

// mkdirAll makes dir and the parents the machine lacks, remembering them.
func (n *Node) mkdirAll(dir string) error {
	var missing []string
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	for _, d := range slices.Backward(missing) {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		n.made = append(n.made, d)
	}
	return nil
}

// writeCNIConfig configures the pod network: a bridge (cni0) with the
// node's address on it as the pods' gateway, and host-local addresses kept
// under the node's directory.
func (n *Node) writeCNIConfig() error {
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kvnode-pods",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": true,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q, "gateway": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`, PodSubnet, PodGateway, filepath.Join(n.Dir, "cni-ipam"))
	return os.WriteFile(filepath.Join(n.Containerd.CNIConfDir, "10-kvnode.conflist"), []byte(conf), 0o644)
}

// Stop takes the node down: kubelet, the controllers, the containers,
// containerd and its shims, the control plane, the node's mounts, the
// cgroups it made and the directories it made on the machine. Stopping
// twice is harmless.
func (n *Node) Stop() error {
	n.stopOnce.Do(func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.stopErr = n.stop()
	})
	return n.stopErr
}

func (n *Node) stop() error {
	var errs []error
	for _, p := range n.procs {
		if err := p.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if c := n.Containerd; c != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := c.Ctr(ctx, "tasks", "list", "--quiet"); err == nil {
			for _, id := range strings.Fields(out) {
				_, _ = c.Ctr(ctx, "tasks", "kill", "--signal", "SIGKILL", id)
				_, _ = c.Ctr(ctx, "tasks", "delete", "--force", id)
			}
		}
		if out, err := c.Ctr(ctx, "containers", "list", "--quiet"); err == nil {
			for _, id := range strings.Fields(out) {
				_, _ = c.Ctr(ctx, "containers", "delete", id)
			}
		}
		if err := c.Stop(); err != nil {
			errs = append(errs, err)
		}
		killShims(c.Socket)
	}
	if cp := n.ControlPlane; cp != nil {
		// kube-apiserver's graceful shutdown waits out open watches;
		// nothing is left on this node to be graceful to.
		_ = cp.StopAPIServer()
		if err := cp.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmountUnder(n.Dir); err != nil {
		errs = append(errs, err)
	}
	for _, p := range slices.Backward(n.mounted) {
		if err := unmountUnder(p); err != nil {
			errs = append(errs, err)
		}
	}
	n.mounted = nil
	for _, d := range slices.Backward(n.made) {
		if err := os.Remove(d); err != nil {
			errs = append(errs, err)
		}
	}
	n.made = nil
	for _, a := range n.addrs {
		_ = exec.Command("ip", "addr", "del", a+"/32", "dev", "lo").Run()
	}
	n.addrs = nil
	if err := n.cgroups.RemoveNew(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// NodePaths lists the fixed paths the node puts a tmpfs on.
func NodePaths() []string { return slices.Clone(nodePaths) }

// Mounts lists the mount points in this mount namespace at or under dir.
func Mounts(dir string) []string {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range infos {
		if m.MountPoint == dir || strings.HasPrefix(m.MountPoint, strings.TrimSuffix(dir, "/")+"/") {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// unmountUnder unmounts every mount at or under dir, deepest first.
func unmountUnder(dir string) error {
	var errs []error
	for range 3 { // stacked mounts show once per layer
		mps := Mounts(dir)
		if len(mps) == 0 {
			return nil
		}
		slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
		errs = errs[:0]
		for _, mp := range mps {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
			}
		}
	}
	if left := Mounts(dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still mounted under %s: %v", dir, left))
	}
	return errors.Join(errs...)
}

// killShims kills the shims of the containerd at socket: they leave its
// process group, so stopping containerd does not end them.
func killShims(socket string) {
	for _, pid := range Processes(socket) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(Processes(socket)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

// Processes lists the processes whose command line mentions s (the shims
// name their containerd's socket).
func Processes(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}
