// Package containerd starts a containerd of the tests' own, beside any the
// machine runs: its root, state, sockets and CNI configuration live in a
// temporary directory, and it runs in a mount namespace of its own (mounts
// from the machine propagate in, its own snapshot mounts never leak out, and
// a tmpfs hides the fixed /run/containerd paths its shims use), so that
// stopping it leaves nothing behind.
//
// Its CRI configuration is the one the test node needs: overlayfs
// snapshots, restrict_oom_score_adj (root on a test machine may lack
// CAP_SYS_RESOURCE, and runc then fails to start containers), a locally
// imported sandbox image, and the CNI plugins from Debian's
// containernetworking-plugins. Needs root and containerd, runc and ctr on
// PATH (make deps installs them).
package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// Namespace is the containerd namespace kubelet's CRI uses; images must be
// imported there for pods to find them.
const Namespace = "k8s.io"

// Options says how to run containerd.
type Options struct {
	// SandboxImage is the pod sandbox (pause) image, which must be imported
	// before a pod starts.
	SandboxImage string
	// CNIBinDir holds the CNI plugins; default /usr/lib/cni.
	CNIBinDir string
	// NetNS, when set, is a network namespace (a path such as
	// /run/netns/NAME) containerd runs in.
	NetNS string
	// InCallerNamespaces runs containerd in the caller's mount and network
	// namespaces, which the caller keeps private to its test (as
	// test/cluster's node does, so that kubelet and containerd see the same
	// mounts) and where the caller has mounted a tmpfs over /run/containerd.
	// containerd then gets no mount namespace of its own.
	InCallerNamespaces bool
}

// Containerd is a running containerd.
type Containerd struct {
	// Dir holds everything it writes: root/, state/, cni/ (CNI
	// configuration), the log and the sockets.
	Dir string
	// Socket is its gRPC address (a unix socket path), for ctr -a and
	// kubelet's --container-runtime-endpoint (unix://Socket).
	Socket string
	// CNIConfDir is where CNI network configuration goes.
	CNIConfDir string

	cmd  *exec.Cmd
	done chan error
	runc string // where /run/containerd would be, if this process made it
}

const config = `version = 2
root = "{{.Dir}}/root"
state = "{{.Dir}}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.SandboxImage}}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.CNIBinDir}}"
    conf_dir = "{{.CNIConfDir}}"
`

// Skip skips t with the reason when this machine cannot run a containerd
// of the tests' own: not root, or the packages are missing.
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: containerd needs root (mount namespaces, overlay mounts); make test runs as root")
	}
	for _, bin := range []string{"containerd", "ctr", "runc", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipped: %s is not on PATH; make deps installs containerd, runc and the CNI plugins", bin)
		}
	}
}

// StartT starts containerd for t and stops it, removing everything it
// made, when t ends.
func StartT(t testing.TB, opts Options) *Containerd {
	t.Helper()
	Skip(t)
	c, err := Start(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// Start starts containerd with its files in dir and waits until it
// answers.
func Start(dir string, opts Options) (*Containerd, error) {
	if opts.CNIBinDir == "" {
		opts.CNIBinDir = "/usr/lib/cni"
	}
	c := &Containerd{
		Dir:        dir,
		Socket:     filepath.Join(dir, "containerd.sock"),
		CNIConfDir: filepath.Join(dir, "cni"),
		done:       make(chan error, 1),
	}
	if err := os.MkdirAll(c.CNIConfDir, 0o755); err != nil {
		return nil, err
	}
	var cfg bytes.Buffer
	err := template.Must(template.New("config").Parse(config)).Execute(&cfg, map[string]string{
		"Dir": dir, "Socket": c.Socket, "SandboxImage": opts.SandboxImage,
		"CNIBinDir": opts.CNIBinDir, "CNIConfDir": c.CNIConfDir,
	})
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		return nil, err
	}
	// The shims put their sockets under /run/containerd whatever the
	// config says; a tmpfs there, inside the mount namespace, keeps them
	// private. The mount point must exist on the machine (a caller's
	// private namespace has that tmpfs already).
	if _, err := os.Stat("/run/containerd"); !opts.InCallerNamespaces && errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/run/containerd", 0o711); err != nil {
			return nil, err
		}
		c.runc = "/run/containerd"
	}
	log, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	script := `mount -t tmpfs -o mode=0711 tmpfs /run/containerd && exec containerd --config "$1"`
	args := []string{"--mount", "--propagation", "slave", "sh", "-c", script, "containerd", cfgPath}
	name := "unshare"
	if opts.InCallerNamespaces {
		name, args = "containerd", []string{"--config", cfgPath}
	} else if opts.NetNS != "" {
		args = append([]string{"--net=" + opts.NetNS, "unshare"}, args...)
		name = "nsenter"
	}
	c.cmd = exec.Command(name, args...)
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.removeRun()
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	go func() { c.done <- c.cmd.Wait() }()

	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Ctr(context.Background(), "version"); err == nil {
			return c, nil
		}
		select {
		case err := <-c.done:
			c.done <- err
			c.Stop()
			return nil, fmt.Errorf("containerd exited: %v; log:\n%s", err, c.Log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("containerd did not answer on %s in 20s; log:\n%s", c.Socket, c.Log())
		}
	}
}

// Ctr runs ctr against this containerd in the CRI's namespace and returns
// its output.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.Socket, "--namespace", Namespace}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Import imports image tarballs (docker save's format or OCI archives).
func (c *Containerd) Import(ctx context.Context, tarballs ...string) error {
	for _, tb := range tarballs {
		if _, err := c.Ctr(ctx, "images", "import", tb); err != nil {
			return err
		}
	}
	return nil
}

// Run runs image ref as a container named id to completion, with env
// (NAME=value), and returns what it printed. ctr's FIFOs go under Dir, where
// both ctr and containerd see them.
func (c *Containerd) Run(ctx context.Context, ref, id string, env ...string) (string, error) {
	args := []string{"run", "--rm", "--fifo-dir", filepath.Join(c.Dir, "fifo")}
	for _, e := range env {
		args = append(args, "--env", e)
	}
	return c.Ctr(ctx, append(args, ref, id)...)
}

// Images lists the names of the images containerd holds.
func (c *Containerd) Images(ctx context.Context) ([]string, error) {
	out, err := c.Ctr(ctx, "images", "list", "--quiet")
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// Log returns what containerd has logged so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	return string(b)
}

// Stop stops containerd (SIGTERM, then SIGKILL after 10 s) and everything
// in its process group, and removes /run/containerd if Start made it. Its
// mounts go with its mount namespace. Stopping twice is harmless.
func (c *Containerd) Stop() error {
	if c.cmd == nil || c.cmd.Process == nil {
		c.removeRun()
		return nil
	}
	pgid := c.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	var err error
	select {
	case err = <-c.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-c.done
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL) // anything it left in its group
	c.done <- err
	c.cmd = nil
	c.removeRun()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return fmt.Errorf("stop containerd: %w", err)
	}
	return nil
}

func (c *Containerd) removeRun() {
	if c.runc != "" {
		// Empty on the machine: everything went to the namespace's tmpfs.
		_ = os.Remove(c.runc)
		c.runc = ""
	}
}
