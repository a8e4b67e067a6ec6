package identity

// AKS identity binding (useAzureTokenProxy): the pod's service-account token
// for audience api://AKSIdentityBinding is presented as a client assertion,
// as in workload identity, but to the cluster's token proxy rather than to
// Entra ID. The wire protocol below is the one the Azure SDK for Go
// implements for WorkloadIdentityCredentialOptions.EnableAzureProxy
// (sdk/azidentity v1.15.0, internal/customtokenproxy/transport.go) and the
// upstream Azure provider uses (secrets-store-csi-driver-provider-azure
// v1.8.2, internal/identitybinding/identitybinding.go, pkg/auth/auth.go):
//
//   - The credential is an ordinary client-assertion credential (MSAL, the
//     client_credentials grant with a jwt-bearer assertion) with instance
//     discovery disabled. Every request it makes is sent to the proxy
//     instead: the proxy URL's scheme and host, the proxy URL's path joined
//     with the request's path, the request's query. The Host header stays
//     the authority's (login.microsoftonline.com): the proxy routes on it.
//   - The proxy URL must be https, with no user info, query or fragment.
//     Upstream's default is https://kubernetes.default.svc.cluster.local, the
//     cluster's API server address: AKS routes the connection by SNI.
//   - TLS: the server name sent (SNI) and verified is the configured SNI
//     name, not the proxy URL's host; the roots are the configured CA (a file,
//     re-read when its content changes, or PEM data), or the system roots
//     when neither is set. The SDK reads these from AZURE_KUBERNETES_TOKEN_PROXY,
//     AZURE_KUBERNETES_SNI_NAME, AZURE_KUBERNETES_CA_FILE and
//     AZURE_KUBERNETES_CA_DATA (file and data are exclusive).
//   - Upstream derives the SNI name when none is configured: it connects to
//     the API server with the service-account CA, finds the SAN
//     hcp-kubernetes.<id>.svc.cluster.local on the serving certificate, and
//     names the proxy "a" + base32hex(sha256("identity-binding" + id)),
//     unpadded and lower-cased, + ".ests.aks" (SNIName below).
//
// kvnode does not use EnableAzureProxy itself: that option reads the
// assertion from a file and its configuration from the process environment,
// and silently sends the exchange to Entra ID when the environment lacks the
// proxy. kvdriver holds each pod's token in memory and must refuse an
// identity-binding mount it cannot send to a proxy, so it builds the same
// transport from explicit configuration.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// BindingAudience is the audience of the service-account token an
// identity-binding mount presents to the token proxy.
const BindingAudience = "api://AKSIdentityBinding"

// The environment variables the Azure SDK reads for its token proxy; kvdriver
// takes its defaults from them.
const (
	EnvTokenProxy = "AZURE_KUBERNETES_TOKEN_PROXY"
	EnvSNIName    = "AZURE_KUBERNETES_SNI_NAME"
	EnvCAFile     = "AZURE_KUBERNETES_CA_FILE"
	EnvCAData     = "AZURE_KUBERNETES_CA_DATA"
)

// The SAN of an AKS API server certificate that carries the cluster's ID, and
// the rule that turns the ID into the token proxy's server name.
const (
	clusterSANPrefix = "hcp-kubernetes."
	clusterSANSuffix = ".svc.cluster.local"
	sniSalt          = "identity-binding"
	sniPrefix        = "a"
	sniSuffix        = ".ests.aks"
)

// ErrTokenProxyUnconfigured (a *ProxyError) is returned for an
// identity-binding request when kvdriver has no token proxy.
var ErrTokenProxyUnconfigured error = &ProxyError{Err: errors.New(
	"not configured: AKS identity binding (useAzureTokenProxy) needs kvdriver's --token-proxy-url or $" + EnvTokenProxy)}

// ProxyError is a token proxy whose configuration is unusable, or whose
// server name could not be derived: a node's configuration problem, not the
// mount's.
type ProxyError struct {
	Err error
}

func (e *ProxyError) Error() string { return "token proxy: " + e.Err.Error() }
func (e *ProxyError) Unwrap() error { return e.Err }

// TokenProxy configures the token proxy of identity-binding mounts.
type TokenProxy struct {
	// URL is the proxy's https base URL. Required.
	URL string
	// SNIName is the TLS server name of the proxy. When empty, ResolveSNI
	// supplies it.
	SNIName string
	// ResolveSNI derives the server name (DiscoverSNIName does it as
	// upstream does). It is called until it succeeds; nil with an empty
	// SNIName means the proxy URL's host name is sent.
	ResolveSNI func(ctx context.Context) (string, error)
	// CAFile is a PEM file of the roots that verify the proxy, re-read when
	// it changes; CAData is PEM data. At most one; neither means the system
	// roots.
	CAFile string
	CAData []byte
}

// ParseTokenProxyURL checks a token proxy URL as the Azure SDK checks it.
func ParseTokenProxyURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("URL %q: %w", raw, err)
	case u.Scheme != "https":
		return nil, fmt.Errorf("URL %q must use https", raw)
	case u.Host == "":
		return nil, fmt.Errorf("URL %q has no host", raw)
	case u.User != nil:
		return nil, fmt.Errorf("URL %q must not contain user info", raw)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("URL %q must not contain a query", raw)
	case u.Fragment != "":
		return nil, fmt.Errorf("URL %q must not contain a fragment", raw)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u, nil
}

// SNIName is the token proxy's server name for the AKS cluster with ID
// clusterID.
func SNIName(clusterID string) string {
	sum := sha256.Sum256([]byte(sniSalt + clusterID))
	enc := base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])
	return strings.ToLower(sniPrefix + enc + sniSuffix)
}

// ClusterID finds the AKS cluster ID in an API server certificate's SANs.
func ClusterID(cert *x509.Certificate) (string, error) {
	for _, san := range cert.DNSNames {
		if strings.HasPrefix(san, clusterSANPrefix) && strings.HasSuffix(san, clusterSANSuffix) &&
			len(san) > len(clusterSANPrefix)+len(clusterSANSuffix) {
			return san[len(clusterSANPrefix) : len(san)-len(clusterSANSuffix)], nil
		}
	}
	return "", fmt.Errorf("the API server certificate has no SAN %s<cluster-id>%s (not an AKS cluster?): configure the SNI name",
		clusterSANPrefix, clusterSANSuffix)
}

// DiscoverSNIName connects to the API server at addr (host:port) with
// tlsConfig, which verifies it, and derives the token proxy's server name
// from its serving certificate.
func DiscoverSNIName(ctx context.Context, addr string, tlsConfig *tls.Config) (string, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: tlsConfig}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("connect to the API server %s: %w", addr, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", fmt.Errorf("the API server %s presented no certificate", addr)
	}
	id, err := ClusterID(certs[0])
	if err != nil {
		return "", err
	}
	return SNIName(id), nil
}

// proxyTransport sends every request of a credential to the token proxy.
type proxyTransport struct {
	base *url.URL
	cfg  TokenProxy

	mu      sync.Mutex
	sni     string
	caPEM   []byte
	current *http.Transport
}

var _ policy.Transporter = (*proxyTransport)(nil)

// newProxyTransport validates cfg; the server name and CA are loaded at the
// first request, so that a node whose proxy is unreachable at start still
// serves its other mounts.
func newProxyTransport(cfg TokenProxy) (*proxyTransport, error) {
	base, err := ParseTokenProxyURL(cfg.URL)
	if err != nil {
		return nil, &ProxyError{Err: err}
	}
	if cfg.CAFile != "" && len(cfg.CAData) > 0 {
		return nil, &ProxyError{Err: fmt.Errorf("a CA file and CA data are both set (%s and %s are exclusive)", EnvCAFile, EnvCAData)}
	}
	return &proxyTransport{base: base, cfg: cfg, sni: cfg.SNIName}, nil
}

// Do rewrites req to the proxy and sends it. It implements policy.Transporter.
func (p *proxyTransport) Do(req *http.Request) (*http.Response, error) {
	tr, err := p.transport(req.Context())
	if err != nil {
		return nil, err
	}
	// The Host header keeps the authority's name: only the connection goes
	// to the proxy.
	if req.Host == "" {
		req.Host = req.URL.Host
	}
	query := req.URL.RawQuery
	req.URL = p.base.JoinPath(req.URL.EscapedPath())
	req.URL.RawQuery = query
	resp, err := tr.RoundTrip(req)
	if err == nil && resp == nil {
		err = errors.New("token proxy: no response")
	}
	return resp, err
}

// transport returns the HTTP transport for the current server name and CA,
// building a new one when the CA file's content changed.
func (p *proxyTransport) transport(ctx context.Context) (*http.Transport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sni == "" && p.cfg.ResolveSNI != nil {
		name, err := p.cfg.ResolveSNI(ctx)
		if err != nil {
			return nil, &ProxyError{Err: fmt.Errorf("derive the SNI name: %w", err)}
		}
		p.sni = name
	}
	caPEM := p.cfg.CAData
	if p.cfg.CAFile != "" {
		b, err := os.ReadFile(p.cfg.CAFile)
		if err != nil {
			return nil, &ProxyError{Err: fmt.Errorf("read the CA file: %w", err)}
		}
		if len(bytes.TrimSpace(b)) == 0 && p.current != nil {
			// A CA file being rotated can be empty for a moment.
			return p.current, nil
		}
		caPEM = b
	}
	if p.current != nil && bytes.Equal(caPEM, p.caPEM) {
		return p.current, nil
	}
	var roots *x509.CertPool
	if len(caPEM) > 0 {
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(caPEM) {
			return nil, &ProxyError{Err: errors.New("the CA holds no PEM certificate")}
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{ServerName: p.sni, RootCAs: roots, MinVersion: tls.VersionTLS12}
	if p.current != nil {
		p.current.CloseIdleConnections()
	}
	p.current, p.caPEM = tr, caPEM
	return tr, nil
}
