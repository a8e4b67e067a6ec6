//go:build linux

package atomicwriter

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a fresh tmpfs with the given options on a temporary
// directory and unmounts it when the test ends. It skips unless root.
func mountTmpfs(tb testing.TB, opts string) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("mounting tmpfs needs root")
	}
	dir := tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		if errors.Is(err, unix.EPERM) {
			tb.Skipf("cannot mount tmpfs here: %v", err)
		}
		tb.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	// Registered after TempDir's removal, so it runs before it.
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
	})
	var st unix.Statfs_t
	require.NoError(tb, unix.Statfs(dir, &st))
	require.Equal(tb, int64(unix.TMPFS_MAGIC), int64(st.Type), "not a tmpfs")
	return dir
}

func TestTmpfsRoot(t *testing.T) {
	t.Run("layout, update, no-op", func(t *testing.T) {
		dir := mountTmpfs(t, "size=4m,mode=0755")
		p1 := map[string]File{"tls.crt": file("c1", 0), "tls.key": file("k1", 0o600), "chain/0": file("0", 0o440)}
		require.True(t, write(t, dir, p1, Options{}))
		target := dataTarget(t, dir)
		assert.ElementsMatch(t, []string{DataDir, target, "tls.crt", "tls.key", "chain"}, topLevel(t, dir))
		assert.Equal(t, os.FileMode(0o600), perm(t, filepath.Join(dir, target, "tls.key")))
		assertVisible(t, dir, p1)
		assert.False(t, write(t, dir, p1, Options{}))
		assert.Equal(t, target, dataTarget(t, dir))

		p2 := map[string]File{"tls.crt": file("c2", 0), "chain/1": file("1", 0)}
		require.True(t, write(t, dir, p2, Options{}))
		assert.NoDirExists(t, filepath.Join(dir, target))
		assert.ElementsMatch(t, []string{DataDir, dataTarget(t, dir), "tls.crt", "chain"}, topLevel(t, dir))
		assertPayload(t, dir, p2)
	})

	t.Run("modes under umask 077, owner", func(t *testing.T) {
		withUmask(t, 0o077)
		dir := mountTmpfs(t, "size=4m")
		p := map[string]File{"a": file("a", 0), "b/c": file("c", 0o400)}
		require.True(t, write(t, dir, p, Options{Owner: &Owner{UID: -1, GID: 2000}}))
		data := filepath.Join(dir, dataTarget(t, dir))
		assert.Equal(t, DefaultFileMode, perm(t, filepath.Join(data, "a")))
		assert.Equal(t, os.FileMode(0o400), perm(t, filepath.Join(data, "b/c")))
		assert.Equal(t, DirMode, perm(t, filepath.Join(data, "b")))
		var st unix.Stat_t
		require.NoError(t, unix.Stat(filepath.Join(data, "b/c"), &st))
		assert.Equal(t, uint32(2000), st.Gid)
	})

	t.Run("concurrent readers", func(t *testing.T) {
		runConcurrentReaders(t, mountTmpfs(t, "size=16m"), 300)
	})

	t.Run("out of space rolls back", func(t *testing.T) {
		dir := mountTmpfs(t, "size=256k")
		small := map[string]File{"keep": file("keep", 0)}
		require.True(t, write(t, dir, small, Options{}))
		before := snapshot(t, dir, false)
		var sfs unix.Statfs_t
		require.NoError(t, unix.Statfs(dir, &sfs))
		free := sfs.Bfree

		big := map[string]File{
			"a-first": file("fits", 0),
			"keep":    file("changed", 0),
			"z-big":   {Data: []byte(strings.Repeat("x", 1<<20))},
		}
		changed, err := Write(dir, big, Options{})
		require.Error(t, err)
		assert.ErrorIs(t, err, unix.ENOSPC)
		assert.False(t, changed)
		assert.Equal(t, before, snapshot(t, dir, false), "nothing visible changed, temporary payload removed")
		require.NoError(t, unix.Statfs(dir, &sfs))
		assert.Equal(t, free, sfs.Bfree, "space given back")
		assertPayload(t, dir, small)
	})
}
