// Package imds is nmi's HTTP surface: the instance metadata service's token
// endpoint as pods see it once iptables sends their 169.254.169.254 traffic
// here, the node-local /host/token/ endpoint for kvdriver, and health,
// readiness and metrics endpoints.
//
// Routing fails closed. The request line's target must be exactly one of
// the routes, compared byte for byte before any decoding or cleaning:
//
//	GET /metadata/identity/oauth2/token?...   IMDS token (pods)
//	GET /host/token/?...                      token for a named pod (node only)
//	GET /healthz, /readyz, /metrics
//
// Anything else (other paths, backslashes, percent-encoding, case variants,
// doubled slashes, dot segments, parameters, a trailing slash on the token
// path, absolute-form or authority-form targets) is answered 404 in IMDS's
// error shape, and nothing is ever forwarded to the real IMDS.
//
// The token path is served without a trailing slash only. IMDS's REST
// specification, azidentity, MSAL (Go, .NET, Python, JavaScript) and adal
// all use /metadata/identity/oauth2/token; aad-pod-identity also routed
// ".../token/", which only its own sample scripts used, and those send
// neither the Metadata header nor api-version, so they would be refused
// anyway. Methods other than GET (HEAD included: IMDS documents GET only)
// get 405.
//
// A request passes, in order: route; the Metadata header, exactly "true"
// (as IMDS's specification and every SDK send it; the emulator's IMDS is
// just as strict); no X-Forwarded-For; GET; query parameters each at most
// once; api-version (a date, 2018-02-01 or later); resource; at most one of
// client_id, object_id, msi_res_id, mi_res_id. Then the pod is found by
// source address (404 if none: IMDS clients retry 404, which covers a pod
// whose address the index has not seen yet), its bound identities are
// listed, the requested one must be among them (403, without naming any
// other), and the token comes from the TokenSource. Until the pod index
// and the bindings have synced (Config.Synced), a request that passed the
// checks is answered 503 with Retry-After instead of looking anything up:
// a view of the cluster that is still filling in would refuse bound pods.
package imds

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/pkg/tokensource"
)

// The routes.
const (
	TokenPath     = tokensource.TokenPath
	HostTokenPath = podauth.HostTokenPath
	HealthzPath   = "/healthz"
	ReadyzPath    = "/readyz"
	MetricsPath   = "/metrics"
)

// Config configures a Server.
type Config struct {
	// Pods finds the calling pod. Required.
	Pods PodFinder
	// Bindings lists a pod's identities. Required.
	Bindings Bindings
	// Tokens serves tokens, normally tokensource.Cached. Required.
	Tokens TokenSource
	// Ready reports whether the server may take traffic (informers synced,
	// iptables rules installed), for /readyz; nil is always ready.
	Ready func() error
	// Synced reports whether Pods and Bindings hold the cluster's state:
	// every informer's initial list applied. Until it does, token requests
	// that pass validation are answered 503 with Retry-After, which every
	// IMDS client retries, rather than 404 or 403 from a partial view (the
	// Azure SDKs never retry 403). nil is always synced.
	Synced func() bool
	// Registry receives the server's metrics and is served on /metrics;
	// nil uses a private registry.
	Registry *prometheus.Registry
	// CacheStats, when set, exports the token cache's counters (hits,
	// misses, upstream calls and errors); tokensource.Cached.Stats fits.
	CacheStats func() tokencache.Stats
	// HostAddrs are addresses, besides loopback, that /host/token/ treats as
	// the node itself. Only list addresses no pod can send from.
	HostAddrs []netip.Addr
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// Instance, when set, forwards /metadata/instance (and its sub-paths)
	// to the node's IMDS; when nil they are refused like any unknown path.
	Instance *InstanceProxy
}

// Server answers nmi's HTTP requests. It is safe for concurrent use.
type Server struct {
	pods      PodFinder
	bindings  Bindings
	tokens    TokenSource
	ready     func() error
	synced    func() bool
	hostAddrs []netip.Addr
	instance  *InstanceProxy
	now       func() time.Time
	metrics   *metrics
	promh     http.Handler

	// bufs holds response buffers (*[]byte) for reuse.
	bufs sync.Pool
	// lengths holds the token answers' Content-Length values.
	lengths lengthHeaders
	// answers holds the encoded token answers being served.
	answers answerMemo
	// values holds the decoded form of escaped query values.
	values valueMemo
	// Header values, shared by every response and never modified.
	ctJSON, ctText, allowGet, retryAfter, connClose []string
}

var _ http.Handler = (*Server)(nil)

// New returns a Server.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Pods == nil:
		return nil, errors.New("imds: Config.Pods is required")
	case cfg.Bindings == nil:
		return nil, errors.New("imds: Config.Bindings is required")
	case cfg.Tokens == nil:
		return nil, errors.New("imds: Config.Tokens is required")
	}
	if cfg.Ready == nil {
		cfg.Ready = func() error { return nil }
	}
	if cfg.Synced == nil {
		cfg.Synced = func() bool { return true }
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(cfg.Registry, cfg.CacheStats)
	if err != nil {
		return nil, err
	}
	s := &Server{
		pods:       cfg.Pods,
		bindings:   cfg.Bindings,
		tokens:     cfg.Tokens,
		ready:      cfg.Ready,
		synced:     cfg.Synced,
		hostAddrs:  append([]netip.Addr(nil), cfg.HostAddrs...),
		instance:   cfg.Instance,
		now:        cfg.Now,
		metrics:    m,
		promh:      promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}),
		ctJSON:     []string{"application/json; charset=utf-8"},
		ctText:     []string{"text/plain; charset=utf-8"},
		allowGet:   []string{http.MethodGet},
		retryAfter: []string{"1"},
		connClose:  []string{"close"},
	}
	s.bufs.New = func() any { b := make([]byte, 0, 4096); return &b }
	return s, nil
}

// HTTPServer returns an http.Server for s on addr with the settings nmi
// needs: timeouts, a small header limit, no built-in "OPTIONS *" answer
// (everything goes through ServeHTTP), and the pod interface of connections
// that implement PodLinker passed on to PodFinder.PodByIP. Its write
// timeout outlasts tokencache's default upstream timeout.
func (s *Server) HTTPServer(addr string) *http.Server {
	return &http.Server{
		Addr:                         addr,
		Handler:                      s,
		ReadHeaderTimeout:            5 * time.Second,
		ReadTimeout:                  10 * time.Second,
		WriteTimeout:                 45 * time.Second,
		IdleTimeout:                  90 * time.Second,
		MaxHeaderBytes:               16 << 10,
		DisableGeneralOptionsHandler: true,
		// Every request's context carries a logger naming the listener,
		// which the handlers below log with (klog.FromContext); it is built
		// once per listener, not per request.
		BaseContext: func(net.Listener) context.Context {
			return klog.NewContext(context.Background(), klog.Background().WithValues("listener", addr))
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pl, ok := c.(PodLinker); ok {
				return context.WithValue(ctx, podLinkKey{}, pl.PodLink())
			}
			return ctx
		},
	}
}

// podLinkKey is the context key of a connection's pod interface index.
type podLinkKey struct{}

// podLink returns the pod interface index of the connection r came on, 0
// when its listener does not know.
func podLink(r *http.Request) int {
	link, _ := r.Context().Value(podLinkKey{}).(int)
	return link
}

// Restrict returns a handler that serves only the named routes (TokenPath,
// HostTokenPath, ...) and answers every other request target 404, exactly
// as it answers an unknown path. nmi serves pods and the node on separate
// listeners: the address pods are sent to carries only TokenPath, so that
// no pod can reach /host/token/ or /metrics at all, whatever its address.
func (s *Server) Restrict(routes ...string) http.Handler {
	allowed := make(map[string]bool, len(routes))
	for _, r := range routes {
		allowed[r] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path, _, _ := strings.Cut(r.RequestURI, "?")
		if !allowed[path] && !(allowed[InstancePath] && isInstancePath(path)) {
			s.closeIfFramed(w, r)
			start := s.now()
			status := s.writeError(w, &requestError{status: http.StatusNotFound, code: "not_found", desc: descNotFound})
			s.metrics.observe(epUnknown, status, s.now().Sub(start))
			return
		}
		s.ServeHTTP(w, r)
	})
}

// ServeHTTP routes a request on its raw request target.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	s.closeIfFramed(w, r)
	path, rawQuery, _ := strings.Cut(r.RequestURI, "?")
	var (
		ep     endpoint
		status int
		// answered is the time a token answer is dated (zero for other
		// answers). That clock read, taken once the token is in hand, also
		// ends the request for its latency: what follows is copying the
		// answer into the connection's buffer.
		answered time.Time
	)
	switch path {
	case TokenPath:
		ep, status = epToken, s.serveToken(w, r, rawQuery, &answered)
	case HostTokenPath:
		ep, status = epHostToken, s.serveHostToken(w, r, rawQuery, &answered)
	case HealthzPath:
		ep, status = epHealthz, s.serveHealth(w, r, nil)
	case ReadyzPath:
		ep, status = epReadyz, s.serveHealth(w, r, s.ready)
	case MetricsPath:
		ep, status = epMetrics, s.serveMetrics(w, r)
	default:
		if s.instance != nil && isInstancePath(path) {
			ep, status = epInstance, s.serveInstance(w, r, path, rawQuery)
			break
		}
		ep, status = epUnknown, s.writeError(w, &requestError{status: http.StatusNotFound, code: "not_found", desc: descNotFound})
	}
	end := answered
	if end.IsZero() {
		end = s.now()
	}
	s.metrics.observe(ep, status, end.Sub(start))
}

// closeIfFramed makes the answer to r the connection's last when r came
// with a body or with framing that could be read two ways. RFC 9112 section
// 6.1 says a server must close the connection after a request with both
// Content-Length and Transfer-Encoding, and section 6.3 the same for an
// HTTP/1.0 request with Transfer-Encoding. net/http drops the losing header
// before the handler runs (Content-Length for a chunked HTTP/1.1 request,
// Transfer-Encoding for HTTP/1.0) and would then read on, so nmi closes
// after every request that has a body at all (no endpoint takes one) and
// after every HTTP/1.0 request. Refusals of malformed requests close the
// connection in writeError. Either way nothing that follows on the wire is
// ever parsed as another request.
func (s *Server) closeIfFramed(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 || !r.ProtoAtLeast(1, 1) {
		w.Header()["Connection"] = s.connClose
	}
}

// serveHealth answers /healthz (check nil) and /readyz.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request, check func() error) int {
	if r.Method != http.MethodGet {
		return s.writeError(w, methodNotAllowed())
	}
	status, body := http.StatusOK, "ok\n"
	if check != nil {
		if err := check(); err != nil {
			klog.FromContext(r.Context()).V(2).Info("not ready", "err", err)
			status, body = http.StatusServiceUnavailable, "not ready\n"
			w.Header()["Connection"] = s.connClose
		}
	}
	w.Header()["Content-Type"] = s.ctText
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
	return status
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet {
		return s.writeError(w, methodNotAllowed())
	}
	s.promh.ServeHTTP(w, r)
	return http.StatusOK
}

func methodNotAllowed() *requestError {
	return &requestError{status: http.StatusMethodNotAllowed, code: "invalid_request", desc: descOnlyGet}
}

// writeError answers e in IMDS's error shape and returns its status. It is
// the connection's last answer: the server closes it, so that a request that
// was refused for its target, framing, method, headers or query cannot leave
// bytes behind that are then read as the next request.
func (s *Server) writeError(w http.ResponseWriter, e *requestError) int {
	w.Header()["Connection"] = s.connClose
	return s.writeRefusal(w, e)
}

// writeRefusal answers e, a refusal of a well-formed request (no body,
// HTTP/1.1, a valid query: unbound identity, unknown pod, not ready yet, an
// upstream failure), and keeps the connection as a 200 would, so that a
// client's retry costs no new connection and no new conntrack entry. A
// request with a body or HTTP/1.0 still gets its close from closeIfFramed.
func (s *Server) writeRefusal(w http.ResponseWriter, e *requestError) int {
	h := w.Header()
	h["Content-Type"] = s.ctJSON
	switch e.status {
	case http.StatusMethodNotAllowed:
		h["Allow"] = s.allowGet
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		h["Retry-After"] = s.retryAfter
	}
	w.WriteHeader(e.status)
	bp := s.bufs.Get().(*[]byte)
	b := appendError((*bp)[:0], e.code, e.desc)
	_, _ = w.Write(b)
	*bp = b
	s.bufs.Put(bp)
	return e.status
}

// writeToken answers 200 with a token: IMDS's shape, or /host/token/'s.
// It returns the time the answer is dated: the clock is read after the
// token came, so that expires_in is exact even after a wait for upstream.
func (s *Server) writeToken(w http.ResponseWriter, host bool, tok tokencache.Token, resource, clientID string) time.Time {
	now := s.now()
	a := s.answers.answer(tok, resource, clientID, host, now)
	bp := s.bufs.Get().(*[]byte)
	b := a.appendTo((*bp)[:0], tok.ExpiresOn, now)
	h := w.Header()
	h["Content-Type"] = s.ctJSON
	// IMDS sends Content-Length. net/http only adds it for a body that
	// fits its 2 KB buffer, and Entra ID's access tokens alone are 1.5-2.5
	// KB: without it, many answers would go out chunked.
	h["Content-Length"] = s.lengths.header(len(b))
	_, _ = w.Write(b)
	*bp = b
	s.bufs.Put(bp)
	return now
}

// lengthHeaders hands out Content-Length header values, each built once:
// a node's answers come in a handful of lengths (its tokens', give or take
// a digit of expires_in), and the hot path allocates nothing for them.
// It is safe for concurrent use; the zero value is ready.
type lengthHeaders struct {
	mu     sync.RWMutex
	values map[int][]string
}

// maxLengthHeaders bounds the values kept; beyond it each is built anew.
const maxLengthHeaders = 256

// header returns the header value for n. Callers must not modify it.
func (l *lengthHeaders) header(n int) []string {
	l.mu.RLock()
	v, ok := l.values[n]
	l.mu.RUnlock()
	if ok {
		return v
	}
	v = []string{strconv.Itoa(n)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.values == nil {
		l.values = make(map[int][]string)
	}
	if len(l.values) < maxLengthHeaders {
		l.values[n] = v
	}
	return v
}

// sourceAddr is the request's source address, unmapped from IPv4-in-IPv6.
func sourceAddr(r *http.Request) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		// Not every transport gives host:port (e.g. a unix socket).
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(host)
		return a.Unmap(), err == nil
	}
	return ap.Addr().Unmap(), true
}

// fromHost reports whether a request comes from the node itself.
func (s *Server) fromHost(r *http.Request) bool {
	a, ok := sourceAddr(r)
	if !ok {
		return false
	}
	if a.IsLoopback() {
		return true
	}
	for _, h := range s.hostAddrs {
		if h.Unmap() == a {
			return true
		}
	}
	return false
}
