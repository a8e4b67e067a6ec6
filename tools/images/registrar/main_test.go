package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type identity struct {
	csipb.UnimplementedIdentityServer
}

func (identity) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: "test.csi.kvnode", VendorVersion: "v0"}, nil
}

// plugin serves a CSI identity service on a socket in dir.
func plugin(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "csi.sock")
	lis, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := grpc.NewServer()
	csipb.RegisterIdentityServer(srv, identity{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return sock
}

// TestRegistrar plays kubelet's plugin watcher against the registrar: the
// registration socket appears under the plugin's name, GetInfo describes
// the plugin as kubelet must see it, and a refused registration ends the
// registrar with kubelet's reason, removing its socket.
func TestRegistrar(t *testing.T) {
	dir := t.TempDir()
	regDir := filepath.Join(dir, "registry")
	require.NoError(t, os.Mkdir(regDir, 0o755))
	cfg := Config{
		CSIAddress:              plugin(t, dir),
		KubeletRegistrationPath: "/var/lib/kubelet/plugins/test.csi.kvnode/csi.sock",
		PluginRegistrationPath:  regDir,
		Timeout:                 time.Second,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()

	regSock := filepath.Join(regDir, "test.csi.kvnode-reg.sock")
	require.Eventually(t, func() bool { _, err := os.Stat(regSock); return err == nil }, 10*time.Second, 20*time.Millisecond)
	conn, err := grpc.NewClient("unix://"+regSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	kubelet := registerapi.NewRegistrationClient(conn)

	info, err := kubelet.GetInfo(ctx, &registerapi.InfoRequest{})
	require.NoError(t, err)
	assert.Equal(t, registerapi.CSIPlugin, info.GetType())
	assert.Equal(t, "test.csi.kvnode", info.GetName())
	assert.Equal(t, cfg.KubeletRegistrationPath, info.GetEndpoint())
	assert.Equal(t, []string{"1.0.0"}, info.GetSupportedVersions())

	_, err = kubelet.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true})
	require.NoError(t, err)
	select {
	case err := <-done:
		t.Fatalf("registrar ended after a successful registration: %v", err)
	case <-time.After(100 * time.Millisecond):
	}

	_, err = kubelet.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version 0.9 not supported"})
	require.NoError(t, err)
	select {
	case err := <-done:
		assert.ErrorContains(t, err, "version 0.9 not supported")
	case <-ctx.Done():
		t.Fatal("registrar kept running after kubelet refused it")
	}
	_, err = os.Stat(regSock)
	assert.ErrorIs(t, err, os.ErrNotExist, "the registration socket is removed")
}
