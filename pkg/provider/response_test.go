package provider

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
)

func versions(ids ...string) []*v1alpha1.ObjectVersion {
	var out []*v1alpha1.ObjectVersion
	for _, id := range ids {
		out = append(out, &v1alpha1.ObjectVersion{Id: id, Version: "v-" + id})
	}
	return out
}

func TestCheckResponseAccepts(t *testing.T) {
	resp := &v1alpha1.MountResponse{
		ObjectVersion: append(versions("db", "tls"), &v1alpha1.ObjectVersion{Id: "db", Version: "v2"}),
		Files: []*v1alpha1.File{
			{Path: "db/password", Mode: 0o600, Contents: []byte("pw")},
			{Path: "tls.crt", Mode: 0, Contents: []byte{0, 1, 2}},
			{Path: "a..b", Mode: 0o444},
			{Path: "dup", Mode: 0o600, Contents: []byte("first")},
			{Path: "dup", Mode: 0o640, Contents: []byte("second")},
		},
	}
	res, err := CheckResponse("vault", resp)
	require.NoError(t, err)
	assert.Equal(t, map[string]atomicwriter.File{
		"db/password": {Data: []byte("pw"), Mode: 0o600},
		"tls.crt":     {Data: []byte{0, 1, 2}, Mode: DefaultFileMode},
		"a..b":        {Mode: 0o444},
		"dup":         {Data: []byte("second"), Mode: 0o640},
	}, res.Files)
	assert.Equal(t, []keyvault.ObjectVersion{{ID: "db", Version: "v2"}, {ID: "tls", Version: "v-tls"}}, res.Versions,
		"one version per object, the later wins")
}

func TestCheckResponseRefuses(t *testing.T) {
	many := make([]*v1alpha1.File, MaxFiles+1)
	for i := range many {
		many[i] = &v1alpha1.File{Path: "f" + strings.Repeat("x", i%7) + string(rune('a'+i%26))}
	}
	file := func(path string, mode int32) *v1alpha1.MountResponse {
		return &v1alpha1.MountResponse{ObjectVersion: versions("x"),
			Files: []*v1alpha1.File{{Path: "ok", Mode: 0o644}, {Path: path, Mode: mode, Contents: []byte("planted-content")}}}
	}
	for _, tc := range []struct {
		name string
		resp *v1alpha1.MountResponse
		kind Kind
		want string
	}{
		{"error code", &v1alpha1.MountResponse{Error: &v1alpha1.Error{Code: "PermissionDenied"}, ObjectVersion: versions("x")}, KindRefused, `provider error code "PermissionDenied"`},
		{"no object versions", &v1alpha1.MountResponse{Files: []*v1alpha1.File{{Path: "a"}}}, KindInvalidResponse, "no object versions"},
		{"dot-dot", file("../x", 0o644), KindInvalidResponse, `files[1].path: "../x" must be a relative path inside the mount`},
		{"dot-dot inside", file("a/../../x", 0o644), KindInvalidResponse, "must be a relative path inside the mount"},
		{"absolute", file("/etc/passwd", 0o644), KindInvalidResponse, `"/etc/passwd" must be a relative path inside the mount`},
		{"atomic writer's names", file("..data/x", 0o644), KindInvalidResponse, `starting with ".."`},
		{"not clean", file("a//b", 0o644), KindInvalidResponse, "empty or \".\" path segments"},
		{"the mount itself", file(".", 0o644), KindInvalidResponse, "names the mount itself"},
		{"empty path", file("", 0o644), KindInvalidResponse, "must not be empty"},
		{"control character", file("a\nb", 0o644), KindInvalidResponse, "control characters"},
		{"setuid", file("x", 0o4755), KindInvalidResponse, "mode 2541 is not a permission"},
		{"negative mode", file("x", -1), KindInvalidResponse, "mode -1 is not a permission"},
		{"too many files", &v1alpha1.MountResponse{ObjectVersion: versions("x"), Files: many}, KindInvalidResponse, "4097 files, more than the 4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := CheckResponse("vault", tc.resp)
			require.Error(t, err)
			assert.Nil(t, res)
			var pe *Error
			require.True(t, errors.As(err, &pe))
			assert.Equal(t, tc.kind, pe.Kind)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), `provider "vault"`)
			assert.NotContains(t, err.Error(), "planted-content", "an error never carries file contents")
		})
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"vault", "gcp", "aws", "my_provider", "Vault-2", strings.Repeat("a", 30)} {
		assert.Empty(t, ValidName(ok), ok)
	}
	for _, bad := range []string{"", "../etc", "a/b", "a.b", "vault.sock", " vault", strings.Repeat("a", 31), "vault\x00"} {
		assert.NotEmpty(t, ValidName(bad), "%q", bad)
	}
}
