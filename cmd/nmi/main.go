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
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/interception"
	"github.com/kvnode/kvnode/pkg/nmi"
	"github.com/kvnode/kvnode/pkg/pprofserver"
	"github.com/kvnode/kvnode/pkg/redact"
	"github.com/kvnode/kvnode/pkg/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		klog.ErrorS(err, "nmi failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func parseFlags(args []string) (nmi.Config, bool, error) {
	var (
		cfg                            nmi.Config
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
	if asked := redact.CapVerbosity(fs); asked > 0 {
		klog.InfoS("Log verbosity capped: from 8 up client-go logs API request and response bodies, ServiceAccount tokens and Secret data among them",
			"asked", asked, "used", redact.MaxVerbosity)
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
		if cfg.PprofAddr, err = pprofserver.ParseAddr("--pprof-addr", pprofAddr); err != nil {
			return cfg, false, err
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
		return nmi.Cleanup(cfg)
	}
	d, err := nmi.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return d.Run(ctx)
}
