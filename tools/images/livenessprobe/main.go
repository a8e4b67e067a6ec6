// Command livenessprobe answers kubelet's liveness probe for a CSI plugin,
// as the Kubernetes CSI project's livenessprobe sidecar does, for the test
// cluster's images: that sidecar's module is not on the Go module proxy this
// project builds from. It takes the flags kvnode's chart passes it.
//
// GET /healthz calls the plugin's CSI Probe on --csi-address: 200 "ok" when
// the plugin answers and is not reporting itself unready, 500 with the
// reason otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config is the probe's command line.
type Config struct {
	CSIAddress   string
	HTTPEndpoint string
	ProbeTimeout time.Duration
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		log.Printf("livenessprobe: %v", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var cfg Config
	var port int
	fs := flag.NewFlagSet("livenessprobe", flag.ContinueOnError)
	fs.StringVar(&cfg.CSIAddress, "csi-address", "/run/csi/socket", "the CSI plugin's socket")
	fs.StringVar(&cfg.HTTPEndpoint, "http-endpoint", "", "address to serve /healthz on, such as :9808 (wins over --health-port)")
	fs.IntVar(&port, "health-port", 9808, "port to serve /healthz on, on all addresses")
	fs.DurationVar(&cfg.ProbeTimeout, "probe-timeout", time.Second, "timeout of each Probe call")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.HTTPEndpoint == "" {
		cfg.HTTPEndpoint = ":" + strconv.Itoa(port)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	lis, err := net.Listen("tcp", cfg.HTTPEndpoint)
	if err != nil {
		return err
	}
	h, err := NewHandler(cfg)
	if err != nil {
		return err
	}
	defer h.Close()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Printf("serving /healthz on %s for the CSI plugin at %s", lis.Addr(), cfg.CSIAddress)
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Handler serves /healthz from the plugin's Probe.
type Handler struct {
	cfg      Config
	conn     *grpc.ClientConn
	identity csipb.IdentityClient
}

// NewHandler connects (lazily) to the plugin at cfg.CSIAddress.
func NewHandler(cfg Config) (*Handler, error) {
	conn, err := grpc.NewClient("unix://"+cfg.CSIAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &Handler{cfg: cfg, conn: conn, identity: csipb.NewIdentityClient(conn)}, nil
}

// Close closes the connection to the plugin.
func (h *Handler) Close() error { return h.conn.Close() }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/healthz" {
		http.NotFound(w, r)
		return
	}
	if err := h.probe(r.Context()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (h *Handler) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.ProbeTimeout)
	defer cancel()
	resp, err := h.identity.Probe(ctx, &csipb.ProbeRequest{})
	if err != nil {
		return fmt.Errorf("probe the CSI plugin: %w", err)
	}
	if ready := resp.GetReady(); ready != nil && !ready.GetValue() {
		return errors.New("the CSI plugin reports itself not ready")
	}
	return nil
}
