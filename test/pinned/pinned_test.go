package pinned

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPathPrefersTheVariable(t *testing.T) {
	t.Setenv(Helm.Env, "/opt/helm/bin/helm")
	p, err := Helm.Path()
	require.NoError(t, err)
	require.Equal(t, "/opt/helm/bin/helm", p)
}

func TestPathRunsTheScript(t *testing.T) {
	t.Setenv(Helm.Env, "")
	p, err := Helm.Path()
	require.NoError(t, err)
	require.True(t, filepath.IsAbs(p), "hack/%s printed %q", Helm.Script, p)
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.NotZero(t, fi.Mode()&0o111, "%s is executable", p)
}

func TestPathNamesTheVariableWhenTheScriptFails(t *testing.T) {
	t.Setenv("KVNODE_PINNED_MISSING", "")
	_, err := Tool{Env: "KVNODE_PINNED_MISSING", Script: "no-such-script.sh"}.Path()
	require.ErrorContains(t, err, "no-such-script.sh")
	require.ErrorContains(t, err, "or set KVNODE_PINNED_MISSING")
}
