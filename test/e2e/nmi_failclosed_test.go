package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/testenv"
)

// TestNMIRestartFailsClosed stops an nmi that keeps its rules (the chart's
// setting): while no nmi runs, a pod's request to the metadata address is
// refused at once instead of reaching the node's IMDS, and `nmi --cleanup`
// removes the rules afterwards.
func TestNMIRestartFailsClosed(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	require.NoError(t, cp.EnsureNamespace(ctx, "apps"))
	_, err := cp.CreateServiceAccount(ctx, "apps", "sa-d", nil)
	require.NoError(t, err)
	pod := &nmiPod{name: "pod-d", sa: "sa-d", ip: "10.244.3.2"}
	createNodePod(ctx, t, cp, pod)
	addPodNetns(t, pod)

	nmi := startNMI(t, cp, emu, "--remove-rules-on-exit=false")
	nmi.waitReady(t)
	code, out := curlInPod(t, pod, "")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "403", "nmi answers the unbound pod")

	nmi.stop(t)
	nat := iptablesRules(t, "nat")
	assert.Contains(t, nat, "KVNODE-NMI", "the rules stay while no nmi runs")
	start := time.Now()
	code, out = curlInPod(t, pod, "")
	assert.NotEqual(t, 0, code, "with no nmi the pod must get nothing: %s", out)
	assert.Contains(t, out, "Failed to connect to 169.254.169.254 port 80", "the DNAT sends it to a closed port")
	assert.Less(t, time.Since(start), 2*time.Second, "refused at once, not timed out")

	cleanup := exec.Command(testenv.Binary(t, "nmi"), "--cleanup",
		"--listen-addr", net.JoinHostPort(nmiAddr, strconv.Itoa(nmiPort)), "--node-name", nmiNodeName)
	cleanup.Env = []string{"PATH=" + os.Getenv("PATH")}
	b, err := cleanup.CombinedOutput()
	require.NoError(t, err, "%s", b)
	for _, table := range []string{"nat", "raw"} {
		assert.NotContains(t, iptablesRules(t, table), "KVNODE", "table %s after nmi --cleanup", table)
	}
}

func iptablesRules(t *testing.T, table string) string {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "-t", table, "-S").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return string(out)
}
