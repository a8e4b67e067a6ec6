package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type identity struct {
	csipb.UnimplementedIdentityServer
	ready *wrapperspb.BoolValue
	err   error
}

func (i identity) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{Ready: i.ready}, i.err
}

// TestHealthz checks /healthz against a plugin that is ready, says
// nothing, says it is not ready, fails Probe, or is not there.
func TestHealthz(t *testing.T) {
	tests := []struct {
		name   string
		plugin *identity // nil: no plugin on the socket
		status int
		body   string
	}{
		{"ready", &identity{ready: wrapperspb.Bool(true)}, http.StatusOK, "ok\n"},
		{"ready left unset", &identity{}, http.StatusOK, "ok\n"},
		{"not ready", &identity{ready: wrapperspb.Bool(false)}, http.StatusInternalServerError, "not ready"},
		{"probe fails", &identity{err: errors.New("vault client broken")}, http.StatusInternalServerError, "vault client broken"},
		{"no plugin", nil, http.StatusInternalServerError, "probe the CSI plugin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "csi.sock")
			if tc.plugin != nil {
				lis, err := net.Listen("unix", sock)
				require.NoError(t, err)
				srv := grpc.NewServer()
				csipb.RegisterIdentityServer(srv, *tc.plugin)
				go srv.Serve(lis)
				defer srv.Stop()
			}
			h, err := NewHandler(Config{CSIAddress: sock, ProbeTimeout: time.Second})
			require.NoError(t, err)
			defer h.Close()
			srv := httptest.NewServer(h)
			defer srv.Close()

			resp, err := http.Get(srv.URL + "/healthz")
			require.NoError(t, err)
			defer resp.Body.Close()
			var body [512]byte
			n, _ := resp.Body.Read(body[:])
			assert.Equal(t, tc.status, resp.StatusCode)
			assert.Contains(t, string(body[:n]), tc.body)

			other, err := http.Get(srv.URL + "/metrics")
			require.NoError(t, err)
			other.Body.Close()
			assert.Equal(t, http.StatusNotFound, other.StatusCode)
		})
	}
}
