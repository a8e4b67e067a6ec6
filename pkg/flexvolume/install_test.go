package flexvolume

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestInstallReplacesTheDriverAtomically(t *testing.T) {
	src := filepath.Join(t.TempDir(), "kvdriver")
	require.NoError(t, os.WriteFile(src, []byte("#!/bin/sh\necho new\n"), 0o700))
	dir := filepath.Join(t.TempDir(), "exec", "azure~kv")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kv"), []byte("old"), 0o755))

	require.NoError(t, Install(src, dir))
	got, err := os.ReadFile(filepath.Join(dir, "kv"))
	require.NoError(t, err)
	assert.Equal(t, "#!/bin/sh\necho new\n", string(got))
	st, err := os.Stat(filepath.Join(dir, "kv"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), st.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "no temporary file left behind")

	assert.Error(t, Install(filepath.Join(t.TempDir(), "missing"), dir))
}
