// Command kvdriver is kvnode's CSI node plugin: it mounts Azure Key Vault
// secrets, keys and certificates into pods as a tmpfs volume, from the pod's
// SecretProviderClass, and keeps them current as kubelet republishes.
//
// The same binary is the FlexVolume driver azure/kv: run as
// "kvdriver flexvolume <call> ...", or installed under the name kv in
// kubelet's volume plugin directory, it serves one FlexVolume call and exits
// (see package flexvolume).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/csi"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/provider"
	"github.com/kvnode/kvnode/pkg/secretsync"
	"github.com/kvnode/kvnode/pkg/version"
	"github.com/kvnode/kvnode/pkg/volume"
)

// Config is kvdriver's command line.
type Config struct {
	Endpoint   string
	NodeID     string
	DriverName string
	Kubeconfig string
	TmpfsSize  string
	Resync     time.Duration
	CacheTTL   time.Duration
	// NMIEndpoint is nmi's node-local /host/token/ base URL (usePodIdentity).
	NMIEndpoint string
	KubeQPS     float64
	KubeBurst   int
	// StrictParameters refuses the SecretProviderClass mistakes the
	// upstream provider tolerates.
	StrictParameters bool
	// SyncSecrets writes the Secrets of classes' secretObjects, of
	// SyncSecretTypes.
	SyncSecrets     bool
	SyncSecretTypes string
	// MetricsAddr serves /metrics; empty disables it.
	MetricsAddr string
	// ProviderDirs are searched for the sockets of other stores' provider
	// plugins; MaxProviderResponse caps a plugin's answer in bytes.
	ProviderDirs        dirList
	MaxProviderResponse int
}

// dirList is a repeatable, comma-separated list flag; the first use
// replaces the default.
type dirList struct {
	dirs []string
	set  bool
}

func (l *dirList) String() string { return strings.Join(l.dirs, ",") }

func (l *dirList) Set(v string) error {
	if !l.set {
		l.dirs, l.set = nil, true
	}
	for _, d := range strings.Split(v, ",") {
		if d = strings.TrimSpace(d); d != "" {
			l.dirs = append(l.dirs, d)
		}
	}
	return nil
}

func main() {
	if args, ok := flexVolumeArgs(os.Args); ok {
		os.Exit(runFlexVolume(args, os.Stdout))
	}
	var err error
	if len(os.Args) > 1 && os.Args[1] == "install-flexvolume" {
		err = installFlexVolume(os.Args[2:])
	} else {
		err = run(os.Args[1:])
	}
	if err != nil {
		klog.ErrorS(err, "kvdriver failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func run(args []string) error {
	var cfg Config
	fs := flag.NewFlagSet("kvdriver", flag.ContinueOnError)
	fs.StringVar(&cfg.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (a unix socket)")
	fs.StringVar(&cfg.NodeID, "nodeid", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&cfg.DriverName, "driver-name", csi.DefaultDriverName, "CSI driver name")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&cfg.TmpfsSize, "tmpfs-size", "32m", "size limit of each volume's tmpfs")
	fs.DurationVar(&cfg.Resync, "informer-resync", 10*time.Minute, "resync period of the SecretProviderClass informer")
	fs.DurationVar(&cfg.CacheTTL, "object-cache-ttl", time.Minute,
		"how long a fetched object is shared by the mounts of the same identity on this node; bounds how late a rotated secret appears (0 disables)")
	fs.StringVar(&cfg.NMIEndpoint, "nmi-endpoint", identity.DefaultNMIEndpoint, "nmi's node-local endpoint for usePodIdentity mounts")
	fs.Float64Var(&cfg.KubeQPS, "kube-api-qps", 50, "queries per second to the API server (pod status writes: one per new mount or rotation)")
	fs.IntVar(&cfg.KubeBurst, "kube-api-burst", 100, "burst of queries to the API server")
	fs.BoolVar(&cfg.StrictParameters, "strict-parameters", false,
		"refuse (InvalidArgument) the SecretProviderClass mistakes the upstream Azure provider tolerates; by default they are mounted as upstream mounts them, with a Warning event on the pod")
	fs.BoolVar(&cfg.SyncSecrets, "sync-secrets", true,
		"write the Kubernetes Secrets that SecretProviderClasses' secretObjects describe (needs create and patch on Secrets)")
	fs.StringVar(&cfg.SyncSecretTypes, "sync-secret-types", secretTypes(secretsync.DefaultTypes()),
		"comma-separated Secret types kvdriver may write (the chart's syncSecret.types; its admission policy refuses any other)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", ":8095", "address serving Prometheus metrics at /metrics (the upstream driver's port); empty disables it")
	cfg.ProviderDirs.dirs = slices.Clone(provider.DefaultDirs)
	fs.Var(&cfg.ProviderDirs, "providers-dir",
		"directory holding the sockets (<provider>.sock) of the provider plugins that classes of other providers than azure are forwarded to; repeatable or comma-separated, searched in order")
	fs.IntVar(&cfg.MaxProviderResponse, "max-call-recv-msg-size", provider.DefaultMaxResponseSize,
		"largest answer in bytes accepted from a provider plugin (the upstream driver's flag)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println("kvdriver", version.Version)
		return nil
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.NodeID == "" {
		return errors.New("--nodeid (or $NODE_NAME) is required")
	}

	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "kvdriver/" + version.Version
	// client-go's default of 5 QPS would hold every new mount ~200 ms behind
	// the pod-status writes of the mounts before it when many pods start.
	restCfg.QPS, restCfg.Burst = float32(cfg.KubeQPS), cfg.KubeBurst
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return err
	}

	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	events := csi.NewPodEvents(kube, "kvdriver", cfg.NodeID)
	defer events.Shutdown()

	var secrets csi.SecretSyncer
	if cfg.SyncSecrets {
		secrets = secretsync.New(kube.CoreV1(), secretsync.Options{Types: parseSecretTypes(cfg.SyncSecretTypes)})
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := csi.NewMetrics(reg)

	providers := provider.NewClients(provider.Options{Dirs: cfg.ProviderDirs.dirs, MaxResponseSize: cfg.MaxProviderResponse})
	defer providers.Close()

	classes := csi.NewClassInformer(dyn, cfg.Resync)
	statuses := csi.NewStatusRecorder(csi.NewPodStatusWriter(dyn), 100*time.Millisecond)
	node := csi.NewNodeServer(cfg.NodeID, classes, newPublisher(cfg.TmpfsSize, cfg.CacheTTL, cfg.NMIEndpoint), statuses,
		csi.NodeServerOptions{StrictParameters: cfg.StrictParameters, Events: events, Secrets: secrets, Metrics: metrics,
			Providers: providers})
	ids := csi.NewIdentityServer(cfg.DriverName, version.Version, classes.HasSynced)
	srv, err := csi.Listen(cfg.Endpoint, ids, node)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	classes.Start(ctx)
	klog.InfoS("kvdriver serving", "endpoint", cfg.Endpoint, "node", cfg.NodeID, "driver", cfg.DriverName, "version", version.Version,
		"providersDirs", cfg.ProviderDirs.dirs)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(ctx) })
	g.Go(func() error { statuses.Run(ctx, 2); return nil })
	if cfg.MetricsAddr != "" {
		ms, err := metricsServer(cfg.MetricsAddr, reg)
		if err != nil {
			return err
		}
		g.Go(func() error { return ms(ctx) })
	}
	g.Go(func() error {
		if !classes.WaitForSync(ctx) {
			return nil // shutting down
		}
		klog.InfoS("SecretProviderClass informer synced")
		return nil
	})
	return g.Wait()
}

// newPublisher builds the publisher both front doors mount with: Key Vault
// fetch and conversion (objects shared for cacheTTL; 0 disables),
// credentials, and tmpfs mounts by system call.
func newPublisher(tmpfsSize string, cacheTTL time.Duration, nmiEndpoint string) *volume.Publisher {
	return volume.NewPublisher(volume.NewMounter(),
		keyvault.NewFetcher(keyvault.Options{CacheTTL: cacheTTL}),
		identity.NewCredentials(identity.Options{NMIEndpoint: nmiEndpoint}),
		volume.Options{TmpfsSize: tmpfsSize})
}

// metricsServer listens on addr and returns the function that serves
// /metrics until ctx ends.
func metricsServer(addr string, reg *prometheus.Registry) (func(context.Context) error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return func(ctx context.Context) error {
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, nil
}

func secretTypes(types []corev1.SecretType) string {
	s := make([]string, len(types))
	for i, t := range types {
		s[i] = string(t)
	}
	return strings.Join(s, ",")
}

func parseSecretTypes(list string) []corev1.SecretType {
	var types []corev1.SecretType
	for _, t := range strings.Split(list, ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, corev1.SecretType(t))
		}
	}
	return types
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return rest.InClusterConfig()
}
