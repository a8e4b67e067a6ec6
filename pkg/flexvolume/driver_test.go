package flexvolume

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/volume"
)

// recordingPublisher records what the driver asks of it.
type recordingPublisher struct {
	published   []volume.Request
	unpublished []string
	err         error
}

func (p *recordingPublisher) Publish(_ context.Context, req volume.Request) (*volume.Result, error) {
	p.published = append(p.published, req)
	if p.err != nil {
		return nil, p.err
	}
	return &volume.Result{Mounted: true, Changed: true}, nil
}

func (p *recordingPublisher) Unpublish(target string) error {
	p.unpublished = append(p.unpublished, target)
	return p.err
}

var _ Publisher = (*volume.Publisher)(nil)

func output(t *testing.T, r Result) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, r.Write(&b))
	return b.String()
}

func TestInit(t *testing.T) {
	pub := &recordingPublisher{}
	r := NewDriver(pub, Options{}).Run(context.Background(), []string{"init"})
	assert.Equal(t, `{"status":"Success","capabilities":{"attach":false}}`+"\n", output(t, r))
}

func TestCallsNotSupported(t *testing.T) {
	pub := &recordingPublisher{}
	d := NewDriver(pub, Options{})
	for _, args := range [][]string{
		{"attach", "{}", "node-1"},
		{"detach", "dev", "node-1"},
		{"waitforattach", "dev", "{}"},
		{"isattached", "{}", "node-1"},
		{"mountdevice", "/mnt", "dev", "{}"},
		{"unmountdevice", "dev"},
		{"getvolumename", "{}"},
		{"expandvolume", "{}", "1", "2"},
		{"expandfs", "{}", "/mnt", "1", "2"},
	} {
		t.Run(args[0], func(t *testing.T) {
			r := d.Run(context.Background(), args)
			assert.Equal(t, StatusNotSupported, r.Status)
			assert.Contains(t, r.Message, args[0])
		})
	}
	assert.Empty(t, pub.published)
	assert.Empty(t, pub.unpublished)
}

func TestBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no call given"},
		{[]string{"mount", "/var/lib/kubelet/pods/u/volumes/azure~kv/test"}, "mount takes 2 arguments"},
		{[]string{"mount", "relative/dir", "{}"}, `target dir "relative/dir" must be an absolute path`},
		{[]string{"unmount"}, "unmount takes 1 argument"},
		{[]string{"unmount", ""}, "target dir is empty"},
	} {
		pub := &recordingPublisher{}
		r := NewDriver(pub, Options{}).Run(context.Background(), tc.args)
		assert.Equal(t, StatusFailure, r.Status, "%q", tc.args)
		assert.Contains(t, r.Message, tc.want)
		assert.Empty(t, pub.published)
		assert.Empty(t, pub.unpublished)
	}
}

func TestMountPublishes(t *testing.T) {
	pub := &recordingPublisher{}
	dir := "/var/lib/kubelet/pods/u/volumes/azure~kv/test"
	r := NewDriver(pub, Options{}).Run(context.Background(), []string{"mount", dir,
		kubeletJSON(t, map[string]string{"kubernetes.io/mounterArgs.FsGroup": "2000"})})
	assert.Equal(t, `{"status":"Success"}`+"\n", output(t, r))
	require.Len(t, pub.published, 1)
	req := pub.published[0]
	assert.Equal(t, dir, req.TargetPath)
	assert.Equal(t, "https://testkeyvault.vault.azure.net/", req.VaultURL)
	assert.Len(t, req.Objects, 2)
	assert.Equal(t, identity.ServicePrincipal, req.Identity.Mode)
	assert.Equal(t, testClientSecret, req.Identity.ClientSecret)
	require.NotNil(t, req.Owner)
	assert.Equal(t, 2000, req.Owner.GID)
}

func TestMountRefusesBadOptions(t *testing.T) {
	pub := &recordingPublisher{}
	r := NewDriver(pub, Options{}).Run(context.Background(), []string{"mount", "/mnt/x",
		kubeletJSON(t, map[string]string{"keyvaultobjecttypes": "secret;password"})})
	assert.Equal(t, StatusFailure, r.Status)
	assert.Contains(t, r.Message, `mount /mnt/x: invalid azure/kv options: keyvaultobjecttypes[1]: "password" is not one of secret, key, cert`)
	assert.Empty(t, pub.published)
}

func TestMountReportsPublishFailure(t *testing.T) {
	pub := &recordingPublisher{err: &keyvault.Error{Kind: keyvault.KindNotFound, Op: "fetch", Type: keyvault.TypeSecret,
		Vault: "testkeyvault", Object: "secret1", Err: errors.New("Key Vault answered 404 (SecretNotFound)")}}
	r := NewDriver(pub, Options{}).Run(context.Background(), []string{"mount", "/mnt/x", kubeletJSON(t, nil)})
	assert.Equal(t, StatusFailure, r.Status)
	assert.Equal(t, "mount /mnt/x: fetch secret testkeyvault/secret1: Key Vault answered 404 (SecretNotFound)", r.Message)
}

// fetcherFunc adapts a function to volume.Fetcher.
type fetcherFunc func(context.Context, keyvault.Request) (*keyvault.Result, error)

func (f fetcherFunc) Fetch(ctx context.Context, req keyvault.Request) (*keyvault.Result, error) {
	return f(ctx, req)
}

func TestFailureIsOneLine(t *testing.T) {
	pub := &recordingPublisher{err: errors.New("authentication failed.\nPOST https://login.example/token\n----\nRESPONSE 401")}
	r := NewDriver(pub, Options{}).Run(context.Background(), []string{"mount", "/mnt/x", kubeletJSON(t, nil)})
	assert.Equal(t, "mount /mnt/x: authentication failed. POST https://login.example/token ---- RESPONSE 401", r.Message)
}

func TestUnmount(t *testing.T) {
	pub := &recordingPublisher{}
	r := NewDriver(pub, Options{}).Run(context.Background(), []string{"unmount", "/mnt/x"})
	assert.Equal(t, `{"status":"Success"}`+"\n", output(t, r))
	assert.Equal(t, []string{"/mnt/x"}, pub.unpublished)

	pub.err = errors.New("device busy")
	r = NewDriver(pub, Options{}).Run(context.Background(), []string{"unmount", "/mnt/x"})
	assert.Equal(t, StatusFailure, r.Status)
	assert.Equal(t, "unmount /mnt/x: device busy", r.Message)
}

// TestUnmountRealPublisher unmounts with the publisher's own cleanup: a
// mounted target is unmounted and removed, and a second call succeeds.
func TestUnmountRealPublisher(t *testing.T) {
	target := filepath.Join(t.TempDir(), "mount")
	require.NoError(t, os.Mkdir(target, 0o750))
	mounter := mount.NewFakeMounter([]mount.MountPoint{{Device: "tmpfs", Path: target, Type: "tmpfs"}})
	pub := volume.NewPublisher(mounter, fetcherFunc(nil), identity.NewCredentials(identity.Options{}), volume.Options{})
	d := NewDriver(pub, Options{})
	for i := range 2 {
		r := d.Run(context.Background(), []string{"unmount", target})
		assert.Equal(t, StatusSuccess, r.Status, "call %d: %s", i, r.Message)
	}
	assert.NoDirExists(t, target)
	mps, err := mounter.List()
	require.NoError(t, err)
	assert.Empty(t, mps)
}
