// Command nmi is kvnode's node managed-identity daemon. iptables sends pods'
// requests for the instance metadata endpoint (169.254.169.254:80) to it;
// it finds the calling pod by source address, checks that the identity asked
// for is bound to the pod's ServiceAccount (workload-identity annotations or
// aad-pod-identity's AzureIdentityBindings), and answers with a token from
// its cache: from the node's IMDS for managed identities assigned to the
// node, or from Entra ID's exchange of the pod's service-account token for
// workload identities.
//
// It serves two listeners: --listen-addr, the DNAT target pods reach, with
// only the IMDS token path, accepting only connections its nat rule
// intercepted from a pod's interface (interception.Listener); and
// --host-addr on loopback, with /host/token/ for kvdriver, /healthz,
// /readyz and /metrics, which no pod can reach.
// With --pprof-addr (off by default) a third loopback listener serves
// net/http/pprof's /debug/pprof/ for profiling.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/bindings"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/imds"
	"github.com/kvnode/kvnode/pkg/interception"
	"github.com/kvnode/kvnode/pkg/podindex"
	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/pkg/version"
)

// Config is nmi's command line.
type Config struct {
	NodeName            string
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

func main() {
	if err := run(os.Args[1:]); err != nil {
		klog.ErrorS(err, "nmi failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func parseFlags(args []string) (Config, bool, error) {
	var (
		cfg                            Config
		listen, host, nodeIDs, podCIDR string
		pprofAddr                      string
		showVersion                    bool
	)
	fs := flag.NewFlagSet("nmi", flag.ContinueOnError)
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&listen, "listen-addr", "", "address:port pods' metadata requests are sent to (the DNAT target): an IPv4 address of the node such as one on lo or the pods' gateway, never 127.0.0.1; serves only the IMDS token path")
	fs.StringVar(&host, "host-addr", "127.0.0.1:2579", "loopback address:port for the node: /host/token/ (kvdriver), /healthz, /readyz, /metrics")
	fs.StringVar(&cfg.IMDSEndpoint, "imds-endpoint", "http://"+interception.MetadataIP, "the node's instance metadata service, for managed identities assigned to the node")
	fs.StringVar(&cfg.DefaultTenantID, "default-tenant-id", "", "tenant of workload identities whose ServiceAccount has no azure.workload.identity/tenant-id annotation")
	fs.StringVar(&nodeIDs, "node-identities", "", "comma-separated client IDs of managed identities assigned to the node that a ServiceAccount annotation alone may bind (served from IMDS, no federated credential checked); empty: none")
	fs.BoolVar(&cfg.RemoveRulesOnExit, "remove-rules-on-exit", true,
		"remove the interception rules when nmi stops; false keeps them so that a restart fails closed (pods are refused, not sent to the node's IMDS)")
	fs.BoolVar(&cfg.Cleanup, "cleanup", false, "remove the interception rules and exit")
	fs.BoolVar(&cfg.ProxyInstanceMetadata, "proxy-instance-metadata", false, "forward pods' /metadata/instance requests to the node's IMDS (off: refused, like every path but the token endpoint)")
	fs.BoolVar(&cfg.SkipAzureIdentities, "skip-azure-identities", false, "do not watch aad-pod-identity's AzureIdentity and AzureIdentityBinding (for clusters without those CRDs)")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", 30*time.Second, "how often the iptables rules are checked and repaired")
	fs.BoolVar(&cfg.AntiSpoofing, "anti-spoofing", true, "drop packets from a pod's veth whose source is not that pod's address (routed CNIs: a /32 route per pod through a veth)")
	fs.BoolVar(&cfg.RequirePodRoute, "require-pod-route", true, "serve a connection only when the node's route back to its source is that address's own /32 through a veth (a pod interface), and a pod's address only through the veth that carries it (routed CNIs); false on bridge layouts (CNI bridge, kubenet), where pods are found by source address alone")
	fs.StringVar(&cfg.PodInterfacePrefix, "pod-interface-prefix", "", "intercept only packets entering through interfaces with this name prefix (e.g. cali, azv); default every interface but lo")
	fs.StringVar(&podCIDR, "pod-cidr", "", "intercept only packets whose source is in this IPv4 CIDR; default any source")
	fs.StringVar(&pprofAddr, "pprof-addr", "", "loopback address:port to serve net/http/pprof's /debug/pprof/ on; empty: off")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, false, err
	}
	if showVersion {
		return cfg, true, nil
	}
	if fs.NArg() > 0 {
		return cfg, false, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.NodeName == "" {
		return cfg, false, errors.New("--node-name (or $NODE_NAME) is required")
	}
	var err error
	if cfg.ListenAddr, err = netip.ParseAddrPort(listen); err != nil || !cfg.ListenAddr.Addr().Is4() || cfg.ListenAddr.Addr().IsLoopback() {
		return cfg, false, fmt.Errorf("--listen-addr %q: want a non-loopback IPv4 address:port of this node", listen)
	}
	if cfg.HostAddr, err = netip.ParseAddrPort(host); err != nil || !cfg.HostAddr.Addr().IsLoopback() {
		return cfg, false, fmt.Errorf("--host-addr %q: want a loopback address:port", host)
	}
	if pprofAddr != "" {
		if cfg.PprofAddr, err = netip.ParseAddrPort(pprofAddr); err != nil || !cfg.PprofAddr.Addr().IsLoopback() {
			return cfg, false, fmt.Errorf("--pprof-addr %q: want a loopback address:port", pprofAddr)
		}
	}
	if podCIDR != "" {
		if cfg.PodCIDR, err = netip.ParsePrefix(podCIDR); err != nil {
			return cfg, false, fmt.Errorf("--pod-cidr: %w", err)
		}
	}
	for _, id := range strings.Split(nodeIDs, ",") {
		if id = strings.TrimSpace(id); id != "" {
			cfg.NodeIdentities = append(cfg.NodeIdentities, id)
		}
	}
	if cfg.ReconcileInterval <= 0 {
		return cfg, false, errors.New("--reconcile-interval must be positive")
	}
	return cfg, false, nil
}

func run(args []string) error {
	cfg, showVersion, err := parseFlags(args)
	if err != nil {
		return err
	}
	if showVersion {
		fmt.Println("nmi", version.Version)
		return nil
	}

	if cfg.Cleanup {
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

	restCfg, err := restConfig(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "nmi/" + version.Version
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	// With routed pods, a pod's address is served only through the veth
	// that carries it; the listener refuses connections from any other.
	var (
		routes *interception.PodRoutes
		links  podindex.Links
	)
	if cfg.RequirePodRoute {
		if routes, err = interception.NewPodRoutes(interception.PodRoutesConfig{
			InterfacePrefix: cfg.PodInterfacePrefix, Source: cfg.ListenAddr.Addr()}); err != nil {
			return err
		}
		defer routes.Close()
		links = routes
	}
	pods, err := podindex.New(client, cfg.NodeName, links)
	if err != nil {
		return err
	}
	binds, err := bindings.New(client, dyn, bindings.Config{
		DefaultTenantID: cfg.DefaultTenantID, NodeIdentities: cfg.NodeIdentities, SkipAzureIdentities: cfg.SkipAzureIdentities})
	if err != nil {
		return err
	}
	rules, err := interception.New(interceptionConfig(cfg))
	if err != nil {
		return err
	}

	// nmi's own calls to IMDS leave through OUTPUT, which the rules leave
	// alone. They honour the proxy environment like the Azure SDK does
	// (a node behind a proxy lists 169.254.169.254 in NO_PROXY).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = http.ProxyFromEnvironment
	tokens := imds.CacheTokens{
		IMDS:             tokencache.New(imds.NewUpstream(cfg.IMDSEndpoint, &http.Client{Transport: transport}), tokencache.Options{}),
		WorkloadIdentity: tokencache.New(identity.NewWorkloadTokens(client.CoreV1(), identity.WorkloadTokenOptions{}), tokencache.Options{}),
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var instance *imds.InstanceProxy
	podRoutes := []string{imds.TokenPath}
	if cfg.ProxyInstanceMetadata {
		instance = &imds.InstanceProxy{BaseURL: cfg.IMDSEndpoint, Client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}
		podRoutes = append(podRoutes, imds.InstancePath)
	}
	srv, err := imds.New(imds.Config{
		Pods: pods, Bindings: binds, Tokens: tokens, Registry: reg, CacheStats: tokens.Stats, Instance: instance,
		Synced: func() bool { return pods.HasSynced() && binds.HasSynced() },
		Ready: func() error {
			switch {
			case !pods.HasSynced():
				return errors.New("pod informer not synced")
			case !binds.HasSynced():
				return errors.New("binding informers not synced")
			case !rules.Ready():
				return errors.New("interception rules not in place")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	podSrv := srv.HTTPServer(cfg.ListenAddr.String())
	podSrv.Handler = srv.Restrict(podRoutes...)
	nodeSrv := srv.HTTPServer(cfg.HostAddr.String())
	nodeSrv.Handler = srv.Restrict(imds.HostTokenPath, imds.HealthzPath, imds.ReadyzPath, imds.MetricsPath)
	rawPodLn, err := net.Listen("tcp4", podSrv.Addr)
	if err != nil {
		return err
	}
	podLn := interception.NewListener(rawPodLn, routes)
	reg.MustRegister(podLn.Collector())
	nodeLn, err := net.Listen("tcp", nodeSrv.Addr)
	if err != nil {
		podLn.Close()
		return err
	}
	var (
		pprofSrv *http.Server
		pprofLn  net.Listener
	)
	if cfg.PprofAddr.IsValid() {
		if pprofSrv, pprofLn, err = pprofServer(cfg.PprofAddr.String()); err != nil {
			podLn.Close()
			nodeLn.Close()
			return err
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
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
	g.Go(func() error { return serve(gctx, podSrv, podLn) })
	g.Go(func() error { return serve(gctx, nodeSrv, nodeLn) })
	if pprofSrv != nil {
		g.Go(func() error { return serve(gctx, pprofSrv, pprofLn) })
	}
	g.Go(func() error {
		if pods.WaitForSync(gctx) && binds.WaitForSync(gctx) {
			klog.InfoS("Informers synced")
		}
		return nil
	})
	err = g.Wait()
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

// serve runs hs on ln until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, hs *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", hs.Addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	return nil
}

// pprofServer serves net/http/pprof's handlers on addr, on a mux of its
// own: nothing else is exposed there.
func pprofServer(addr string) (*http.Server, net.Listener, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	// No write timeout: a CPU profile answers after its ?seconds=.
	return &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return rest.InClusterConfig()
}

// interceptionConfig is the interception rules' configuration.
func interceptionConfig(cfg Config) interception.Config {
	return interception.Config{
		Address: cfg.ListenAddr.Addr(), Port: cfg.ListenAddr.Port(),
		InterfacePrefix: cfg.PodInterfacePrefix, PodCIDR: cfg.PodCIDR,
		DisableRawRules: !cfg.AntiSpoofing,
	}
}
