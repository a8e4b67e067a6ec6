package cluster_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/cluster"
	"github.com/kvnode/kvnode/test/images"
)

func TestMain(m *testing.M) {
	// nmi, for the chart's documented clean-up of a node after uninstall.
	cluster.Main(m, "github.com/kvnode/kvnode/cmd/nmi")
}

// TestNodeRunsImagesAndLeavesNothing starts a node with containerd only,
// runs the test app's image in it under runc, and checks that stopping the
// node leaves no process, mount, cgroup or directory behind.
func TestNodeRunsImagesAndLeavesNothing(t *testing.T) {
	set := images.LoadT(t)
	before := nodeBefore()
	n := cluster.StartT(t, cluster.Options{Images: set})

	got, err := n.Containerd.Images(context.Background())
	require.NoError(t, err)
	for _, ref := range set.Refs() {
		assert.Contains(t, got, ref)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// /etc/passwd is the image's own (make images writes it).
	out, err := n.Containerd.Run(ctx, set["app"].Ref, "app-once", "SECRET_FILE=/etc/passwd")
	require.NoError(t, err)
	assert.Regexp(t, `^file /etc/passwd: \d+ bytes sha256 [0-9a-f]{64}\n$`, out)

	// A container still running when the node stops is killed with it.
	_, err = n.Containerd.Ctr(ctx, "run", "--detach", "--fifo-dir", n.Containerd.Dir+"/fifo", set["pause"].Ref, "left-running")
	require.NoError(t, err)

	require.NoError(t, n.Stop())
	assertNodeGone(t, n, before)
	for _, ctrl := range []string{"memory", "pids", "cpu", "unified"} {
		_, err := os.Stat("/sys/fs/cgroup/" + ctrl + "/k8s.io/left-running")
		assert.ErrorIs(t, err, os.ErrNotExist, "the container's %s cgroup is gone", ctrl)
	}
}

// existing reports which of paths exist.
func existing(paths []string) map[string]bool {
	m := map[string]bool{}
	for _, p := range paths {
		_, err := os.Lstat(p)
		m[p] = err == nil
	}
	return m
}

// machinePaths are where Kubernetes components write by default; the node
// configures each elsewhere, and none may appear on the machine.
var machinePaths = []string{
	"/usr/libexec/kubernetes", "/run/kubernetes", "/etc/kubernetes", "/etc/cni", "/opt/cni",
	"/var/lib/containerd", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/containerd",
	"/run/secrets-store-csi-providers",
}

// nodeBefore records which of the node's and the machine's default paths
// exist before a node starts.
func nodeBefore() map[string]bool { return existing(append(cluster.NodePaths(), machinePaths...)) }

// assertNodeGone checks that a stopped node left no containerd, shim,
// mount or directory behind (before is nodeBefore's).
func assertNodeGone(t *testing.T, n *cluster.Node, before map[string]bool) {
	t.Helper()
	assert.Empty(t, cluster.Processes(n.Containerd.Socket), "no containerd or shim is left")
	assert.Empty(t, cluster.Mounts(n.Dir), "no mount is left under the node's directory")
	for p, existed := range before {
		assert.Empty(t, cluster.Mounts(p), "nothing is mounted on %s", p)
		if !existed {
			_, err := os.Lstat(p)
			assert.ErrorIs(t, err, os.ErrNotExist, "%s, which was not there before the node, is not there after it", p)
		}
	}
}
