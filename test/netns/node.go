package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const cgroupRoot = "/sys/fs/cgroup"

// The top-level cgroups a node's processes make: containerd's for
// containers run in its k8s.io namespace, kubelet's for pods.
var nodeCgroups = []string{"k8s.io", "kubepods", "kubepods.slice"}

// CgroupSet is the set of cgroup directories directly under each
// hierarchy (cgroup v1's controllers) and under the root (cgroup v2).
type CgroupSet map[string]bool

// NodeCgroups lists the cgroup directories there are now, so that
// RemoveNew can later remove the node's that were not.
func NodeCgroups() CgroupSet {
	dirs := CgroupSet{}
	for _, pattern := range []string{"*/*/", "*/"} {
		matches, _ := filepath.Glob(filepath.Join(cgroupRoot, pattern))
		for _, m := range matches {
			dirs[filepath.Clean(m)] = true
		}
	}
	return dirs
}

// RemoveNew removes the node's cgroups (k8s.io, kubepods) that are not in
// s, deepest first. A cgroup directory holds only pseudo-files, so rmdir
// removes it once no process is in it.
func (s CgroupSet) RemoveNew() error {
	var errs []error
	for dir := range NodeCgroups() {
		if s[dir] || !slices.Contains(nodeCgroups, filepath.Base(dir)) {
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
	for range 100 { // processes may still be leaving it
		if err2 = syscall.Rmdir(dir); err2 == nil || errors.Is(err2, syscall.ENOENT) {
			return nil
		}
		// A container whose shim is gone (killed with the node's
		// namespace) still runs in its own network namespace: the cgroup
		// is the one place that still knows it.
		killCgroupProcs(dir)
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err2)
}

// killCgroupProcs SIGKILLs every process in the cgroup dir (not below).
func killCgroupProcs(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// netnsOf returns the network namespace of process pid, as its
// /proc/PID/ns/net link reads ("net:[4026532...]").
func netnsOf(pid int) (string, error) {
	return os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", "net"))
}

// killNamespace SIGKILLs every process whose network namespace is ns and
// waits, up to timeout, until none is left. It returns the commands of
// the processes it found (each once) and an error if some outlived it.
func killNamespace(ns string, timeout time.Duration) (found []string, err error) {
	seen := map[int]bool{}
	deadline := time.Now().Add(timeout)
	for {
		left := 0
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return found, err
		}
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if got, err := netnsOf(pid); err != nil || got != ns {
				continue
			}
			if !seen[pid] {
				seen[pid] = true
				comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
				found = append(found, fmt.Sprintf("%s (%d)", trimNL(comm), pid))
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
			left++
		}
		if left == 0 {
			return found, nil
		}
		if time.Now().After(deadline) {
			return found, fmt.Errorf("%d processes still in %s after SIGKILL", left, ns)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func trimNL(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	return string(b)
}
