package emulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Options configure an Emulator.
type Options struct {
	// Dir is where the emulator writes its CA certificate (ca.crt). Required.
	Dir string
	// Addr is the proxy's listen address; default 127.0.0.1:0.
	Addr string
	// TokenLifetime is the life of access tokens from Entra ID and IMDS;
	// default one hour.
	TokenLifetime time.Duration
	// Logf receives one line per request answered. It never sees a secret or a
	// token. Nil discards.
	Logf func(format string, args ...any)
}

// Cloud is an Azure cloud the emulator serves: its Entra ID authority host and
// its Key Vault DNS suffix.
type Cloud struct {
	Name          string
	AuthorityHost string
	VaultSuffix   string
}

// VaultResource is the resource (token audience) of Key Vault in this cloud.
func (c Cloud) VaultResource() string { return "https://" + c.VaultSuffix }

// Clouds are the clouds the emulator serves, with the host names the Azure SDK
// and the upstream Azure provider use for them.
var Clouds = []Cloud{
	{Name: "AzurePublicCloud", AuthorityHost: "login.microsoftonline.com", VaultSuffix: "vault.azure.net"},
	{Name: "AzureUSGovernmentCloud", AuthorityHost: "login.microsoftonline.us", VaultSuffix: "vault.usgovcloudapi.net"},
	{Name: "AzureChinaCloud", AuthorityHost: "login.chinacloudapi.cn", VaultSuffix: "vault.azure.cn"},
}

// IMDSHost is the instance metadata service's address.
const IMDSHost = "169.254.169.254"

// core is what the emulated services share.
type core struct {
	dir       *directory
	signer    *tokenSigner
	rec       *recorder
	tokenLife time.Duration
	logf      func(format string, args ...any)
}

// Emulator is a running Azure emulator. Its methods are safe for concurrent use.
type Emulator struct {
	*core
	ca     *authority
	caFile string
	ln     net.Listener
	srv    *http.Server

	entra *entraService
	kv    *keyVaultService
	imds  *imdsService
	proxy *tokenProxyService

	mu      sync.Mutex
	tunnels map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// Start creates an emulator, writes its CA to Options.Dir/ca.crt and starts
// serving on Options.Addr. Call Close when done.
func Start(opts Options) (*Emulator, error) {
	if opts.Dir == "" {
		return nil, errors.New("emulator: Options.Dir is required")
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = time.Hour
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	ca, err := newAuthority()
	if err != nil {
		return nil, fmt.Errorf("emulator: create CA: %w", err)
	}
	caFile := filepath.Join(opts.Dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("emulator: write CA: %w", err)
	}
	signer, err := newTokenSigner()
	if err != nil {
		return nil, fmt.Errorf("emulator: create token key: %w", err)
	}
	c := &core{dir: newDirectory(), signer: signer, rec: &recorder{}, tokenLife: opts.TokenLifetime, logf: opts.Logf}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("emulator: listen: %w", err)
	}
	e := &Emulator{
		core:    c,
		ca:      ca,
		caFile:  caFile,
		ln:      ln,
		entra:   newEntraService(c),
		kv:      newKeyVaultService(c),
		imds:    newIMDSService(c),
		tunnels: map[net.Conn]struct{}{},
	}
	e.proxy = &tokenProxyService{core: c, entra: e.entra}
	e.srv = &http.Server{Handler: http.HandlerFunc(e.serveProxy), ReadHeaderTimeout: 10 * time.Second}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		_ = e.srv.Serve(ln)
	}()
	return e, nil
}

// Close stops the emulator and closes every open tunnel.
func (e *Emulator) Close() error {
	e.mu.Lock()
	e.closed = true
	for c := range e.tunnels {
		c.Close()
	}
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	e.wg.Wait()
	return err
}

// Addr is the proxy's listen address (host:port).
func (e *Emulator) Addr() string { return e.ln.Addr().String() }

// ProxyURL is the value for HTTPS_PROXY and HTTP_PROXY.
func (e *Emulator) ProxyURL() string { return "http://" + e.Addr() }

// CAFile is the path of the PEM CA certificate that signs the emulator's TLS
// certificates: the value for SSL_CERT_FILE.
func (e *Emulator) CAFile() string { return e.caFile }

// CACertPEM returns the CA certificate.
func (e *Emulator) CACertPEM() []byte { return append([]byte(nil), e.ca.certPEM...) }

// HTTPClient returns an HTTP client that reaches the emulator the way a Go
// program configured for a corporate proxy reaches Azure: every request goes
// through the emulator's proxy and its CA is trusted. Pass it as the Azure
// SDK's ClientOptions.Transport in tests that run the SDK in-process (Go
// reads the proxy variables only once per process, so Env suits child
// processes).
func (e *Emulator) HTTPClient() *http.Client {
	proxy := &url.URL{Scheme: "http", Host: e.Addr()}
	pool := x509.NewCertPool()
	pool.AddCert(e.ca.cert)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyURL(proxy)
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}
}

// Env returns the environment a Go (or curl) client needs to reach the
// emulator instead of Azure, as KEY=value strings. NO_PROXY is emptied so that
// no inherited setting routes 169.254.169.254 around the emulator.
func (e *Emulator) Env() []string {
	u := e.ProxyURL()
	return []string{
		"HTTPS_PROXY=" + u, "https_proxy=" + u,
		"HTTP_PROXY=" + u, "http_proxy=" + u,
		"NO_PROXY=", "no_proxy=",
		"SSL_CERT_FILE=" + e.caFile,
	}
}

// Requests returns the requests answered so far that match f, oldest first.
func (e *Emulator) Requests(f RequestFilter) []Request { return e.rec.list(f) }

// CountRequests returns how many requests match f.
func (e *Emulator) CountRequests(f RequestFilter) int { return len(e.rec.list(f)) }

// ResetRequests forgets the request log.
func (e *Emulator) ResetRequests() { e.rec.reset() }

// AddApplication registers an application (service principal). A missing
// ObjectID is generated; the returned Principal has it.
func (e *Emulator) AddApplication(p Principal) (Principal, error) {
	p.ResourceID = ""
	return e.dir.add(p)
}

// AddFederatedCredential lets tokens from fc.Issuer with subject fc.Subject
// authenticate as the application with clientID (workload identity).
func (e *Emulator) AddFederatedCredential(clientID string, fc FederatedCredential) error {
	return e.dir.addFederated(clientID, fc)
}

// Principal returns the registered principal with clientID.
func (e *Emulator) Principal(clientID string) (Principal, bool) { return e.dir.lookup(clientID) }

// serveProxy is the handler for connections to the proxy port: CONNECT
// tunnels, absolute-form plain-http requests (IMDS), and the control surface.
func (e *Emulator) serveProxy(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodConnect:
		e.serveConnect(w, r)
	case r.URL.IsAbs():
		host := hostOnly(r.URL.Host)
		if host == IMDSHost {
			e.imds.ServeHTTP(w, r)
			return
		}
		if e.isSelf(r.URL.Host) && strings.HasPrefix(r.URL.Path, "/control/") {
			// A client that exported the proxy variables reaches the
			// control surface through the proxy itself.
			e.serveControl(w, r)
			return
		}
		e.refuseHost(w, r, "http")
	case strings.HasPrefix(r.URL.Path, "/control/"):
		e.serveControl(w, r)
	default:
		http.Error(w, "kvnode Azure emulator: this port is an HTTP proxy; the control API is under /control/", http.StatusNotFound)
	}
}

// serveConnect terminates a CONNECT tunnel with TLS for the requested host and
// serves the emulated service for that host over it.
func (e *Emulator) serveConnect(w http.ResponseWriter, r *http.Request) {
	host := hostOnly(r.Host)
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "hijacking not supported", http.StatusInternalServerError)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	if rw.Reader.Buffered() > 0 {
		// A client that sends TLS before reading our 200 is not one we serve.
		conn.Close()
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		conn.Close()
		return
	}
	var sni atomic.Value // the client's server name, once the handshake has run
	sni.Store("")
	tlsConn := tls.Server(conn, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			sni.Store(hello.ServerName)
			name := hello.ServerName
			if name == "" {
				name = host
			}
			return e.ca.leaf(name)
		},
	})
	if !e.track(tlsConn) {
		tlsConn.Close()
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.untrack(tlsConn)
		handler := http.HandlerFunc(e.serveTLS)
		if e.proxy.handles(host) {
			// The token proxy answers every request of its tunnel,
			// whatever Host header the request names.
			handler = func(w http.ResponseWriter, r *http.Request) { e.proxy.serve(w, r, sni.Load().(string)) }
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
		_ = srv.Serve(newOneConnListener(tlsConn))
	}()
}

// serveTLS routes a request that arrived through a tunnel by its Host.
func (e *Emulator) serveTLS(w http.ResponseWriter, r *http.Request) {
	host := strings.ToLower(hostOnly(r.Host))
	for _, c := range Clouds {
		switch {
		case host == c.AuthorityHost:
			e.entra.serve(w, r, c)
			return
		case strings.HasSuffix(host, "."+c.VaultSuffix):
			vault := strings.TrimSuffix(host, "."+c.VaultSuffix)
			if !strings.Contains(vault, ".") {
				e.kv.serve(w, r, c, vault)
				return
			}
		}
	}
	e.refuseHost(w, r, "https")
}

// refuseHost answers a request for a host the emulator does not serve with 421
// Misdirected Request: a status the Azure SDK does not retry, so a misrouted
// call fails at once instead of after minutes of back-off.
func (e *Emulator) refuseHost(w http.ResponseWriter, r *http.Request, scheme string) {
	host := hostOnly(r.Host)
	if r.URL.IsAbs() {
		host = hostOnly(r.URL.Host)
	}
	e.rec.add(Request{Service: ServiceUnknown, Host: host, Method: r.Method, Path: r.URL.Path, Status: http.StatusMisdirectedRequest})
	e.logf("refused %s://%s%s: host not emulated", scheme, host, r.URL.Path)
	http.Error(w, fmt.Sprintf("kvnode Azure emulator: host %q is not emulated", host), http.StatusMisdirectedRequest)
}

func (e *Emulator) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.tunnels[c] = struct{}{}
	return true
}

func (e *Emulator) untrack(c net.Conn) {
	e.mu.Lock()
	delete(e.tunnels, c)
	e.mu.Unlock()
}

// isSelf reports whether hostport names the emulator's own listener.
func (e *Emulator) isSelf(hostport string) bool {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	_, myPort, _ := net.SplitHostPort(e.Addr())
	ip := net.ParseIP(host)
	return port == myPort && (host == "localhost" || ip != nil && (ip.IsLoopback() || ip.Equal(e.ln.Addr().(*net.TCPAddr).IP)))
}

// hostOnly strips a port from host:port.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// oneConnListener hands out a single connection, then blocks until that
// connection is closed, so http.Server.Serve returns when the tunnel ends.
type oneConnListener struct {
	conn      net.Conn
	once      sync.Once
	closeOnce sync.Once
	done      chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{done: make(chan struct{})}
	l.conn = &notifyCloseConn{Conn: c, onClose: func() { l.Close() }}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

type notifyCloseConn struct {
	net.Conn
	closeOnce sync.Once
	onClose   func()
}

func (c *notifyCloseConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.onClose)
	return err
}

// StartT starts an emulator for the test t, with its files in a temporary
// directory, and closes it when t ends; a failure to start fails t.
func StartT(t testing.TB) *Emulator {
	t.Helper()
	e, err := Start(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start the Azure emulator: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}
