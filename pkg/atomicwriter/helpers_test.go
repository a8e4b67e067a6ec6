package atomicwriter

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// write calls Write and requires it to succeed.
func write(t *testing.T, dir string, payload map[string]File, opts Options) bool {
	t.Helper()
	changed, err := Write(dir, payload, opts)
	require.NoError(t, err)
	return changed
}

// dataTarget returns what ..data points to.
func dataTarget(t *testing.T, dir string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, DataDir))
	require.NoError(t, err)
	return target
}

// payloadDirs lists the payload directories in dir.
func payloadDirs(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, de := range des {
		if isPayloadDirName(de.Name()) {
			out = append(out, de.Name())
		}
	}
	return out
}

// topLevel lists every name in dir.
func topLevel(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	out := make([]string, 0, len(des))
	for _, de := range des {
		out = append(out, de.Name())
	}
	sort.Strings(out)
	return out
}

// snapshot describes every entry under dir without following symlinks: type,
// mode, owner, link target, contents and, with times, the modification time
// (which catches an entry created and removed again).
func snapshot(t *testing.T, dir string, withTimes bool) map[string]string {
	t.Helper()
	out := make(map[string]string)
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v uid=%d gid=%d ino=%d", fi.Mode(), st.Uid, st.Gid, st.Ino)
		if withTimes {
			desc += fmt.Sprintf(" mtime=%d", fi.ModTime().UnixNano())
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %q", data)
		}
		out[rel] = desc
		return nil
	})
	require.NoError(t, err)
	return out
}

// withUmask sets the process umask for the rest of the test. Tests that use
// it must not run in parallel.
func withUmask(t *testing.T, mask int) {
	t.Helper()
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

// perm returns the permission and special bits of path, without following a
// final symlink.
func perm(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	require.NoError(t, err)
	return fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

// assertPayload checks that Read(dir) returns want, with modes normalised.
func assertPayload(t *testing.T, dir string, want map[string]File) {
	t.Helper()
	got, err := Read(dir)
	require.NoError(t, err)
	norm := make(map[string]File, len(want))
	for k, f := range want {
		if f.Data == nil {
			f.Data = []byte{}
		}
		norm[k] = File{Data: f.Data, Mode: fileMode(f)}
	}
	for k, f := range got {
		if f.Data == nil {
			f.Data = []byte{}
		}
		got[k] = f
	}
	assert.Equal(t, norm, got)
}

// assertVisible checks every payload file through the user-visible path.
func assertVisible(t *testing.T, dir string, want map[string]File) {
	t.Helper()
	for name, f := range want {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if assert.NoError(t, err, name) {
			assert.Equal(t, string(f.Data), string(data), name)
		}
	}
}

func file(data string, mode os.FileMode) File {
	return File{Data: []byte(data), Mode: mode}
}
