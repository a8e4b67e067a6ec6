package imds

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvnode/kvnode/pkg/podauth"

	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/test/testenv"
)

// The emulator tests run in testenv's loopback-only network namespace, so
// nothing can reach 169.254.169.254 from the machine.
func TestMain(m *testing.M) { testenv.Main(m) }

// fakePods is a PodFinder over fixed maps.
type fakePods struct {
	byIP   map[netip.Addr]podauth.Pod
	byName map[string]podauth.Pod
}

func newFakePods() *fakePods {
	return &fakePods{byIP: map[netip.Addr]podauth.Pod{}, byName: map[string]podauth.Pod{}}
}

func (f *fakePods) add(ip string, p podauth.Pod) {
	if ip != "" {
		f.byIP[netip.MustParseAddr(ip)] = p
	}
	f.byName[p.Namespace+"/"+p.Name] = p
}

func (f *fakePods) PodByIP(ip netip.Addr, _ int) (podauth.Pod, bool) {
	p, ok := f.byIP[ip]
	return p, ok
}
func (f *fakePods) PodByName(ns, name string) (podauth.Pod, bool) {
	p, ok := f.byName[ns+"/"+name]
	return p, ok
}

// fakeBindings binds identities to pods by namespace/name.
type fakeBindings map[string][]podauth.Identity

func (f fakeBindings) IdentitiesFor(p podauth.Pod) []podauth.Identity {
	return f[p.Namespace+"/"+p.Name]
}

// countingTokens is a TokenSource that issues a fixed token per identity and
// counts calls; err, when set, fails every call.
type countingTokens struct {
	mu    sync.Mutex
	err   error
	calls atomic.Int64
	exp   time.Time
	nbf   time.Time
}

func (c *countingTokens) Token(_ context.Context, _ podauth.Pod, id podauth.Identity, resource string) (tokencache.Token, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return tokencache.Token{}, c.err
	}
	return tokencache.Token{AccessToken: "tok-" + id.ClientID + "-" + resource, ExpiresOn: c.exp, NotBefore: c.nbf}, nil
}

func (c *countingTokens) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// The world the handler tests see: pods by address, their bindings.
const (
	podIP      = "10.244.1.5" // default/app, bound to idA
	multiIP    = "10.244.1.6" // default/multi, bound to idA and idC
	unboundIP  = "10.244.1.7" // default/lonely, bound to nothing
	strangerIP = "10.244.1.99"
	otherIP    = "10.244.2.8" // default/other, bound to idB
)

var (
	idA = podauth.Identity{ClientID: "aaaaaaaa-0000-0000-0000-00000000000a", ObjectID: "0a0a0a0a-0000-0000-0000-00000000000a",
		ResourceID: "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-a"}
	idB = podauth.Identity{ClientID: "bbbbbbbb-0000-0000-0000-00000000000b", ObjectID: "0b0b0b0b-0000-0000-0000-00000000000b",
		ResourceID: "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-b"}
	idC = podauth.Identity{ClientID: "cccccccc-0000-0000-0000-00000000000c"}
)

// fixedNow is the handler tests' clock: tokens expire an hour later.
var fixedNow = time.Unix(1767323045, 0)

// testWorld builds a Server over the fake pods and bindings.
type testWorld struct {
	srv    *Server
	logs   *syncBuffer // what the server logged while serving
	tokens *countingTokens
	reg    *prometheus.Registry
}

func newTestWorld(t testing.TB, now func() time.Time) *testWorld {
	t.Helper()
	pods := newFakePods()
	pods.add(podIP, podauth.Pod{Namespace: "default", Name: "app", ServiceAccount: "app"})
	pods.add(multiIP, podauth.Pod{Namespace: "default", Name: "multi", ServiceAccount: "multi"})
	pods.add(unboundIP, podauth.Pod{Namespace: "default", Name: "lonely", ServiceAccount: "lonely"})
	pods.add(otherIP, podauth.Pod{Namespace: "default", Name: "other", ServiceAccount: "other"})
	bindings := fakeBindings{
		"default/app":   {idA},
		"default/multi": {idA, idC},
		"default/other": {idB},
	}
	if now == nil {
		now = func() time.Time { return fixedNow }
	}
	tokens := &countingTokens{exp: now().Add(time.Hour), nbf: now().Add(-5 * time.Minute)}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{Pods: pods, Bindings: bindings, Tokens: tokens, Registry: reg, Now: now})
	require.NoError(t, err)
	return &testWorld{srv: srv, tokens: tokens, reg: reg}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) WriteString(v string) {
	s.mu.Lock()
	s.b.WriteString(v)
	s.mu.Unlock()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// remoteListener makes every accepted connection report remote as its
// source address: what nmi sees of a pod's connection after DNAT.
type remoteListener struct {
	net.Listener
	remote net.Addr
}

func (l remoteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return remoteConn{Conn: c, remote: l.remote}, nil
}

type remoteConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteConn) RemoteAddr() net.Addr { return c.remote }

// serve runs w's server on loopback. For each "as" address it adds a
// listener whose connections appear to come from that address; "" is the
// real loopback source (the node itself). It returns the listen addresses
// by source.
func (w *testWorld) serve(t testing.TB, as ...string) map[string]string {
	t.Helper()
	hs := w.srv.HTTPServer("")
	if w.logs == nil {
		w.logs = &syncBuffer{}
	}
	logger := funcr.New(func(prefix, args string) { w.logs.WriteString(prefix + args + "\n") }, funcr.Options{Verbosity: 10})
	hs.BaseContext = func(net.Listener) context.Context { return klog.NewContext(context.Background(), logger) }
	addrs := map[string]string{}
	for _, a := range as {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addrs[a] = ln.Addr().String()
		var l net.Listener = ln
		if a != "" {
			l = remoteListener{Listener: ln, remote: &net.TCPAddr{IP: net.ParseIP(a), Port: 40000}}
		}
		go func() { _ = hs.Serve(l) }()
	}
	t.Cleanup(func() { _ = hs.Close() })
	return addrs
}
