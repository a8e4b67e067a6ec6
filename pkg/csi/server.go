// Package csi is kvdriver's CSI node plugin: the Identity and Node services on
// a unix socket. It validates what kubelet sends, finds the pod's
// SecretProviderClass, and hands the mount to the volume publisher; it maps
// every failure to a deliberate gRPC code.
package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/redact"
)

// DefaultDriverName is the upstream secrets-store CSI driver's name, so that
// existing pod specs and CSIDriver objects keep working.
const DefaultDriverName = "secrets-store.csi.k8s.io"

// ParseEndpoint splits a CSI endpoint such as unix:///csi/csi.sock into the
// network and address for net.Listen. Only unix sockets are accepted: a CSI
// node plugin talks to kubelet on the node, never over the network.
func ParseEndpoint(endpoint string) (network, address string, err error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", "", fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	if u.Scheme != "unix" {
		return "", "", fmt.Errorf("endpoint %q: scheme must be unix", endpoint)
	}
	addr := u.Path
	if u.Host != "" {
		addr = u.Host + u.Path // unix://relative/path
	}
	if addr == "" {
		return "", "", fmt.Errorf("endpoint %q: no socket path", endpoint)
	}
	return "unix", addr, nil
}

// Server serves CSI services on a unix socket.
type Server struct {
	grpc *grpc.Server
	ln   net.Listener
	once sync.Once
}

// Listen creates the socket (replacing a stale one left by a previous run)
// and registers the services.
func Listen(endpoint string, ids csipb.IdentityServer, ns csipb.NodeServer) (*Server, error) {
	network, addr, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", addr, err)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	s := &Server{grpc: grpc.NewServer(grpc.UnaryInterceptor(logRPC)), ln: ln}
	csipb.RegisterIdentityServer(s.grpc, ids)
	csipb.RegisterNodeServer(s.grpc, ns)
	return s, nil
}

// Addr is the socket's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx ends, then stops gracefully.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		s.Stop()
		return nil
	}
}

// stopTimeout bounds how long Stop waits for the RPCs in flight: a publish
// waiting on a slow Key Vault or Entra ID completes if it can within
// Kubernetes' default terminationGracePeriodSeconds (30s, which the chart
// keeps), with room left to exit. A publish cut short leaves kubelet to
// retry against the next kvdriver.
const stopTimeout = 20 * time.Second

// Stop stops serving, waiting up to stopTimeout for RPCs in flight.
func (s *Server) Stop() {
	s.once.Do(func() {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			s.grpc.Stop()
		}
	})
}

// logRPC is the edge of every CSI call. It puts a logger for the call into
// the context, and logs the call with credentials stripped from the request
// (the nodePublishSecretRef contents, and the service-account tokens kubelet
// puts in the volume context). A failed call's status message is scrubbed of
// the request's credential values and of anything shaped like a token or a
// private key before it is logged or returned to kubelet, which records it
// in an event and its own log. Probes are logged only at high verbosity.
func logRPC(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	v := 4
	if info.FullMethod == "/csi.v1.Identity/Probe" {
		v = 6
	}
	scrub := requestScrubber(req)
	logger := redact.Logger(klog.FromContext(ctx), scrub).WithValues("method", info.FullMethod)
	start := time.Now()
	resp, err := handler(klog.NewContext(ctx, logger), req)
	if err != nil {
		st, _ := status.FromError(err)
		st = status.New(st.Code(), scrub.String(st.Message()))
		logger.Error(nil, "CSI call failed", "code", st.Code(), "message", st.Message(),
			"request", redact.Request(req), "duration", time.Since(start))
		return resp, st.Err()
	}
	// The redacted copy of the request is built only for a line that is
	// written: at the chart's verbosity (2) it would cost a republish
	// about a twentieth of its time for nothing.
	if l := logger.V(v); l.Enabled() {
		l.Info("CSI call", "request", redact.Request(req), "duration", time.Since(start))
	}
	return resp, nil
}

// requestScrubber knows the credentials a request carries.
func requestScrubber(req any) *redact.Scrubber {
	var s redact.Scrubber
	if r, ok := req.(interface{ GetSecrets() map[string]string }); ok {
		s.AddAll(r.GetSecrets())
	}
	if r, ok := req.(interface{ GetVolumeContext() map[string]string }); ok {
		s.AddMap(r.GetVolumeContext())
	}
	return &s
}
