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
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/csi"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/kvdriver"
	"github.com/kvnode/kvnode/pkg/pprofserver"
	"github.com/kvnode/kvnode/pkg/provider"
	"github.com/kvnode/kvnode/pkg/redact"
	"github.com/kvnode/kvnode/pkg/secretsync"
	"github.com/kvnode/kvnode/pkg/version"
)

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
	var (
		cfg         kvdriver.Config
		dirs        = dirList{dirs: slices.Clone(provider.DefaultDirs)}
		secretTypes string
	)
	fs := flag.NewFlagSet("kvdriver", flag.ContinueOnError)
	fs.StringVar(&cfg.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (a unix socket)")
	fs.StringVar(&cfg.NodeID, "nodeid", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&cfg.DriverName, "driver-name", csi.DefaultDriverName, "CSI driver name")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; in-cluster configuration when empty")
	fs.StringVar(&cfg.TmpfsSize, "tmpfs-size", "32m", "size limit of each volume's tmpfs")
	fs.DurationVar(&cfg.Resync, "informer-resync", 10*time.Minute, "resync period of the SecretProviderClass informer")
	fs.DurationVar(&cfg.CacheTTL, "object-cache-ttl", time.Minute,
		"how long a fetched object is shared by the mounts of the same identity on this node; bounds how late a rotated secret appears (0 disables)")
	fs.Int64Var(&cfg.CacheMaxBytes, "object-cache-max-bytes", keyvault.DefaultMaxCachedBytes,
		"most bytes the object cache holds (content, names and about 512 bytes per object); expired objects, then the least recently used, make room, and a larger object is fetched for every mount")
	fs.StringVar(&cfg.NMIEndpoint, "nmi-endpoint", identity.DefaultNMIEndpoint, "nmi's node-local endpoint for usePodIdentity mounts")
	fs.Float64Var(&cfg.KubeQPS, "kube-api-qps", 50, "queries per second to the API server (pod status writes: one per new mount or rotation)")
	fs.IntVar(&cfg.KubeBurst, "kube-api-burst", 100, "burst of queries to the API server")
	fs.BoolVar(&cfg.StrictParameters, "strict-parameters", false,
		"refuse (InvalidArgument) the SecretProviderClass mistakes the upstream Azure provider tolerates; by default they are mounted as upstream mounts them, with a Warning event on the pod")
	enableRotation := fs.Bool("enable-secret-rotation", true,
		"fetch a mounted volume's objects again at kubelet's republish, at most once per --rotation-poll-interval (false: a mounted volume never changes, the upstream driver's default)")
	fs.DurationVar(&cfg.Rotation.PollInterval, "rotation-poll-interval", 2*time.Minute,
		"least time between two fetches of one volume's objects (the upstream driver's flag and default)")
	fs.BoolVar(&cfg.SyncSecrets, "sync-secrets", true,
		"write the Kubernetes Secrets that SecretProviderClasses' secretObjects describe (needs create and patch on Secrets)")
	fs.StringVar(&secretTypes, "sync-secret-types", secretsync.FormatTypes(secretsync.DefaultTypes()),
		"comma-separated Secret types kvdriver may write (the chart's syncSecret.types; its admission policy refuses any other)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", ":8095", "address serving Prometheus metrics at /metrics (the upstream driver's port); empty disables it")
	fs.Var(&dirs, "providers-dir",
		"directory holding the sockets (<provider>.sock) of the provider plugins that classes of other providers than azure are forwarded to; repeatable or comma-separated, searched in order")
	fs.IntVar(&cfg.MaxProviderResponse, "max-call-recv-msg-size", provider.DefaultMaxResponseSize,
		"largest answer in bytes accepted from a provider plugin (the upstream driver's flag)")
	fs.StringVar(&cfg.TokenProxyURL, "token-proxy-url", os.Getenv(identity.EnvTokenProxy),
		"https URL of the cluster's token proxy for useAzureTokenProxy (AKS identity binding; on AKS https://kubernetes.default.svc.cluster.local); empty refuses such mounts (default $"+identity.EnvTokenProxy+")")
	fs.StringVar(&cfg.TokenProxySNIName, "token-proxy-sni-name", os.Getenv(identity.EnvSNIName),
		"TLS server name of the token proxy; empty derives it from the API server's certificate, as on AKS (default $"+identity.EnvSNIName+")")
	fs.StringVar(&cfg.TokenProxyCAFile, "token-proxy-ca-file", os.Getenv(identity.EnvCAFile),
		"PEM file of the CA that verifies the token proxy, re-read when it changes; empty uses $"+identity.EnvCAData+" or the system roots (default $"+identity.EnvCAFile+")")
	cfg.TokenProxyCAData = os.Getenv(identity.EnvCAData)
	pprofAddr := fs.String("pprof-addr", "", "loopback address:port to serve net/http/pprof's /debug/pprof/ on; empty: off")
	showVersion := fs.Bool("version", false, "print the version and exit")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if asked := redact.CapVerbosity(fs); asked > 0 {
		klog.InfoS("Log verbosity capped: from 8 up client-go logs API request and response bodies, ServiceAccount tokens and Secret data among them",
			"asked", asked, "used", redact.MaxVerbosity)
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
	if cfg.CacheMaxBytes <= 0 {
		// 0 would read as "no cache", which is --object-cache-ttl 0's job.
		return errors.New("--object-cache-max-bytes must be positive (--object-cache-ttl 0 disables the cache)")
	}
	if *pprofAddr != "" {
		var err error
		if cfg.PprofAddr, err = pprofserver.ParseAddr("--pprof-addr", *pprofAddr); err != nil {
			return err
		}
	}
	cfg.ProviderDirs, cfg.SyncSecretTypes = dirs.dirs, secretsync.ParseTypes(secretTypes)
	cfg.Rotation.Disabled = !*enableRotation
	d, err := kvdriver.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return d.Run(ctx)
}
