package atomicwriter

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteFirstLayout(t *testing.T) {
	dir := t.TempDir()
	payload := map[string]File{
		"tls.crt":               file("cert", 0),
		"tls.key":               file("key", 0o600),
		"certs/ca.pem":          file("ca", 0o644),
		"certs/chain/inter.pem": file("inter", 0o440),
		"empty":                 {},
	}
	require.True(t, write(t, dir, payload, Options{}))

	target := dataTarget(t, dir)
	assert.True(t, isPayloadDirName(target), "..data -> %q", target)
	assert.Regexp(t, `^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d+$`, target)
	assert.ElementsMatch(t, []string{"..data", target, "certs", "empty", "tls.crt", "tls.key"}, topLevel(t, dir))

	for _, name := range []string{"tls.crt", "tls.key", "certs", "empty"} {
		link, err := os.Readlink(filepath.Join(dir, name))
		require.NoError(t, err)
		assert.Equal(t, "..data/"+name, link)
	}

	data := filepath.Join(dir, target)
	assert.Equal(t, DirMode, perm(t, data))
	assert.Equal(t, DirMode, perm(t, filepath.Join(data, "certs")))
	assert.Equal(t, DirMode, perm(t, filepath.Join(data, "certs/chain")))
	assert.Equal(t, os.FileMode(0o644), perm(t, filepath.Join(data, "tls.crt")))
	assert.Equal(t, os.FileMode(0o600), perm(t, filepath.Join(data, "tls.key")))
	assert.Equal(t, os.FileMode(0o440), perm(t, filepath.Join(data, "certs/chain/inter.pem")))
	// Through the symlinks, as an application sees them.
	fi, err := os.Stat(filepath.Join(dir, "tls.key"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode())

	assertVisible(t, dir, payload)
	assertPayload(t, dir, payload)
}

func TestWriteUpdate(t *testing.T) {
	dir := t.TempDir()
	first := map[string]File{
		"a":        file("a1", 0),
		"b":        file("b", 0),
		"nested/x": file("x", 0),
		"nested/y": file("y", 0),
		"gone/z":   file("z", 0),
	}
	require.True(t, write(t, dir, first, Options{}))
	oldTarget := dataTarget(t, dir)

	second := map[string]File{
		"a":               file("a2", 0),
		"b":               file("b", 0),
		"nested/x":        file("x", 0o600),
		"nested/deeper/w": file("w", 0),
		"new":             file("new", 0),
	}
	require.True(t, write(t, dir, second, Options{}))
	newTarget := dataTarget(t, dir)

	assert.NotEqual(t, oldTarget, newTarget)
	assert.NoDirExists(t, filepath.Join(dir, oldTarget), "old payload directory removed")
	assert.ElementsMatch(t, []string{"..data", newTarget, "a", "b", "nested", "new"}, topLevel(t, dir))
	_, err := os.Lstat(filepath.Join(dir, "gone"))
	assert.ErrorIs(t, err, fs.ErrNotExist, "symlink of a removed name pruned")
	_, err = os.Stat(filepath.Join(dir, "nested/y"))
	assert.ErrorIs(t, err, fs.ErrNotExist, "removed nested file")
	assert.Equal(t, os.FileMode(0o600), perm(t, filepath.Join(dir, newTarget, "nested/x")))
	assertVisible(t, dir, second)
	assertPayload(t, dir, second)
}

func TestWriteFileBecomesDirectory(t *testing.T) {
	dir := t.TempDir()
	require.True(t, write(t, dir, map[string]File{"a": file("file", 0)}, Options{}))
	next := map[string]File{"a/b": file("nested", 0)}
	require.True(t, write(t, dir, next, Options{}))
	assertVisible(t, dir, next)
	link, err := os.Readlink(filepath.Join(dir, "a"))
	require.NoError(t, err)
	assert.Equal(t, "..data/a", link)
	require.True(t, write(t, dir, map[string]File{"a": file("file again", 0)}, Options{}))
	assertVisible(t, dir, map[string]File{"a": file("file again", 0)})
}

func TestWriteUnchanged(t *testing.T) {
	base := map[string]File{
		"a":     file("a", 0),
		"b":     file("b", 0o600),
		"n/c":   file("c", 0o440),
		"n/m/d": file("d", 0),
		"empty": {},
	}
	clone := func() map[string]File {
		m := make(map[string]File, len(base))
		for k, v := range base {
			m[k] = v
		}
		return m
	}

	t.Run("same payload", func(t *testing.T) {
		dir := t.TempDir()
		require.True(t, write(t, dir, base, Options{}))
		before := snapshot(t, dir, true)
		target := dataTarget(t, dir)

		same := clone()
		same["a"] = file("a", 0o644) // Mode 0 and 0644 are the same file.
		same["empty"] = File{Data: []byte{}}
		for range 3 {
			assert.False(t, write(t, dir, same, Options{}))
		}
		assert.Equal(t, target, dataTarget(t, dir))
		assert.Equal(t, before, snapshot(t, dir, true), "nothing touched")
	})

	differences := []struct {
		name   string
		change func(map[string]File)
	}{
		{"one byte", func(m map[string]File) { m["n/m/d"] = file("D", 0) }},
		{"longer", func(m map[string]File) { m["a"] = file("aa", 0) }},
		{"empty file gets data", func(m map[string]File) { m["empty"] = file("x", 0) }},
		{"mode", func(m map[string]File) { m["b"] = file("b", 0o400) }},
		{"added", func(m map[string]File) { m["n/new"] = file("new", 0) }},
		{"removed", func(m map[string]File) { delete(m, "n/m/d") }},
		{"moved", func(m map[string]File) { delete(m, "a"); m["n/a"] = file("a", 0) }},
		{"directory emptied", func(m map[string]File) { delete(m, "n/m/d"); m["n/m2"] = file("d", 0) }},
	}
	for _, tc := range differences {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.True(t, write(t, dir, base, Options{}))
			target := dataTarget(t, dir)
			next := clone()
			tc.change(next)
			assert.True(t, write(t, dir, next, Options{}))
			assert.NotEqual(t, target, dataTarget(t, dir))
			assertPayload(t, dir, next)
			assert.False(t, write(t, dir, next, Options{}), "second write of the same payload")
		})
	}
}

func TestWriteEmptyPayload(t *testing.T) {
	dir := t.TempDir()
	require.True(t, write(t, dir, map[string]File{"a": file("a", 0), "d/b": file("b", 0)}, Options{}))
	require.True(t, write(t, dir, map[string]File{}, Options{}))
	target := dataTarget(t, dir)
	assert.ElementsMatch(t, []string{"..data", target}, topLevel(t, dir))
	assertPayload(t, dir, map[string]File{})
	assert.False(t, write(t, dir, nil, Options{}))
	assert.Equal(t, target, dataTarget(t, dir))
}

func TestWriteInvalidPayload(t *testing.T) {
	long := strings.Repeat("x", 256)
	tests := []struct {
		name    string
		payload map[string]File
	}{
		{"empty path", map[string]File{"": file("x", 0)}},
		{"absolute", map[string]File{"/etc/passwd": file("x", 0)}},
		{"parent", map[string]File{"../escape": file("x", 0)}},
		{"dot dot", map[string]File{"..": file("x", 0)}},
		{"dot", map[string]File{".": file("x", 0)}},
		{"dot dot inside", map[string]File{"a/../b": file("x", 0)}},
		{"dot dot at end", map[string]File{"a/b/..": file("x", 0)}},
		{"dot segment", map[string]File{"a/./b": file("x", 0)}},
		{"leading dot slash", map[string]File{"./a": file("x", 0)}},
		{"double slash", map[string]File{"a//b": file("x", 0)}},
		{"trailing slash", map[string]File{"a/": file("x", 0)}},
		{"reserved ..data", map[string]File{"..data": file("x", 0)}},
		{"reserved ..data_tmp", map[string]File{"..data_tmp": file("x", 0)}},
		{"reserved ..data nested", map[string]File{"..data/x": file("x", 0)}},
		{"reserved payload name", map[string]File{"..2026_01_01_00_00_00.1": file("x", 0)}},
		{"reserved prefix", map[string]File{"..hidden": file("x", 0)}},
		{"NUL", map[string]File{"a\x00b": file("x", 0)}},
		{"file and directory", map[string]File{"a": file("x", 0), "a/b": file("y", 0)}},
		{"file and deep directory", map[string]File{"a/b": file("x", 0), "a/b/c/d": file("y", 0)}},
		{"segment too long", map[string]File{"d/" + long: file("x", 0)}},
		{"setuid", map[string]File{"a": file("x", 0o4755)}},
		{"directory mode bit", map[string]File{"a": file("x", os.ModeDir|0o755)}},
		{"one bad among good", map[string]File{"ok": file("x", 0), "ok2/y": file("y", 0), "/bad": file("z", 0)}},
	}
	require.GreaterOrEqual(t, len(tests), 12)

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.True(t, write(t, dir, map[string]File{"keep": file("keep", 0), "k/deep": file("deep", 0)}, Options{}))
			before := snapshot(t, dir, true)

			changed, err := Write(dir, tc.payload, Options{})
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidPayload)
			assert.False(t, changed)
			assert.Equal(t, before, snapshot(t, dir, true), "directory untouched")
		})
	}

	t.Run("into an empty directory", func(t *testing.T) {
		dir := t.TempDir()
		_, err := Write(dir, map[string]File{"ok": file("x", 0), "../x": file("x", 0)}, Options{})
		assert.ErrorIs(t, err, ErrInvalidPayload)
		assert.Empty(t, topLevel(t, dir))
	})
}

func TestWriteConflictWithForeignEntry(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{"regular file", func(t *testing.T, dir string) {
			require.NoError(t, os.WriteFile(filepath.Join(dir, "config"), []byte("user"), 0o644))
		}},
		{"directory", func(t *testing.T, dir string) {
			require.NoError(t, os.Mkdir(filepath.Join(dir, "config"), 0o755))
		}},
		{"symlink elsewhere", func(t *testing.T, dir string) {
			require.NoError(t, os.Symlink("/etc/hostname", filepath.Join(dir, "config")))
		}},
		{"..data is a directory", func(t *testing.T, dir string) {
			require.NoError(t, os.Remove(filepath.Join(dir, DataDir)))
			require.NoError(t, os.Mkdir(filepath.Join(dir, DataDir), 0o755))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.True(t, write(t, dir, map[string]File{"keep": file("keep", 0)}, Options{}))
			tc.setup(t, dir)
			before := snapshot(t, dir, true)

			changed, err := Write(dir, map[string]File{"config/app.yaml": file("x", 0), "keep": file("k2", 0)}, Options{})
			assert.ErrorIs(t, err, ErrConflict)
			assert.False(t, changed)
			assert.Equal(t, before, snapshot(t, dir, true), "directory untouched")
		})
	}
}

func TestWritePreservesForeignEntries(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README"), []byte("mine"), 0o600))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "user/sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "user/sub/f"), []byte("f"), 0o644))
	require.NoError(t, os.Symlink("/nowhere", filepath.Join(dir, "dangling")))
	// A symlink into ..data with a different name is not one the writer made.
	require.NoError(t, os.Symlink("..data/a", filepath.Join(dir, "alias")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "..mine"), []byte("hidden"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "..backup"), 0o755))
	foreign := snapshot(t, dir, false)
	delete(foreign, ".")
	foreignTop := topLevel(t, dir)

	require.True(t, write(t, dir, map[string]File{"a": file("a", 0), "b/c": file("c", 0)}, Options{}))
	require.True(t, write(t, dir, map[string]File{"b/d": file("d", 0)}, Options{}))
	require.True(t, write(t, dir, map[string]File{}, Options{}))

	after := snapshot(t, dir, false)
	for name, desc := range foreign {
		assert.Equal(t, desc, after[name], name)
	}
	assert.Len(t, topLevel(t, dir), len(foreignTop)+2, "foreign entries plus ..data and one payload directory")
}

func TestWriteRecoversFromCrash(t *testing.T) {
	p1 := map[string]File{"a": file("a1", 0), "b": file("b1", 0)}
	p2 := map[string]File{"a": file("a2", 0)}

	t.Run("crash before the switch", func(t *testing.T) {
		dir := t.TempDir()
		require.True(t, write(t, dir, p1, Options{}))
		// A half-written payload directory and a ..data_tmp pointing at it.
		orphan := filepath.Join(dir, "..2020_01_02_03_04_05.42")
		require.NoError(t, os.MkdirAll(filepath.Join(orphan, "sub"), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(orphan, "sub/half"), []byte("ha"), 0o400))
		require.NoError(t, os.Symlink(filepath.Base(orphan), filepath.Join(dir, "..data_tmp")))

		require.True(t, write(t, dir, p2, Options{}))
		target := dataTarget(t, dir)
		assert.ElementsMatch(t, []string{"..data", target, "a"}, topLevel(t, dir))
		assertPayload(t, dir, p2)
	})

	t.Run("crash after the switch, same payload again", func(t *testing.T) {
		dir := t.TempDir()
		require.True(t, write(t, dir, p1, Options{}))
		oldTarget := dataTarget(t, dir)
		// Publish p2 by hand and stop before cleanup: the old payload
		// directory and the symlink "b" are left over.
		newDir := filepath.Join(dir, "..2099_01_01_00_00_00.7")
		require.NoError(t, os.Mkdir(newDir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(newDir, "a"), []byte("a2"), 0o644))
		require.NoError(t, os.Symlink(filepath.Base(newDir), filepath.Join(dir, "..data_tmp")))
		require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, DataDir)))

		changed := write(t, dir, p2, Options{})
		assert.True(t, changed, "a stale symlink was removed")
		assert.Equal(t, filepath.Base(newDir), dataTarget(t, dir), "no new payload directory")
		assert.NoDirExists(t, filepath.Join(dir, oldTarget))
		assert.ElementsMatch(t, []string{"..data", filepath.Base(newDir), "a"}, topLevel(t, dir))
		assertPayload(t, dir, p2)
	})

	t.Run("crash during the first write", func(t *testing.T) {
		dir := t.TempDir()
		orphan := filepath.Join(dir, "..2020_01_02_03_04_05.42")
		require.NoError(t, os.Mkdir(orphan, 0o700))
		require.NoError(t, os.Symlink(filepath.Base(orphan), filepath.Join(dir, "..data_tmp")))
		require.NoError(t, os.Symlink("..data/a", filepath.Join(dir, "a")))

		require.True(t, write(t, dir, p1, Options{}))
		target := dataTarget(t, dir)
		assert.ElementsMatch(t, []string{"..data", target, "a", "b"}, topLevel(t, dir))
		assertVisible(t, dir, p1)
	})

	t.Run("leftovers removed even when the payload is unchanged", func(t *testing.T) {
		dir := t.TempDir()
		require.True(t, write(t, dir, p1, Options{}))
		target := dataTarget(t, dir)
		require.NoError(t, os.Mkdir(filepath.Join(dir, "..2020_01_02_03_04_05.1"), 0o755))
		require.NoError(t, os.Symlink("..2020_01_02_03_04_05.1", filepath.Join(dir, "..data_tmp")))

		assert.False(t, write(t, dir, p1, Options{}), "hidden leftovers are not a visible change")
		assert.ElementsMatch(t, []string{"..data", target, "a", "b"}, topLevel(t, dir))
	})

	t.Run("missing symlink recreated", func(t *testing.T) {
		dir := t.TempDir()
		require.True(t, write(t, dir, p1, Options{}))
		target := dataTarget(t, dir)
		require.NoError(t, os.Remove(filepath.Join(dir, "b")))

		assert.True(t, write(t, dir, p1, Options{}))
		assert.Equal(t, target, dataTarget(t, dir))
		assertVisible(t, dir, p1)
	})

	t.Run("tampered payload rewritten", func(t *testing.T) {
		dir := t.TempDir()
		require.True(t, write(t, dir, p1, Options{}))
		target := dataTarget(t, dir)
		require.NoError(t, os.WriteFile(filepath.Join(dir, target, "extra"), nil, 0o644))

		assert.True(t, write(t, dir, p1, Options{}))
		assert.NotEqual(t, target, dataTarget(t, dir))
		assertPayload(t, dir, p1)
	})

	t.Run("dangling ..data", func(t *testing.T) {
		dir := t.TempDir()
		require.NoError(t, os.Symlink("..2020_01_02_03_04_05.9", filepath.Join(dir, DataDir)))
		_, err := Read(dir)
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.True(t, write(t, dir, p1, Options{}))
		assertPayload(t, dir, p1)
	})
}

func TestWriteModesIgnoreUmask(t *testing.T) {
	payload := map[string]File{
		"default":     file("d", 0),
		"private":     file("p", 0o600),
		"readonly":    file("r", 0o400),
		"exec":        file("x", 0o755),
		"group":       file("g", 0o440),
		"all":         file("a", 0o777),
		"dir/sub/f":   file("f", 0o640),
		"none/at/all": file("n", 0o000|0o001),
	}
	for _, mask := range []int{0o022, 0o077, 0o777} {
		t.Run(os.FileMode(mask).String(), func(t *testing.T) {
			dir := t.TempDir() // before the umask: 0777 would make it unusable
			withUmask(t, mask)
			require.True(t, write(t, dir, payload, Options{}))
			data := filepath.Join(dir, dataTarget(t, dir))
			for name, f := range payload {
				assert.Equal(t, fileMode(f), perm(t, filepath.Join(data, name)), name)
			}
			for _, d := range []string{"", "dir", "dir/sub", "none", "none/at"} {
				assert.Equal(t, DirMode, perm(t, filepath.Join(data, d)), "directory %q", d)
			}
			// "none/at/all" (mode 0001) cannot be read back by its non-root
			// owner, so only root can tell that nothing changed.
			assert.Equal(t, os.Geteuid() != 0, write(t, dir, payload, Options{}))
		})
	}
}

func TestWriteOwner(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	other := Owner{UID: uid, GID: gid}
	if os.Geteuid() == 0 {
		other = Owner{UID: 1234, GID: 5678}
	}
	payload := map[string]File{"a": file("a", 0o440), "d/b": file("b", 0o444)}
	owners := func(t *testing.T, dir string) []string {
		data := filepath.Join(dir, dataTarget(t, dir))
		var out []string
		for _, p := range []string{"", "a", "d", "d/b"} {
			fi, err := os.Lstat(filepath.Join(data, p))
			require.NoError(t, err)
			st := fi.Sys().(*syscall.Stat_t)
			out = append(out, strings.Join([]string{p, itoa(st.Uid), itoa(st.Gid)}, ":"))
		}
		return out
	}

	dir := t.TempDir()
	require.True(t, write(t, dir, payload, Options{Owner: &other}))
	u, g := itoa(uint32(other.UID)), itoa(uint32(other.GID))
	assert.Equal(t, []string{":" + u + ":" + g, "a:" + u + ":" + g, "d:" + u + ":" + g, "d/b:" + u + ":" + g}, owners(t, dir))
	// Modes survive chown.
	assert.Equal(t, os.FileMode(0o440), perm(t, filepath.Join(dir, dataTarget(t, dir), "a")))
	assert.False(t, write(t, dir, payload, Options{Owner: &other}))
	assert.False(t, write(t, dir, payload, Options{Owner: &Owner{UID: -1, GID: -1}}))
	assert.False(t, write(t, dir, payload, Options{}), "no owner requested: ownership not compared")

	if os.Geteuid() != 0 {
		t.Log("not root: ownership changes to other ids not tested")
		return
	}
	assert.True(t, write(t, dir, payload, Options{Owner: &Owner{UID: -1, GID: 4321}}), "group change is a change")
	// UID -1: files of the new payload belong to the writing process.
	u, g2 := itoa(uint32(uid)), itoa(4321)
	assert.Equal(t, []string{":" + u + ":" + g2, "a:" + u + ":" + g2, "d:" + u + ":" + g2, "d/b:" + u + ":" + g2}, owners(t, dir))
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestWriteMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	_, err := Write(dir, map[string]File{"a": file("a", 0)}, Options{})
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), dir)
	assert.NoDirExists(t, dir)
}

func TestReadNeverWritten(t *testing.T) {
	_, err := Read(t.TempDir())
	assert.True(t, errors.Is(err, fs.ErrNotExist), "%v", err)
}

func TestReadRejectsEscapingLink(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Symlink("../elsewhere", filepath.Join(dir, DataDir)))
	_, err := Read(dir)
	assert.ErrorContains(t, err, "points outside")
}

func TestErrorsDoNotCarryContents(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "taken"), nil, 0o644))
	secret := "s3cr3t-value-never-in-errors"
	for _, payload := range []map[string]File{
		{"/abs": file(secret, 0)},
		{"taken": file(secret, 0)},
		{"a": file(secret, 0o7777)},
	} {
		_, err := Write(dir, payload, Options{})
		require.Error(t, err)
		assert.NotContains(t, err.Error(), secret)
	}
}
