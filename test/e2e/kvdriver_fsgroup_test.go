package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/kubelet"
)

// TestKVDriverFSGroup: kvdriver has the VOLUME_MOUNT_GROUP capability, so
// kubelet hands it the pod's fsGroup; every file and directory of the
// volume, its root included, belongs to that group, at the first write and
// at every rotation, and a process of the pod's user and group reads a
// file its filePermission closes to others.
func TestKVDriverFSGroup(t *testing.T) {
	e := startDriverEnvArgs(t, "--object-cache-ttl", "0", "--rotation-poll-interval", "0")
	seedBadInput(t, e)
	ctx := callCtx(t)
	const ns, fsGroup = "fsgroup", 2000

	caps, err := e.node.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
	require.NoError(t, err)
	require.Len(t, caps.GetCapabilities(), 1)
	assert.Equal(t, csipb.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP, caps.GetCapabilities()[0].GetRpc().GetType())

	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))
	_, err = e.emu.SetSecret(badVault, "grouped", "first value", emulator.SecretOptions{})
	require.NoError(t, err)
	e.createClassOf(t, ns, "grouped", "", badParams("objects", objectsParam(
		"objectName: grouped\nobjectType: secret\nfilePermission: \"0640\"",
		"objectName: grouped\nobjectType: secret\nobjectAlias: history\nobjectVersionHistory: 2",
	)))
	e.waitForClasses(t, ns)

	pod := e.createPod(t, ns, "app", "app")
	req := e.publishRequest(pod, "secrets", "grouped", spCredentials(spClientID, spSecret), "")
	kubelet.SetFSGroup(req, "2000")
	mkTargetParent(t, req.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assertGroup(t, req.TargetPath, fsGroup, 3) // grouped, history/, history/0
	assert.Equal(t, "first value", readAs(t, req.TargetPath, "grouped", fsGroup))
	assert.Empty(t, readAs(t, req.TargetPath, "grouped", fsGroup+1), "a process of another group is refused")

	// A rotation writes new files: they are the group's too.
	_, err = e.emu.SetSecret(badVault, "grouped", "second value", emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, "second value", readAs(t, req.TargetPath, "grouped", fsGroup))
	assertGroup(t, req.TargetPath, fsGroup, 4) // history/1 now
	_, err = e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
	require.NoError(t, err)

	// Without an fsGroup nothing changes hands.
	plain := e.publishRequest(pod, "plain", "grouped", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, plain.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, plain)
	require.NoError(t, err)
	assertGroup(t, plain.TargetPath, os.Getgid(), 4)
}

// assertGroup checks that the volume at target, its root and everything
// behind ..data, belongs to gid, and that n files and directories are there.
func assertGroup(t *testing.T, target string, gid, n int) {
	t.Helper()
	groupOf := func(p string) int {
		var st syscall.Stat_t
		require.NoError(t, syscall.Stat(p, &st), p)
		return int(st.Gid)
	}
	assert.Equal(t, gid, groupOf(target), "the volume's root")
	data := filepath.Join(target, "..data")
	var seen int
	require.NoError(t, filepath.WalkDir(data+"/", func(p string, _ os.DirEntry, err error) error {
		if err != nil || p == data+"/" {
			return err
		}
		seen++
		assert.Equal(t, gid, groupOf(p), p)
		return nil
	}))
	assert.Equal(t, n, seen)
}

// readAs reads name from the volume at target in a process of an
// unprivileged user in group gid, as a container of the pod would; it
// returns "" when the read is refused. The process reaches the volume
// through a directory descriptor, as a container reaches it through its
// mount, since the kubelet directories above it are root's.
func readAs(t *testing.T, target, name string, gid int) string {
	t.Helper()
	dir, err := os.Open(target)
	require.NoError(t, err)
	defer dir.Close()
	cmd := exec.Command("/bin/cat", "/proc/self/fd/3/"+name)
	cmd.ExtraFiles = []*os.File{dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 4242, Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "cat did not run")
		assert.Contains(t, string(ee.Stderr), "Permission denied")
		return ""
	}
	return string(out)
}
