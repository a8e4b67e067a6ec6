package volume

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	tenant   = "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f"
	clientID = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6"
	secret   = "volume-test-client-secret"
	vault    = "kvnode-volume"
)

type fixture struct {
	emu       *emulator.Emulator
	publisher *Publisher
	clientOpt azcore.ClientOptions
	root      string
}

// newFixture needs root (real tmpfs mounts) and the private network
// namespace (the emulator and the SDK).
func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	testenv.RequireNetns(t)
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting tmpfs needs root")
	}
	emu := emulator.StartT(t)
	app, err := emu.AddApplication(emulator.Principal{TenantID: tenant, ClientID: clientID, Secret: secret})
	require.NoError(t, err)
	require.NoError(t, emu.CreateVault(vault, emulator.VaultOptions{TenantID: tenant}))
	require.NoError(t, emu.Grant(vault, app.ObjectID))
	_, err = emu.SetSecret(vault, "db-password", "first-value", emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = emu.CreateKey(vault, "signing", emulator.KeyOptions{Type: "EC", Curve: "P-256"})
	require.NoError(t, err)
	_, err = emu.CreateCertificate(vault, "web", emulator.CertificateOptions{ContentType: "application/x-pkcs12", ChainLength: 3, KeyType: "RSA"})
	require.NoError(t, err)

	co := azcore.ClientOptions{Transport: emu.HTTPClient()}

	f := &fixture{emu: emu, clientOpt: co, root: t.TempDir()}
	f.publisher = f.newPublisher(opts)
	return f
}

func (f *fixture) newPublisher(opts Options) *Publisher {
	return NewPublisher(NewMounter(),
		keyvault.NewFetcher(keyvault.Options{ClientOptions: f.clientOpt}),
		identity.NewCredentials(identity.Options{ClientOptions: f.clientOpt}), opts)
}

func (f *fixture) request(target string, objects ...keyvault.Object) Request {
	return Request{
		TargetPath: target,
		VaultURL:   "https://" + vault + ".vault.azure.net/",
		Objects:    objects,
		Identity: identity.Request{Mode: identity.ServicePrincipal, AuthorityHost: "https://login.microsoftonline.com/",
			TenantID: tenant, ClientID: clientID, ClientSecret: secret},
	}
}

func isTmpfs(t *testing.T, path string) bool {
	t.Helper()
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(path, &st))
	return st.Type == unix.TMPFS_MAGIC
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestPublishMountsWritesRotatesAndUnpublishes(t *testing.T) {
	f := newFixture(t, Options{})
	target := filepath.Join(f.root, "pods", "uid-1", "mount")
	require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o750))
	req := f.request(target,
		keyvault.Object{Name: "db-password", Type: keyvault.TypeSecret, FileMode: 0o600},
		keyvault.Object{Name: "signing", Type: keyvault.TypeKey, Alias: "keys/signing.pem"},
		keyvault.Object{Name: "web", Type: keyvault.TypeSecret, Alias: "tls.pem"},
	)

	res, err := f.publisher.Publish(ctx(t), req)
	require.NoError(t, err)
	assert.True(t, res.Mounted)
	assert.True(t, res.Changed)
	assert.Len(t, res.Versions, 3)
	assert.True(t, isTmpfs(t, target), "files live on a tmpfs, never on disk")

	got, err := os.ReadFile(filepath.Join(target, "db-password"))
	require.NoError(t, err)
	assert.Equal(t, "first-value", string(got))
	st, err := os.Stat(filepath.Join(target, "db-password"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	key, err := os.ReadFile(filepath.Join(target, "keys/signing.pem"))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(key), "-----BEGIN PUBLIC KEY-----"))
	pemChain, err := os.ReadFile(filepath.Join(target, "tls.pem"))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(pemChain), "-----BEGIN PRIVATE KEY-----"))
	assert.Equal(t, 3, strings.Count(string(pemChain), "BEGIN CERTIFICATE"))

	// kubelet republishes: nothing changes, nothing is mounted twice.
	res, err = f.publisher.Publish(ctx(t), req)
	require.NoError(t, err)
	assert.False(t, res.Mounted)
	assert.False(t, res.Changed)

	// Rotation: a new version appears at the next republish.
	_, err = f.emu.SetSecret(vault, "db-password", "second-value", emulator.SecretOptions{})
	require.NoError(t, err)
	res, err = f.publisher.Publish(ctx(t), req)
	require.NoError(t, err)
	assert.True(t, res.Changed)
	got, err = os.ReadFile(filepath.Join(target, "db-password"))
	require.NoError(t, err)
	assert.Equal(t, "second-value", string(got))

	// A restarted driver (a new publisher) unpublishes what the old one
	// mounted; unpublishing twice is fine.
	restarted := f.newPublisher(Options{})
	require.NoError(t, restarted.Unpublish(target))
	assert.NoDirExists(t, target)
	require.NoError(t, restarted.Unpublish(target))
}

func TestFailedFetchChangesNothing(t *testing.T) {
	f := newFixture(t, Options{})
	target := filepath.Join(f.root, "mount")
	_, err := f.publisher.Publish(ctx(t), f.request(target,
		keyvault.Object{Name: "db-password", Type: keyvault.TypeSecret},
		keyvault.Object{Name: "missing", Type: keyvault.TypeSecret},
	))
	require.Error(t, err)
	assert.Equal(t, keyvault.KindNotFound, keyvault.Classify(err))
	assert.NoDirExists(t, target, "the target is left as it was found")
}

func TestFailedWriteUnmountsAndRemovesTheTarget(t *testing.T) {
	f := newFixture(t, Options{TmpfsSize: "4k"}) // one page: too small for two files
	target := filepath.Join(f.root, "mount")
	_, err := f.publisher.Publish(ctx(t), f.request(target,
		keyvault.Object{Name: "web", Type: keyvault.TypeSecret},
		keyvault.Object{Name: "db-password", Type: keyvault.TypeSecret},
	))
	require.Error(t, err)
	assert.ErrorIs(t, err, unix.ENOSPC)
	assert.NoDirExists(t, target, "the tmpfs was unmounted and the directory this call created removed")

	// An existing target directory is left in place, unmounted.
	require.NoError(t, os.Mkdir(target, 0o750))
	t.Cleanup(func() { _ = unix.Unmount(target, 0) })
	_, err = f.publisher.Publish(ctx(t), f.request(target,
		keyvault.Object{Name: "web", Type: keyvault.TypeSecret},
		keyvault.Object{Name: "db-password", Type: keyvault.TypeSecret},
	))
	require.Error(t, err)
	assert.DirExists(t, target)
	assert.False(t, isTmpfs(t, target))
}
