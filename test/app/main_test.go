package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"file only", map[string]string{"SECRET_FILE": "/mnt/secrets/a"}, ""},
		{"env only", map[string]string{"SECRET_ENV": "DB_PASSWORD"}, ""},
		{"secret", map[string]string{"KEYVAULT_URL": "https://v.vault.azure.net/", "SECRET_NAME": "a", "CREDENTIAL": "default", "INTERVAL": "10s"}, ""},
		{"nothing", map[string]string{}, "nothing to read"},
		{"vault without secret", map[string]string{"KEYVAULT_URL": "https://v.vault.azure.net/"}, "go together"},
		{"unknown credential", map[string]string{"SECRET_FILE": "/f", "CREDENTIAL": "client-secret"}, "CREDENTIAL"},
		{"bad interval", map[string]string{"SECRET_FILE": "/f", "INTERVAL": "-1s"}, "INTERVAL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := configFromEnv(func(k string) string { return tc.env[k] })
			if tc.wantErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.wantErr)
			}
		})
	}
}

// TestAppPrintsDigestNotValue runs the built program on a file and checks it
// prints the file's length and SHA-256 and never its content.
func TestAppPrintsDigestNotValue(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	secret := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(secret, []byte("planted-secret-value"), 0o600))

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "SECRET_FILE="+secret)
	got, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", got)
	// sha256sum of "planted-secret-value"
	assert.Equal(t, "file "+secret+": 20 bytes sha256 da6c2195916f072b2dc510f8c430913536c26e249f22a426120e541ebf7b2a6b\n", string(got))
	assert.NotContains(t, string(got), "planted-secret-value")

	cmd = exec.Command(bin)
	cmd.Env = append(os.Environ(), "SECRET_ENV=DB_PASSWORD", "DB_PASSWORD=planted-secret-value")
	got, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", got)
	assert.Equal(t, "env DB_PASSWORD: 20 bytes sha256 da6c2195916f072b2dc510f8c430913536c26e249f22a426120e541ebf7b2a6b\n", string(got))

	cmd = exec.Command(bin)
	cmd.Env = append(os.Environ(), "SECRET_ENV=DB_PASSWORD_UNSET")
	got, err = cmd.CombinedOutput()
	assert.Error(t, err, "a variable that is not set fails a single read")
	assert.Contains(t, string(got), "env DB_PASSWORD_UNSET is not set")

	cmd = exec.Command(bin)
	cmd.Env = append(os.Environ(), "SECRET_FILE="+filepath.Join(dir, "missing"))
	got, err = cmd.CombinedOutput()
	assert.Error(t, err, "a file that is not there fails a single read")
	assert.True(t, strings.HasPrefix(string(got), "app: "), "%s", got)
}
