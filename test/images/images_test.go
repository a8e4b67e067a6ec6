package images_test

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/containerd"
	"github.com/kvnode/kvnode/test/images"
)

// TestImageConfigs checks what each image of make images runs: its
// entrypoint, user, environment and layers, and that its binaries are
// static.
func TestImageConfigs(t *testing.T) {
	set := images.LoadT(t)
	tests := []struct {
		name       string
		entrypoint string
		user       string
		layers     int
		files      []string // besides the entrypoint, in any layer
	}{
		{"kvnode", "/kvdriver", "", 2, []string{"etc/passwd", "tmp"}},
		{"nmi", "/nmi", "", 2, []string{"usr/sbin/iptables", "usr/sbin/xtables-nft-multi", "lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/xtables/libxt_tcp.so"}},
		{"csi-node-driver-registrar", "/csi-node-driver-registrar", "", 2, nil},
		{"livenessprobe", "/livenessprobe", "", 2, nil},
		{"pause", "/pause", "65535:65535", 1, nil},
		{"app", "/app", "65532:65532", 2, []string{"etc/passwd"}},
	}
	require.Len(t, set, len(tests), "images.json lists one image per binary")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			im, ok := set[tc.name]
			require.True(t, ok, "images.json has no %s", tc.name)
			assert.Equal(t, "kvnode.local/"+tc.name+":local", im.Ref)
			m, cfg, err := images.Read(im.Path)
			require.NoError(t, err)
			assert.Equal(t, []string{im.Ref}, m.RepoTags, "ctr import names the image from RepoTags")
			assert.Equal(t, "linux", cfg.OS)
			assert.Equal(t, runtime.GOARCH, cfg.Architecture)
			assert.Equal(t, []string{tc.entrypoint}, cfg.Config.Entrypoint)
			assert.Empty(t, cfg.Config.Cmd)
			assert.Equal(t, tc.user, cfg.Config.User)
			assert.Contains(t, cfg.Config.Env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
			assert.Len(t, m.Layers, tc.layers)
			assert.Len(t, cfg.RootFS.DiffIDs, tc.layers)

			files, err := images.Files(im.Path)
			require.NoError(t, err)
			last := files[len(files)-1]
			assert.Equal(t, []string{strings.TrimPrefix(tc.entrypoint, "/")}, last, "the last layer holds the binary alone")
			all := slices.Concat(files...)
			for _, f := range tc.files {
				assert.Contains(t, all, f)
			}

			b, err := images.ReadFile(im.Path, strings.TrimPrefix(tc.entrypoint, "/"))
			require.NoError(t, err)
			bin, err := elf.NewFile(bytes.NewReader(b))
			require.NoError(t, err)
			for _, p := range bin.Progs {
				assert.NotEqual(t, elf.PT_INTERP, p.Type, "%s is static: no program interpreter", tc.entrypoint)
			}
			assert.Nil(t, bin.Section(".symtab"), "%s is stripped (-s -w)", tc.entrypoint)
		})
	}
}

// TestNMIImageIptables runs the nmi image's own iptables, chrooted into the
// image's root filesystem, in a fresh network namespace: it must run (its
// libraries and extensions are all there), use nf_tables, and change
// nothing in the machine's rules.
func TestNMIImageIptables(t *testing.T) {
	set := images.LoadT(t)
	if os.Geteuid() != 0 {
		t.Skip("skipped: chroot and network namespaces need root; make test runs as root")
	}
	root := t.TempDir()
	require.NoError(t, images.Extract(set["nmi"].Path, root))

	out, err := exec.Command("unshare", "--net", "chroot", root, "iptables", "--version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "(nf_tables)")

	script := `set -e
chroot "$1" iptables -w -t nat -N KVNODE-IMAGE-TEST
chroot "$1" iptables -w -t nat -A KVNODE-IMAGE-TEST -d 169.254.169.254/32 -p tcp --dport 80 -j DNAT --to-destination 10.0.0.1:2579
chroot "$1" iptables -w -t nat -S`
	out, err = exec.Command("unshare", "--net", "sh", "-c", script, "sh", root).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "-A KVNODE-IMAGE-TEST -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:2579")

	if _, err := exec.LookPath("iptables-save"); err == nil {
		machine, err := exec.Command("iptables-save").CombinedOutput()
		require.NoError(t, err, "%s", machine)
		assert.NotContains(t, string(machine), "KVNODE-IMAGE-TEST", "the image's iptables ran in its own namespace")
	}
}

// TestImagesImport imports every image into a containerd of the test's
// own, as the test node does.
func TestImagesImport(t *testing.T) {
	set := images.LoadT(t)
	c := containerd.StartT(t, containerd.Options{SandboxImage: set["pause"].Ref})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, c.Import(ctx, set.Paths()...))
	got, err := c.Images(ctx)
	require.NoError(t, err)
	for _, ref := range set.Refs() {
		assert.Contains(t, got, ref)
	}
}
