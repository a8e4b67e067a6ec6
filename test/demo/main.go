// Command demo shows kvnode's two jobs end to end, offline: kvdriver, the CSI
// node plugin, mounts Azure Key Vault objects into pods, and nmi gives pods
// the tokens of the identities bound to them.
//
// It runs, in a private network namespace that has only loopback (the
// node), the Azure emulator seeded from examples/emulator-demo.yaml, a real
// etcd and kube-apiserver with the chart's CRDs, and the kvdriver and nmi
// binaries with the Helm chart's RBAC. It stores
// examples/secretproviderclass-demo.yaml and two pods, then acts as kubelet
// over kvdriver's CSI socket: publish, publish a second pod (served from
// kvdriver's object cache), rotate a secret and republish, unpublish. Then
// two pods with network namespaces of their own run the unmodified Azure SDK
// client: a pod whose ServiceAccount names the seed's managed identity gets
// a token through 169.254.169.254 (twice: the second from nmi's cache), a
// pod with no identity is refused, and the first pod mounts
// examples/secretproviderclass-pod-identity-demo.yaml with its own identity.
// It prints what a user would check at each step and stops everything it
// started.
//
// Run it as root from the repository (make demo). $KUBEBUILDER_ASSETS and
// $KVNODE_HELM name the control-plane binaries and Helm; without them the
// hack/ scripts provide them, building them the first time.
package main

import (
	"errors"
	"fmt"
	"os"
)

// Environment entries by which the re-executed demo finds its way.
const (
	// envInside marks the process running in the private network namespace.
	envInside = "KVNODE_DEMO_IN_NETNS"
	// envDir is the demo's temporary directory, which the outer process
	// created and removes.
	envDir = "KVNODE_DEMO_DIR"
	// envKVDriver, envNMI and envSDKClient are the binaries the outer
	// process built: kvdriver, nmi and the Azure SDK client the pods run.
	envKVDriver  = "KVNODE_DEMO_KVDRIVER"
	envNMI       = "KVNODE_DEMO_NMI"
	envSDKClient = "KVNODE_DEMO_SDKCLIENT"
	// envStart is when the outer process started (RFC 3339), for the times
	// the demo prints.
	envStart = "KVNODE_DEMO_START"
)

// exitStatus is the status of a demo process that already said why it failed.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func main() {
	if err := run(); err != nil {
		var st exitStatus
		if errors.As(err, &st) {
			os.Exit(int(st))
		}
		fmt.Fprintln(os.Stderr, "kvnode demo:", err)
		os.Exit(1)
	}
}

func run() error {
	if os.Getenv(envInside) == "1" {
		return runInside()
	}
	return runOutside()
}
