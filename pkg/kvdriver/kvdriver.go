// Package kvdriver is kvnode's CSI node plugin, as cmd/kvdriver runs it:
// New wires the SecretProviderClass informer, the publisher (credentials,
// Key Vault fetch, tmpfs and atomic writer), pod statuses, events, Secret
// sync, provider forwarding and metrics from a Config, and Run serves the
// CSI socket until its context ends.
//
// A mount reads top to bottom through the packages: csi.NodeServer checks
// kubelet's request and finds the class (spc parses its parameters,
// keyvault.ParseObjects its objects); volume.Publisher gets the identity's
// credential (identity), fetches and renders the objects (keyvault) and
// writes them to the volume's tmpfs (atomicwriter); csi records the pod's
// status and events and syncs its Secrets (secretsync). A class of another
// provider goes to that provider's plugin instead (provider).
package kvdriver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/csi"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/pprofserver"
	"github.com/kvnode/kvnode/pkg/provider"
	"github.com/kvnode/kvnode/pkg/secretsync"
	"github.com/kvnode/kvnode/pkg/version"
	"github.com/kvnode/kvnode/pkg/volume"
)

// Config is what kvdriver runs with: its command line, parsed.
type Config struct {
	Endpoint   string
	NodeID     string
	DriverName string
	Kubeconfig string
	TmpfsSize  string
	Resync     time.Duration
	CacheTTL   time.Duration
	// CacheMaxBytes bounds the object cache's size; 0 is
	// keyvault.DefaultMaxCachedBytes.
	CacheMaxBytes int64
	// NMIEndpoint is nmi's node-local /host/token/ base URL (usePodIdentity).
	NMIEndpoint string
	KubeQPS     float64
	KubeBurst   int
	// StrictParameters refuses the SecretProviderClass mistakes the
	// upstream provider tolerates.
	StrictParameters bool
	// Rotation says when a republish fetches a written volume again.
	Rotation csi.RotationOptions
	// TokenProxyURL, TokenProxySNIName and TokenProxyCAFile configure the
	// token proxy of useAzureTokenProxy mounts (AKS identity binding); an
	// empty URL refuses them. TokenProxyCAData is PEM from
	// $AZURE_KUBERNETES_CA_DATA.
	TokenProxyURL     string
	TokenProxySNIName string
	TokenProxyCAFile  string
	TokenProxyCAData  string
	// SyncSecrets writes the Secrets of classes' secretObjects, of
	// SyncSecretTypes.
	SyncSecrets     bool
	SyncSecretTypes []corev1.SecretType
	// MetricsAddr serves /metrics; empty disables it.
	MetricsAddr string
	// PprofAddr serves net/http/pprof's /debug/pprof/ on a loopback
	// address when valid; the zero value is off.
	PprofAddr netip.AddrPort
	// ProviderDirs are searched for the sockets of other stores' provider
	// plugins; MaxProviderResponse caps a plugin's answer in bytes.
	ProviderDirs        []string
	MaxProviderResponse int
}

// Daemon is a wired kvdriver, ready to Run.
type Daemon struct {
	cfg       Config
	classes   *csi.ClassInformer
	statuses  *csi.StatusRecorder
	events    *csi.PodEvents
	providers *provider.Clients
	srv       *csi.Server
	reg       *prometheus.Registry
	pprofSrv  *http.Server
	pprofLn   net.Listener
}

// New builds kvdriver from cfg and binds its CSI socket; the informer
// starts in Run.
func New(cfg Config) (*Daemon, error) {
	d := &Daemon{cfg: cfg}
	restCfg, err := kube.RESTConfig(cfg.Kubeconfig, "kvdriver/"+version.Version)
	if err != nil {
		return nil, err
	}
	// client-go's default of 5 QPS would hold every new mount ~200 ms behind
	// the pod-status writes of the mounts before it when many pods start.
	restCfg.QPS, restCfg.Burst = float32(cfg.KubeQPS), cfg.KubeBurst
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return nil, err
	}

	client, err := kube.NewCore(restCfg)
	if err != nil {
		return nil, err
	}
	d.events = csi.NewPodEvents(client, "kvdriver", cfg.NodeID)

	var secrets csi.SecretSyncer
	if cfg.SyncSecrets {
		secrets = secretsync.New(client, secretsync.Options{Types: cfg.SyncSecretTypes})
	}

	d.reg = prometheus.NewRegistry()
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := csi.NewMetrics(d.reg)

	d.providers = provider.NewClients(provider.Options{Dirs: cfg.ProviderDirs, MaxResponseSize: cfg.MaxProviderResponse})

	d.classes = csi.NewClassInformer(dyn, cfg.Resync)
	d.statuses = csi.NewStatusRecorder(csi.NewPodStatusWriter(dyn), 100*time.Millisecond)
	publisher := NewPublisher(PublisherOptions{TmpfsSize: cfg.TmpfsSize, CacheTTL: cfg.CacheTTL, CacheMaxBytes: cfg.CacheMaxBytes, NMIEndpoint: cfg.NMIEndpoint,
		TokenProxy: tokenProxy(cfg, restCfg), Metrics: keyvault.NewMetrics(d.reg)})
	node := csi.NewNodeServer(cfg.NodeID, d.classes, publisher, d.statuses,
		csi.NodeServerOptions{StrictParameters: cfg.StrictParameters, Events: d.events, Secrets: secrets, Metrics: metrics,
			Providers: d.providers, Rotation: cfg.Rotation})
	ids := csi.NewIdentityServer(cfg.DriverName, version.Version, d.classes.HasSynced)
	// What New has started is stopped again if a listener cannot bind.
	fail := func(err error) (*Daemon, error) {
		if d.pprofLn != nil {
			d.pprofLn.Close()
		}
		d.events.Shutdown()
		d.providers.Close()
		return nil, err
	}
	if cfg.PprofAddr.IsValid() {
		if d.pprofSrv, d.pprofLn, err = pprofserver.Listen(cfg.PprofAddr); err != nil {
			return fail(fmt.Errorf("--pprof-addr: %w", err))
		}
	}
	if d.srv, err = csi.Listen(cfg.Endpoint, ids, node); err != nil {
		return fail(err)
	}
	return d, nil
}

// Run serves the CSI socket, writes pod statuses and serves /metrics until
// ctx ends.
func (d *Daemon) Run(ctx context.Context) error {
	cfg, classes, statuses, srv, reg := d.cfg, d.classes, d.statuses, d.srv, d.reg
	defer d.events.Shutdown()
	defer d.providers.Close()
	classes.Start(ctx)
	klog.InfoS("kvdriver serving", "endpoint", cfg.Endpoint, "node", cfg.NodeID, "driver", cfg.DriverName, "version", version.Version,
		"providersDirs", cfg.ProviderDirs)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(ctx) })
	g.Go(func() error { statuses.Run(ctx, 2); return nil })
	if d.pprofSrv != nil {
		g.Go(func() error {
			go func() {
				<-ctx.Done()
				_ = d.pprofSrv.Close()
			}()
			if err := d.pprofSrv.Serve(d.pprofLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
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

// PublisherOptions configure NewPublisher.
type PublisherOptions struct {
	// TmpfsSize is each volume's tmpfs size limit.
	TmpfsSize string
	// CacheTTL shares fetched objects among the mounts of one identity for
	// this long; 0 disables the object cache.
	CacheTTL time.Duration
	// CacheMaxBytes bounds the bytes the object cache holds; 0 is
	// keyvault.DefaultMaxCachedBytes.
	CacheMaxBytes int64
	// NMIEndpoint serves usePodIdentity mounts' tokens.
	NMIEndpoint string
	// TokenProxy, when not nil, is the token proxy of identity-binding
	// mounts.
	TokenProxy *identity.TokenProxy
	// Metrics, when not nil, counts Key Vault requests and cache use.
	Metrics *keyvault.Metrics
}

// NewPublisher builds the publisher both front doors mount with: Key Vault
// fetch and conversion, credentials, and tmpfs mounts by system call.
func NewPublisher(o PublisherOptions) *volume.Publisher {
	return volume.NewPublisher(volume.NewMounter(),
		keyvault.NewFetcher(keyvault.Options{CacheTTL: o.CacheTTL, MaxCachedBytes: o.CacheMaxBytes, Metrics: o.Metrics}),
		identity.NewCredentials(identity.Options{NMIEndpoint: o.NMIEndpoint, TokenProxy: o.TokenProxy}),
		volume.Options{TmpfsSize: o.TmpfsSize})
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
