//go:build linux

package atomicwriter

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// pastMargin waits until whatever was just written is old enough for a
// Writer to trust its metadata.
func pastMargin() { time.Sleep(snapshotMargin + 50*time.Millisecond) }

// writeW calls w.Write and requires it to succeed.
func writeW(t *testing.T, w *Writer, dir string, payload map[string]File, opts Options) bool {
	t.Helper()
	changed, err := w.Write(dir, payload, opts)
	require.NoError(t, err)
	return changed
}

// settled returns a Writer that has published payload into a fresh tmpfs
// and trusts its snapshot of it.
func settled(t *testing.T, payload map[string]File, opts Options) (*Writer, string) {
	t.Helper()
	dir := mountTmpfs(t, "size=4m,mode=0755")
	w := NewWriter()
	require.True(t, writeW(t, w, dir, payload, opts))
	assert.Zero(t, w.Snapshots(), "a snapshot taken right after a publish is racy and not kept")
	pastMargin()
	require.False(t, writeW(t, w, dir, payload, opts))
	require.Equal(t, 1, w.Snapshots(), "the second Write, past the margin, keeps its snapshot")
	return w, dir
}

func memoPayload() map[string]File {
	return map[string]File{
		"tls.crt":   file("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 0),
		"tls.key":   file("-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n", 0o600),
		"chain/0":   file("root", 0o440),
		"chain/1/x": file("nested", 0),
	}
}

// atime returns path's access time.
func atime(t *testing.T, path string) unix.Timespec {
	t.Helper()
	var st unix.Stat_t
	require.NoError(t, unix.Lstat(path, &st))
	return st.Atim
}

// TestWriterSkipsReadingBack: once the Writer trusts its snapshot, an
// unchanged payload is recognised without reading a published file. The
// tmpfs is mounted strictatime, so every read(2) would move the files'
// access time.
func TestWriterSkipsReadingBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	dir := t.TempDir()
	require.NoError(t, unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_STRICTATIME, "size=4m,mode=0755"))
	t.Cleanup(func() { assert.NoError(t, unix.Unmount(dir, 0)) })

	p := memoPayload()
	full := NewWriter()
	require.True(t, writeW(t, full, dir, p, Options{}))
	key := filepath.Join(dir, DataDir, "tls.key")
	before := atime(t, key)
	pastMargin()
	require.False(t, writeW(t, full, dir, p, Options{}), "unchanged")
	assert.NotEqual(t, before, atime(t, key), "without a trusted snapshot, Write reads the files back")

	before = atime(t, key)
	time.Sleep(20 * time.Millisecond) // past a tick of the clock atime comes from
	for range 5 {
		require.False(t, writeW(t, full, dir, p, Options{}))
	}
	assert.Equal(t, before, atime(t, key), "with a trusted snapshot, Write reads no file")
	assertPayload(t, dir, p)

	// The package-level Write has no memory: it still reads the files.
	require.False(t, write(t, dir, p, Options{}))
	assert.NotEqual(t, before, atime(t, key))
}

// TestWriterNoticesEveryChange: whatever changes the directory behind the
// Writer's back, the next Write of the same payload gives the answer a
// Write without a memory gives on a directory changed the same way, and
// leaves the payload in place.
func TestWriterNoticesEveryChange(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	owner := &Owner{UID: os.Getuid() + 1000, GID: os.Getgid() + 1000}
	for _, tc := range []struct {
		name string
		// changed is what Write reports after the tampering: false when
		// the payload is still exactly in place.
		changed bool
		tamper  func(t *testing.T, dir string)
	}{
		{"bytes rewritten in place, same size", true, func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, DataDir, "tls.key"), os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("X"), 10)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}},
		{"file truncated", true, func(t *testing.T, dir string) {
			require.NoError(t, os.Truncate(filepath.Join(dir, DataDir, "chain/0"), 0))
		}},
		{"mode changed", true, func(t *testing.T, dir string) {
			require.NoError(t, os.Chmod(filepath.Join(dir, DataDir, "tls.crt"), 0o666))
		}},
		{"owner changed", true, func(t *testing.T, dir string) {
			require.NoError(t, os.Lchown(filepath.Join(dir, DataDir, "chain/1/x"), 0, 0))
		}},
		{"file replaced by rename, other bytes", true, func(t *testing.T, dir string) {
			tmp := filepath.Join(dir, DataDir, "chain/1/.new")
			require.NoError(t, os.WriteFile(tmp, []byte("NESTED"), 0o644))
			require.NoError(t, os.Lchown(tmp, owner.UID, owner.GID))
			require.NoError(t, os.Rename(tmp, filepath.Join(dir, DataDir, "chain/1/x")))
		}},
		{"file replaced by rename, same bytes", false, func(t *testing.T, dir string) {
			tmp := filepath.Join(dir, DataDir, "chain/1/.new")
			require.NoError(t, os.WriteFile(tmp, []byte("nested"), 0o644))
			require.NoError(t, os.Lchown(tmp, owner.UID, owner.GID))
			require.NoError(t, os.Chmod(tmp, 0o644))
			require.NoError(t, os.Rename(tmp, filepath.Join(dir, DataDir, "chain/1/x")))
		}},
		{"file added to the payload", true, func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, DataDir, "chain/extra"), nil, 0o644))
		}},
		{"file removed", true, func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, DataDir, "chain/0")))
		}},
		{"hard link made", false, func(t *testing.T, dir string) {
			require.NoError(t, os.Link(filepath.Join(dir, DataDir, "tls.key"), filepath.Join(dir, "linked")))
		}},
		{"top-level symlink removed", true, func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, "tls.crt")))
		}},
		{"..data pointed elsewhere", true, func(t *testing.T, dir string) {
			copyDir := filepath.Join(dir, "..2001_01_01_00_00_00.1")
			require.NoError(t, os.Mkdir(copyDir, 0o755))
			require.NoError(t, os.Symlink(filepath.Base(copyDir), filepath.Join(dir, "..data_new")))
			require.NoError(t, os.Rename(filepath.Join(dir, "..data_new"), filepath.Join(dir, DataDir)))
		}},
		{"tmpfs replaced by a new one", true, func(t *testing.T, dir string) {
			require.NoError(t, unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=4m,mode=0755"))
			t.Cleanup(func() { assert.NoError(t, unix.Unmount(dir, 0)) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := memoPayload()
			opts := Options{Owner: owner}
			w, dir := settled(t, p, opts)
			plain := mountTmpfs(t, "size=4m,mode=0755")
			require.True(t, write(t, plain, p, opts))

			tc.tamper(t, dir)
			tc.tamper(t, plain)
			assert.Equal(t, tc.changed, write(t, plain, p, opts), "Write without a memory")
			assert.Equal(t, tc.changed, writeW(t, w, dir, p, opts), "Write with a memory")
			assertPayload(t, dir, p)
			assertVisible(t, dir, p)
			pastMargin()
			require.False(t, writeW(t, w, dir, p, opts))
			assert.Equal(t, 1, w.Snapshots(), "a new snapshot once the directory settled")
		})
	}
}

// TestWriterTracksThePayload: another payload, mode or owner is published
// even when the directory is untouched, and a snapshot follows each Write.
func TestWriterTracksThePayload(t *testing.T) {
	p := memoPayload()
	w, dir := settled(t, p, Options{})

	p2 := memoPayload()
	p2["tls.key"] = file("-----BEGIN PRIVATE KEY-----\nCCCC\n-----END PRIVATE KEY-----\n", 0o600) // same size
	require.True(t, writeW(t, w, dir, p2, Options{}), "same paths and sizes, other bytes")
	assertPayload(t, dir, p2)

	p3 := memoPayload()
	p3["tls.key"] = file(string(p2["tls.key"].Data), 0o640)
	require.True(t, writeW(t, w, dir, p3, Options{}), "other mode")
	assertPayload(t, dir, p3)

	if os.Geteuid() == 0 {
		owner := &Owner{UID: -1, GID: os.Getgid() + 1000}
		require.True(t, writeW(t, w, dir, p3, Options{Owner: owner}), "other owner")
		pastMargin()
		require.False(t, writeW(t, w, dir, p3, Options{Owner: owner}))
		require.Equal(t, 1, w.Snapshots())
		require.True(t, writeW(t, w, dir, p3, Options{Owner: &Owner{UID: -1, GID: os.Getgid()}}), "owner changed back")
	}

	delete(p3, "chain/1/x")
	require.True(t, writeW(t, w, dir, p3, Options{}), "a file fewer")
	assertPayload(t, dir, p3)
	assertVisible(t, dir, p3)
}

// TestWriterFailureDropsTheSnapshot: a Write that fails forgets what the
// Writer knew of the directory.
func TestWriterFailureDropsTheSnapshot(t *testing.T) {
	p := memoPayload()
	w, dir := settled(t, p, Options{})
	p2 := memoPayload()
	p2["foreign"] = file("x", 0)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "foreign"), []byte("someone else's"), 0o644))
	_, err := w.Write(dir, p2, Options{})
	require.ErrorIs(t, err, ErrConflict)
	assert.Zero(t, w.Snapshots())
	require.False(t, writeW(t, w, dir, p, Options{}), "the original payload is still there, compared in full")
}

// TestWriterForgetAndBound: Forget drops a directory's snapshot, and a full
// Writer drops one to make room.
func TestWriterForgetAndBound(t *testing.T) {
	root := mountTmpfs(t, "size=4m,mode=0755")
	w := NewWriter()
	w.max = 3
	p := map[string]File{"a": file("1", 0)}
	var dirs []string
	for i := range 5 {
		dir := filepath.Join(root, fmt.Sprint(i))
		require.NoError(t, os.Mkdir(dir, 0o755))
		require.True(t, writeW(t, w, dir, p, Options{}))
		dirs = append(dirs, dir)
	}
	pastMargin()
	for _, dir := range dirs {
		require.False(t, writeW(t, w, dir, p, Options{}))
		assert.LessOrEqual(t, w.Snapshots(), 3)
	}
	assert.Equal(t, 3, w.Snapshots())
	for _, dir := range dirs {
		w.Forget(dir + "/")
	}
	assert.Zero(t, w.Snapshots())
}

// TestWriterConcurrent: many goroutines publishing into their own and
// shared directories through one Writer (run with -race).
func TestWriterConcurrent(t *testing.T) {
	root := mountTmpfs(t, "size=16m,mode=0755")
	w := NewWriter()
	// Two goroutines per directory write different payloads, so snapshots
	// are taken, trusted and invalidated all the time.
	const dirs, rounds = 4, 40
	var wg sync.WaitGroup
	errs := make(chan error, dirs*2*rounds)
	for i := range dirs {
		dir := filepath.Join(root, fmt.Sprint(i))
		require.NoError(t, os.Mkdir(dir, 0o755))
		for g := range 2 {
			wg.Go(func() {
				for r := range rounds {
					p := map[string]File{"v": file(fmt.Sprintf("gen %d of %d", r/10, g), 0)}
					if _, err := w.Write(dir, p, Options{}); err != nil {
						errs <- err
					}
					if r%10 == 9 {
						time.Sleep(snapshotMargin / 4)
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range dirs {
		got, err := Read(filepath.Join(root, fmt.Sprint(i)))
		require.NoError(t, err)
		require.Len(t, got, 1)
	}
}
