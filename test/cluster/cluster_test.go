package cluster_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/cluster"
	"github.com/kvnode/kvnode/test/images"
)

// TestNodeRunsImagesAndLeavesNothing starts a node, runs the test app's
// image in it under runc, and checks that stopping the node leaves no
// process, mount, cgroup, network namespace or /run/containerd behind.
func TestNodeRunsImagesAndLeavesNothing(t *testing.T) {
	set := images.LoadT(t)
	_, runBefore := os.Stat("/run/containerd")
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
	assert.Empty(t, cluster.Processes(n.Containerd.Socket), "no containerd or shim is left")
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	assert.NotContains(t, string(mounts), n.Containerd.Dir, "no mount is left")
	_, err = os.Stat(n.NetNS)
	assert.ErrorIs(t, err, os.ErrNotExist, "the network namespace is gone")
	netns, err := exec.Command("ip", "netns", "list").CombinedOutput()
	require.NoError(t, err)
	assert.NotContains(t, string(netns), strings.TrimPrefix(n.NetNS, "/run/netns/"))
	if os.IsNotExist(runBefore) {
		_, err = os.Stat("/run/containerd")
		assert.ErrorIs(t, err, os.ErrNotExist, "/run/containerd, made for the node, is gone")
	}
	for _, ctrl := range []string{"memory", "pids", "cpu", "unified"} {
		_, err := os.Stat("/sys/fs/cgroup/" + ctrl + "/k8s.io/left-running")
		assert.ErrorIs(t, err, os.ErrNotExist, "the container's %s cgroup is gone", ctrl)
	}
}
