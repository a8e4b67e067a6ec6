// Package pinned finds the pinned tools the tests and the demo run. Each is
// built once, at the version its hack/ script names, into a cache outside the
// repository; make passes its path in an environment variable, and without
// that variable the script is run (it prints the cached path, building it
// first when the cache is cold).
package pinned

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Tool is one pinned tool: the variable that names its path and the script
// that builds it.
type Tool struct {
	Env    string
	Script string
}

var (
	// ControlPlane is the directory holding etcd and kube-apiserver.
	ControlPlane = Tool{Env: "KUBEBUILDER_ASSETS", Script: "controlplane-bins.sh"}
	// NodeBins is the directory holding kubelet, kube-controller-manager and
	// kube-scheduler.
	NodeBins = Tool{Env: "KVNODE_NODE_BINS", Script: "node-bins.sh"}
	// Helm is the Helm CLI.
	Helm = Tool{Env: "KVNODE_HELM", Script: "helm-bin.sh"}
)

// Root is the repository's root directory, located from this source file.
func Root() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the repository")
	}
	return filepath.Join(filepath.Dir(file), "..", ".."), nil
}

// Path returns $Env or, when it is unset, what hack/Script prints; the
// script's progress goes to standard error.
func (t Tool) Path() (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	return t.PathIn(root)
}

// PathIn is Path with the repository at root.
func (t Tool) PathIn(root string) (string, error) {
	if p := os.Getenv(t.Env); p != "" {
		return p, nil
	}
	script := filepath.Join(root, "hack", t.Script)
	cmd := exec.Command(script)
	cmd.Stderr = os.Stderr // a cold build reports its progress
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s (or set %s): %w", script, t.Env, err)
	}
	return strings.TrimSpace(string(out)), nil
}
