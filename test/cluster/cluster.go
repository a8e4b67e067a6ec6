// Package cluster starts the node kvnode's cluster tests run on: a network
// namespace of its own with only loopback, so that nothing the node runs can
// send a packet off the machine, a containerd inside it (see
// test/containerd) with the images of make images imported, and later the
// control plane and kubelet. Everything it makes is taken down when the test
// ends, passes, fails or is interrupted: containers, shims, containerd,
// the cgroups they created, the network namespace and the files.
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvnode/kvnode/test/containerd"
	"github.com/kvnode/kvnode/test/images"
)

// Options says what the node starts with.
type Options struct {
	// Images are imported into containerd; the "pause" one is the pod
	// sandbox.
	Images images.Set
}

// Node is a running test node.
type Node struct {
	// NetNS is the path of the node's network namespace.
	NetNS string
	// Containerd is the node's container runtime.
	Containerd *containerd.Containerd

	netnsName string
	cgroups   map[string]bool // cgroup directories that existed before
	mu        sync.Mutex      // held while starting
	stopOnce  sync.Once
	stopErr   error
}

var seq atomic.Int64

// StartT starts a node for t and tears it down when t ends or the process
// is interrupted (SIGINT, SIGTERM), even while it is still starting. It
// skips t where the machine cannot run one.
func StartT(t testing.TB, opts Options) *Node {
	t.Helper()
	containerd.Skip(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: ip (iproute2) is not on PATH; make deps installs it")
	}
	n := newNode()
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
	})
	if err := n.start(t.TempDir(), opts); err != nil {
		t.Fatal(err)
	}
	return n
}

// Start starts a node with its files in dir; the caller stops it.
func Start(dir string, opts Options) (*Node, error) {
	n := newNode()
	if err := n.start(dir, opts); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

func newNode() *Node {
	name := fmt.Sprintf("kvnode-node-%d-%d", os.Getpid(), seq.Add(1))
	return &Node{NetNS: filepath.Join("/run/netns", name), netnsName: name, cgroups: cgroupDirs()}
}

// start brings the node up; Stop waits for it to finish.
func (n *Node) start(dir string, opts Options) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	pause, ok := opts.Images["pause"]
	if !ok {
		return errors.New("the images have no pause (sandbox) image")
	}
	if out, err := exec.Command("ip", "netns", "add", n.netnsName).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %w: %s", err, out)
	}
	if out, err := exec.Command("ip", "-n", n.netnsName, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up in %s: %w: %s", n.netnsName, err, out)
	}
	c, err := containerd.Start(filepath.Join(dir, "containerd"), containerd.Options{SandboxImage: pause.Ref, NetNS: n.NetNS})
	if err != nil {
		return err
	}
	n.Containerd = c
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return c.Import(ctx, opts.Images.Paths()...)
}

// Stop takes the node down: its containers, containerd and its shims, the
// cgroups they made, the network namespace. Stopping twice is harmless.
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
	if err := removeNewCgroups(n.cgroups); err != nil {
		errs = append(errs, err)
	}
	if out, err := exec.Command("ip", "netns", "delete", n.netnsName).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
		errs = append(errs, fmt.Errorf("ip netns delete %s: %w: %s", n.netnsName, err, out))
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

const cgroupRoot = "/sys/fs/cgroup"

// cgroupDirs lists the cgroup directories directly under each hierarchy
// (cgroup v1's controllers) and under the root (cgroup v2).
func cgroupDirs() map[string]bool {
	dirs := map[string]bool{}
	for _, pattern := range []string{"*/*/", "*/"} {
		matches, _ := filepath.Glob(filepath.Join(cgroupRoot, pattern))
		for _, m := range matches {
			dirs[filepath.Clean(m)] = true
		}
	}
	return dirs
}

// The top-level cgroups the node's processes make: containerd's for
// containers run in its k8s.io namespace, kubelet's for pods.
var nodeCgroups = []string{"k8s.io", "kubepods", "kubepods.slice"}

// removeNewCgroups removes the node's cgroups (nodeCgroups under each
// hierarchy) that did not exist before, deepest first. A cgroup directory
// holds only pseudo-files, so rmdir removes it once no process is in it.
func removeNewCgroups(before map[string]bool) error {
	var errs []error
	for dir := range cgroupDirs() {
		if before[dir] || !slices.Contains(nodeCgroups, filepath.Base(dir)) {
			continue
		}
		if err := removeCgroup(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeCgroup(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroup(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	var err2 error
	for i := 0; i < 50; i++ { // processes may still be leaving it
		if err2 = syscall.Rmdir(dir); err2 == nil || errors.Is(err2, syscall.ENOENT) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err2)
}
