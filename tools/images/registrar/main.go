// Command registrar registers a CSI node plugin with kubelet, as the
// Kubernetes CSI project's node-driver-registrar sidecar does, for the test
// cluster's images: that sidecar's module is not on the Go module proxy this
// project builds from. It speaks the same two protocols and takes the flags
// kvnode's chart passes it.
//
// It asks the plugin for its name (CSI GetPluginInfo on --csi-address), then
// serves kubelet's plugin registration API (GetInfo,
// NotifyRegistrationStatus) on <--plugin-registration-path>/<name>-reg.sock,
// the directory kubelet's plugin watcher watches. GetInfo names
// --kubelet-registration-path: the plugin's socket as kubelet, on the node,
// sees it. A registration kubelet refuses ends the process with status 1,
// so that kubelet restarts the container and it tries again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Config is the registrar's command line.
type Config struct {
	CSIAddress              string
	KubeletRegistrationPath string
	PluginRegistrationPath  string
	Timeout                 time.Duration
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		log.Printf("registrar: %v", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var cfg Config
	fs := flag.NewFlagSet("registrar", flag.ContinueOnError)
	fs.StringVar(&cfg.CSIAddress, "csi-address", "/run/csi/socket", "the CSI plugin's socket, as this container sees it")
	fs.StringVar(&cfg.KubeletRegistrationPath, "kubelet-registration-path", "", "the CSI plugin's socket, as kubelet on the node sees it")
	fs.StringVar(&cfg.PluginRegistrationPath, "plugin-registration-path", "/registration", "kubelet's plugin registration directory, as this container sees it")
	fs.DurationVar(&cfg.Timeout, "timeout", time.Second, "timeout of each call to the plugin")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.KubeletRegistrationPath == "" {
		return errors.New("--kubelet-registration-path is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return Run(ctx, cfg)
}

// Run registers the plugin and serves kubelet until ctx ends or kubelet
// refuses the registration.
func Run(ctx context.Context, cfg Config) error {
	name, err := pluginName(ctx, cfg)
	if err != nil {
		return err
	}
	sock := filepath.Join(cfg.PluginRegistrationPath, name+"-reg.sock")
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", sock, err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer os.Remove(sock)

	refused := make(chan error, 1)
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registration{
		info: &registerapi.PluginInfo{
			Type:              registerapi.CSIPlugin,
			Name:              name,
			Endpoint:          cfg.KubeletRegistrationPath,
			SupportedVersions: []string{"1.0.0"},
		},
		refused: refused,
	})
	log.Printf("registering CSI plugin %s (endpoint %s) at %s", name, cfg.KubeletRegistrationPath, sock)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		// Let an answer in flight (to a refusal, say) reach kubelet.
		force := time.AfterFunc(time.Second, srv.Stop)
		srv.GracefulStop()
		force.Stop()
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-refused:
		return err
	case err := <-served:
		return err
	}
}

// pluginName asks the plugin for its name, waiting for its socket to
// answer: the plugin's container may start after this one.
func pluginName(ctx context.Context, cfg Config) (string, error) {
	conn, err := grpc.NewClient("unix://"+cfg.CSIAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	identity := csipb.NewIdentityClient(conn)
	for {
		callCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		resp, err := identity.GetPluginInfo(callCtx, &csipb.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			if resp.GetName() == "" {
				return "", errors.New("the plugin's GetPluginInfo names no driver")
			}
			return resp.GetName(), nil
		}
		log.Printf("waiting for the CSI plugin at %s: %v", cfg.CSIAddress, err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

type registration struct {
	registerapi.UnimplementedRegistrationServer
	info    *registerapi.PluginInfo
	refused chan<- error
}

func (r *registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return r.info, nil
}

func (r *registration) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.GetPluginRegistered() {
		log.Printf("kubelet registered CSI plugin %s", r.info.GetName())
	} else {
		select {
		case r.refused <- fmt.Errorf("kubelet refused CSI plugin %s: %s", r.info.GetName(), st.GetError()):
		default:
		}
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
