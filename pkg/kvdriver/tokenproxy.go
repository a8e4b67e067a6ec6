package kvdriver

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/identity"
)

// tokenProxy is the token proxy configuration, nil when none is set. Without
// an SNI name, the name is derived from the certificate of the API server
// kvdriver talks to (in a pod, the cluster's service address, verified with
// the service-account CA: what the upstream provider dials).
func tokenProxy(cfg Config, restCfg *rest.Config) *identity.TokenProxy {
	if cfg.TokenProxyURL == "" {
		if cfg.TokenProxySNIName != "" || cfg.TokenProxyCAFile != "" || cfg.TokenProxyCAData != "" {
			klog.InfoS("token proxy SNI name or CA set without a token proxy URL: useAzureTokenProxy mounts will be refused")
		}
		return nil
	}
	tp := &identity.TokenProxy{URL: cfg.TokenProxyURL, SNIName: cfg.TokenProxySNIName,
		CAFile: cfg.TokenProxyCAFile, CAData: []byte(cfg.TokenProxyCAData)}
	if tp.SNIName == "" {
		tp.ResolveSNI = func(ctx context.Context) (string, error) {
			addr, err := apiServerAddr(restCfg.Host)
			if err != nil {
				return "", err
			}
			tlsCfg, err := rest.TLSConfigFor(restCfg)
			if err != nil {
				return "", fmt.Errorf("API server TLS configuration: %w", err)
			}
			name, err := identity.DiscoverSNIName(ctx, addr, tlsCfg)
			if err == nil {
				klog.InfoS("derived the token proxy's SNI name from the API server certificate", "sniName", name)
			}
			return name, err
		}
	}
	klog.InfoS("token proxy configured for useAzureTokenProxy", "url", tp.URL, "sniName", tp.SNIName, "caFile", tp.CAFile)
	return tp
}

// apiServerAddr is the host:port of a rest.Config Host (a URL or host[:port]).
func apiServerAddr(host string) (string, error) {
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	u, err := url.Parse(host)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("API server address %q is not a URL", host)
	}
	if u.Port() != "" {
		return u.Host, nil
	}
	return net.JoinHostPort(u.Hostname(), "443"), nil
}
