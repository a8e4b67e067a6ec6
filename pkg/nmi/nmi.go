// Package nmi is kvnode's node managed-identity daemon, as cmd/nmi runs it:
// New wires the pod index, the binding resolver, the interception rules,
// the token sources and the IMDS surface from a Config, and Run serves
// until its context ends.
//
// A token request reads top to bottom through the packages: the pod
// listener (interception.Listener) accepts only connections its nat rule
// intercepted from a pod interface; imds.Server parses the request, finds
// the pod (podindex) and its bound identities (bindings), picks the one
// asked for, and asks tokensource.Cached, which answers from its cache or
// from the node's IMDS (tokensource.NodeIMDS) or Entra ID's exchange of the
// pod's service-account token (tokensource.WorkloadTokens).
package nmi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/bindings"
	"github.com/kvnode/kvnode/pkg/imds"
	"github.com/kvnode/kvnode/pkg/interception"
	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/podindex"
	"github.com/kvnode/kvnode/pkg/pprofserver"
	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/pkg/tokensource"
	"github.com/kvnode/kvnode/pkg/version"
)

// Config is what nmi runs with: its command line, parsed.
type Config struct {
	NodeName string
	// Kubeconfig is the API server client configuration file; empty is
	// the in-cluster configuration.
	Kubeconfig          string
	ListenAddr          netip.AddrPort
	HostAddr            netip.AddrPort
	IMDSEndpoint        string
	DefaultTenantID     string
	NodeIdentities      []string
	SkipAzureIdentities bool
	ReconcileInterval   time.Duration
	AntiSpoofing        bool
	// RequirePodRoute serves a connection only when the node's route back
	// to its source is a /32 through a pod's veth, and a pod's address only
	// through the veth that carries it (routed CNIs).
	RequirePodRoute    bool
	PodInterfacePrefix string
	PodCIDR            netip.Prefix
	// PprofAddr serves /debug/pprof/ when valid; the zero value is off.
	PprofAddr netip.AddrPort
	// ProxyInstanceMetadata forwards pods' /metadata/instance requests to
	// the node's IMDS; off, they are refused like any other path.
	ProxyInstanceMetadata bool
	// RemoveRulesOnExit removes the interception rules when nmi stops. With
	// it off, a restarting nmi fails closed: pods' connections to the
	// metadata address are refused until the next nmi is up, instead of
	// reaching the node's IMDS (and every identity assigned to the node).
	RemoveRulesOnExit bool
	// Cleanup removes the interception rules and exits (after an uninstall
	// that kept them).
	Cleanup bool
}

// Daemon is a wired nmi, ready to Run.
type Daemon struct {
	cfg             Config
	pods            *podindex.Index
	binds           *bindings.Resolver
	rules           *interception.Interceptor
	routes          *interception.PodRoutes
	podSrv, nodeSrv *http.Server
	podLn           net.Listener
	nodeLn          net.Listener
	pprofSrv        *http.Server
	pprofLn         net.Listener
}

// New builds nmi from cfg: clients, informers (not yet started), rules
// (not yet in place) and listeners (bound). Close releases what it holds
// when Run is not called.
func New(cfg Config) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	restCfg, err := kube.RESTConfig(cfg.Kubeconfig, "nmi/"+version.Version)
	if err != nil {
		return nil, err
	}
	client, err := kube.NewCore(restCfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return nil, err
	}
	// With routed pods, a pod's address is served only through the veth
	// that carries it; the listener refuses connections from any other.
	var links podindex.Links
	if cfg.RequirePodRoute {
		if d.routes, err = interception.NewPodRoutes(interception.PodRoutesConfig{
			InterfacePrefix: cfg.PodInterfacePrefix, Source: cfg.ListenAddr.Addr()}); err != nil {
			return nil, err
		}
		links = d.routes
	}
	if d.pods, err = podindex.New(client, cfg.NodeName, links); err != nil {
		return nil, err
	}
	if d.binds, err = bindings.New(client, dyn, bindings.Config{
		DefaultTenantID: cfg.DefaultTenantID, NodeIdentities: cfg.NodeIdentities, SkipAzureIdentities: cfg.SkipAzureIdentities}); err != nil {
		return nil, err
	}
	if d.rules, err = interception.New(interceptionConfig(cfg)); err != nil {
		return nil, err
	}

	// nmi's own calls to IMDS leave through OUTPUT, which the rules leave
	// alone. They honour the proxy environment like the Azure SDK does
	// (a node behind a proxy lists 169.254.169.254 in NO_PROXY).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = http.ProxyFromEnvironment
	tokens := tokensource.Cached{
		IMDS:             tokencache.New(tokensource.NewNodeIMDS(cfg.IMDSEndpoint, &http.Client{Transport: transport}), tokencache.Options{}),
		WorkloadIdentity: tokencache.New(tokensource.NewWorkloadTokens(client, tokensource.WorkloadTokenOptions{}), tokencache.Options{}),
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gauge := func(name, help string, get func() int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvnode", Subsystem: "nmi", Name: name, Help: help},
			func() float64 { return float64(get()) })
	}
	reg.MustRegister(
		gauge("pod_index_pods", "Pods of this node the pod index holds.", func() int { n, _ := d.pods.Len(); return n }),
		gauge("pod_index_addresses", "Addresses the indexed pods claim.", func() int { _, n := d.pods.Len(); return n }),
		gauge("token_cache_entries", "Tokens the cache holds (identity, resource, ServiceAccount).", func() int { return tokens.Stats().Entries }),
	)
	var instance *imds.InstanceProxy
	podRoutes := []string{imds.TokenPath}
	if cfg.ProxyInstanceMetadata {
		instance = &imds.InstanceProxy{BaseURL: cfg.IMDSEndpoint, Client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}
		podRoutes = append(podRoutes, imds.InstancePath)
	}
	srv, err := imds.New(imds.Config{
		Pods: d.pods, Bindings: d.binds, Tokens: tokens, Registry: reg, CacheStats: tokens.Stats, Instance: instance,
		Synced: func() bool { return d.pods.HasSynced() && d.binds.HasSynced() },
		Ready: func() error {
			switch {
			case !d.pods.HasSynced():
				return errors.New("pod informer not synced")
			case !d.binds.HasSynced():
				return errors.New("binding informers not synced")
			case !d.rules.Ready():
				return errors.New("interception rules not in place")
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	d.podSrv = srv.HTTPServer(cfg.ListenAddr.String())
	d.podSrv.Handler = srv.Restrict(podRoutes...)
	d.nodeSrv = srv.HTTPServer(cfg.HostAddr.String())
	d.nodeSrv.Handler = srv.Restrict(imds.HostTokenPath, imds.HealthzPath, imds.ReadyzPath, imds.MetricsPath)
	rawPodLn, err := net.Listen("tcp4", d.podSrv.Addr)
	if err != nil {
		return nil, err
	}
	podLn := interception.NewListener(rawPodLn, d.routes)
	d.podLn = podLn
	reg.MustRegister(podLn.Collector())
	if d.nodeLn, err = net.Listen("tcp", d.nodeSrv.Addr); err != nil {
		return nil, err
	}
	if cfg.PprofAddr.IsValid() {
		if d.pprofSrv, d.pprofLn, err = pprofserver.Listen(cfg.PprofAddr); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Close releases the listeners and the route watch of a Daemon that will
// not Run (Run releases them itself).
func (d *Daemon) Close() {
	for _, ln := range []net.Listener{d.podLn, d.nodeLn, d.pprofLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if d.routes != nil {
		d.routes.Close()
	}
}

// Run starts the informers, puts the rules in place and serves until ctx
// ends; then it removes the rules (unless Config.RemoveRulesOnExit is off)
// and stops.
func (d *Daemon) Run(ctx context.Context) error {
	cfg, pods, binds, rules := d.cfg, d.pods, d.binds, d.rules
	if d.routes != nil {
		defer d.routes.Close()
	}
	pods.Start(ctx)
	binds.Start(ctx)
	klog.InfoS("nmi serving", "pods", cfg.ListenAddr, "node", cfg.HostAddr, "nodeName", cfg.NodeName,
		"antiSpoofing", cfg.AntiSpoofing, "requirePodRoute", cfg.RequirePodRoute, "version", version.Version)

	g, gctx := errgroup.WithContext(ctx)
	// The rules go in at once, before the informers sync: until every
	// informer has synced pods get 503 with Retry-After (which IMDS clients
	// retry) instead of reaching the node's IMDS or being refused from a
	// partial view.
	g.Go(func() error { rules.Run(gctx, cfg.ReconcileInterval); return nil })
	if cfg.AntiSpoofing {
		g.Go(func() error { return interception.WatchPodRoutes(gctx, rules, cfg.ReconcileInterval) })
	}
	g.Go(func() error { return serve(gctx, d.podSrv, d.podLn) })
	g.Go(func() error { return serve(gctx, d.nodeSrv, d.nodeLn) })
	if d.pprofSrv != nil {
		g.Go(func() error { return serve(gctx, d.pprofSrv, d.pprofLn) })
	}
	g.Go(func() error {
		if pods.WaitForSync(gctx) && binds.WaitForSync(gctx) {
			// The initial lists decoded every ServiceAccount of the
			// cluster, of which nmi keeps a few: hand the memory they
			// took back to the kernel now rather than over the minutes
			// the runtime's scavenger would take, so that the node sees
			// nmi's steady-state size from the start. Once per start.
			debug.FreeOSMemory()
			klog.InfoS("Informers synced")
		}
		return nil
	})
	err := g.Wait()
	if cfg.RemoveRulesOnExit {
		if rerr := rules.Remove(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove interception rules: %w", rerr))
		} else {
			klog.InfoS("Removed interception rules")
		}
	} else {
		klog.InfoS("Kept interception rules: pods are refused until nmi is back")
	}
	pods.Shutdown()
	binds.Shutdown()
	return err
}

// Cleanup removes the interception rules cfg describes (after an uninstall
// that kept them).
func Cleanup(cfg Config) error {
	rules, err := interception.New(interceptionConfig(cfg))
	if err != nil {
		return err
	}
	if err := rules.Remove(); err != nil {
		return fmt.Errorf("remove interception rules: %w", err)
	}
	klog.InfoS("Removed interception rules")
	return nil
}

// shutdownTimeout bounds how long a stopping nmi waits for the requests in
// flight: a token request waiting on a slow IMDS or Entra ID is answered if
// it can be within Kubernetes' default terminationGracePeriodSeconds (30s,
// which the chart keeps), with room left to remove the rules and exit.
const shutdownTimeout = 20 * time.Second

// serve runs hs on ln until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, hs *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", hs.Addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	_ = hs.Shutdown(sctx)
	return nil
}

// interceptionConfig is the interception rules' configuration.
func interceptionConfig(cfg Config) interception.Config {
	return interception.Config{
		Address: cfg.ListenAddr.Addr(), Port: cfg.ListenAddr.Port(),
		InterfacePrefix: cfg.PodInterfacePrefix, PodCIDR: cfg.PodCIDR,
		DisableRawRules: !cfg.AntiSpoofing,
	}
}
