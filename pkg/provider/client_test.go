package provider

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
)

// plugin is a provider plugin on a unix socket in a temp dir.
type testPlugin struct {
	v1alpha1.UnimplementedCSIDriverProviderServer
	got  chan *v1alpha1.MountRequest
	resp *v1alpha1.MountResponse
	err  error
}

func (p *testPlugin) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: "test", RuntimeVersion: "0.0.1"}, nil
}

func (p *testPlugin) Mount(_ context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	p.got <- req
	return p.resp, p.err
}

func serve(t *testing.T, socket string, p *testPlugin) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	require.NoError(t, err)
	srv := grpc.NewServer()
	v1alpha1.RegisterCSIDriverProviderServer(srv, p)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestClientsMount(t *testing.T) {
	first, second := t.TempDir(), t.TempDir()
	p := &testPlugin{got: make(chan *v1alpha1.MountRequest, 1), resp: &v1alpha1.MountResponse{
		ObjectVersion: versions("db"), Files: []*v1alpha1.File{{Path: "db", Mode: 0o600, Contents: []byte("pw")}}}}
	serve(t, filepath.Join(second, "vault.sock"), p)
	c := NewClients(Options{Dirs: []string{first, second}})
	t.Cleanup(c.Close)

	res, err := c.Mount(ctx(t), "vault", &v1alpha1.MountRequest{Attributes: `{"a":"b"}`, Secrets: "null", Permission: "420"})
	require.NoError(t, err)
	assert.Equal(t, []byte("pw"), res.Files["db"].Data)
	got := <-p.got
	assert.Equal(t, `{"a":"b"}`, got.GetAttributes())
	assert.Equal(t, "420", got.GetPermission())
}

func TestClientsErrors(t *testing.T) {
	dir := t.TempDir()
	c := NewClients(Options{Dirs: []string{dir, filepath.Join(dir, "other")}})
	t.Cleanup(c.Close)
	kindOf := func(err error) Kind {
		var pe *Error
		require.True(t, errors.As(err, &pe), "%v", err)
		return pe.Kind
	}

	_, err := c.Mount(ctx(t), "../x", &v1alpha1.MountRequest{})
	assert.Equal(t, KindInvalidName, kindOf(err))

	_, err = c.Mount(ctx(t), "gcp", &v1alpha1.MountRequest{})
	assert.Equal(t, KindNotInstalled, kindOf(err))
	assert.Contains(t, err.Error(), filepath.Join(dir, "gcp.sock")+" or "+filepath.Join(dir, "other", "gcp.sock"))

	// A socket left by a plugin that is gone.
	ln, err := net.Listen("unix", filepath.Join(dir, "aws.sock"))
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	_, err = os.Stat(filepath.Join(dir, "aws.sock"))
	require.NoError(t, err)
	start := time.Now()
	_, err = c.Mount(ctx(t), "aws", &v1alpha1.MountRequest{})
	assert.Equal(t, KindUnavailable, kindOf(err))
	assert.Contains(t, err.Error(), filepath.Join(dir, "aws.sock"))
	assert.Less(t, time.Since(start), 10*time.Second, "a dead plugin fails the mount quickly")

	// The plugin's own status comes back with its code.
	p := &testPlugin{got: make(chan *v1alpha1.MountRequest, 1), err: status.Error(codes.PermissionDenied, "role app may not read db")}
	serve(t, filepath.Join(dir, "vault.sock"), p)
	_, err = c.Mount(ctx(t), "vault", &v1alpha1.MountRequest{})
	assert.Equal(t, KindCall, kindOf(err))
	var pe *Error
	require.True(t, errors.As(err, &pe))
	assert.Equal(t, codes.PermissionDenied, pe.Status)
	assert.Contains(t, err.Error(), "role app may not read db")
}
