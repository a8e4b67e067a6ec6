package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kvnode/kvnode/test/netns"
	"github.com/kvnode/kvnode/test/pinned"
)

// modulePath is the module the demo belongs to; its go.mod marks the
// repository root.
const modulePath = "github.com/kvnode/kvnode"

// errNotRoot is the whole message when the demo cannot run.
var errNotRoot = errors.New("make demo needs root (tmpfs mounts, network namespaces, iptables)")

// runOutside prepares what needs the machine's network or the repository's
// scripts (the kvdriver build, the control-plane binaries, Helm), re-executes
// the demo in a private network namespace, and afterwards removes the
// demo's temporary directory, unmounting anything a killed demo left there.
func runOutside() error {
	start := time.Now()
	ignoreBrokenPipe()
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	assets, err := pinned.ControlPlane.PathIn(root)
	if err != nil {
		return err
	}
	helm, err := pinned.Helm.PathIn(root)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "kvnode-demo-")
	if err != nil {
		return fmt.Errorf("create the demo's directory: %w", err)
	}
	removed := false
	defer func() {
		if removed {
			return
		}
		if err := removeDemoDir(dir); err != nil {
			fmt.Fprintln(os.Stderr, "kvnode demo:", err)
		}
	}()

	fmt.Printf("kvnode demo: kvdriver mounts Azure Key Vault objects into pods, nmi gives pods their identities' tokens; offline\n")
	fmt.Printf("[%5.1fs] building kvdriver, nmi and an Azure SDK client (go build ./cmd/kvdriver ./cmd/nmi ./test/sdkclient) into %s\n",
		time.Since(start).Seconds(), dir)
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/kvdriver", "./cmd/nmi", "./test/sdkclient")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := runWithProgress(build, start, "go build"); err != nil {
		return fmt.Errorf("build kvdriver, nmi and sdkclient: %w", err)
	}

	// Temporary files of the control plane go below dir too, so that they
	// go with it even if the demo inside is killed.
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("create the demo's directory: %w", err)
	}
	cmd, err := netns.Command([]string{
		envInside + "=1", envStart + "=" + start.Format(time.RFC3339Nano), envDir + "=" + dir, envKVDriver + "=" + filepath.Join(bin, "kvdriver"),
		envNMI + "=" + filepath.Join(bin, "nmi"), envSDKClient + "=" + filepath.Join(bin, "sdkclient"),
		pinned.ControlPlane.Env + "=" + assets, pinned.Helm.Env + "=" + helm, "TMPDIR=" + tmp,
	})
	if err != nil {
		return err
	}
	// The demo inside stops what it started when interrupted; this process
	// waits for it, passing on a signal sent to this process alone.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the demo in a private network namespace: %w", err)
	}
	// Holding the namespace open keeps it, and its identity, until the
	// leftovers check below.
	ns, nsErr := os.Open(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for waiting := true; waiting; {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err = <-done:
			waiting = false
		}
	}
	if nsErr == nil {
		if kerr := killLeftovers(ns); kerr != nil {
			fmt.Fprintln(os.Stderr, "kvnode demo:", kerr)
		}
		ns.Close()
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return exitStatus(ee.ExitCode())
		}
		return fmt.Errorf("demo in the private network namespace: %w", err)
	}
	removed = true
	if err := removeDemoDir(dir); err != nil {
		return err
	}
	fmt.Printf("[%5.1fs] done; removed %s\n", time.Since(start).Seconds(), dir)
	return nil
}

// repoRoot finds the repository from the working directory, as go does.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modFilePath(b) == modulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run the demo inside the kvnode repository (no go.mod of %s above the working directory)", modulePath)
		}
		dir = parent
	}
}

// modFilePath returns the module path a go.mod file declares.
func modFilePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// removeDemoDir detaches any mount left below dir and deletes any pod
// network namespace left in /run/netns (only a demo that was killed leaves
// them), and removes dir.
func removeDemoDir(dir string) error {
	left, err := mountsBelow(dir)
	if err != nil {
		return err
	}
	var errs []error
	if err := removeLeftPodNetworks(dir); err != nil {
		errs = append(errs, err)
	}
	for _, m := range left {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// killLeftovers kills the processes still in the network namespace ns once
// the demo inside has exited: processes the demo started (etcd,
// kube-apiserver, kvdriver, nmi) that outlived it because it was killed.
func killLeftovers(ns *os.File) error {
	var want unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &want); err != nil {
		return fmt.Errorf("stat the demo's network namespace: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for killed := map[int]bool{}; ; {
		pids, err := processesIn(want)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			if len(killed) > 0 {
				fmt.Fprintf(os.Stderr, "kvnode demo: killed %d processes the demo left running\n", len(killed))
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of the demo outlived SIGKILL", pids)
		}
		for _, pid := range pids {
			if !killed[pid] {
				_ = unix.Kill(pid, unix.SIGKILL)
				killed[pid] = true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesIn lists the live processes whose network namespace is ns.
func processesIn(ns unix.Stat_t) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		// A zombie's namespaces cannot be read: it is already dead.
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil {
			continue
		}
		if st.Dev == ns.Dev && st.Ino == ns.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// ignoreBrokenPipe keeps the process alive when its output goes to a pipe
// that closes early (make demo | head): writes fail instead, and the demo
// still stops what it started. Unlike ignoring the signal, this is not
// inherited by the programs the demo runs.
func ignoreBrokenPipe() {
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
}

// progressEvery is how often a long build says it is still going.
const progressEvery = 30 * time.Second

// runWithProgress runs cmd and, while it runs, prints every progressEvery
// that what is still running, with the time since start: a first build
// downloads and compiles modules for minutes.
func runWithProgress(cmd *exec.Cmd, start time.Time, what string) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	began := time.Now()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			fmt.Printf("[%5.1fs] still running %s (%s so far; a first build fetches and compiles modules, later runs reuse the build cache)\n",
				time.Since(start).Seconds(), what, time.Since(began).Round(time.Second))
		}
	}
}
