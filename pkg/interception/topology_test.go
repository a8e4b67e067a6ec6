package interception

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kvnode/kvnode/test/testenv"
)

// The test layout, a routed CNI in miniature (like the ptp plugin):
//
//   - The node is the test process's own network namespace: testenv's
//     private one, with only lo at first, so every rule the tests install
//     lives and dies there and go-iptables' iptables runs there as is.
//   - nmi's address 10.200.0.1 is on the node's lo.
//   - Each pod is an unnamed network namespace (held by a file descriptor,
//     so it vanishes with the test process even if cleanup never runs),
//     joined to the node by a veth pair: "eth0" with the pod's /32 on the
//     pod side, "kvpodN" on the node with the gateway 10.244.0.1/32 and a
//     /32 route to the pod.
//   - Code that must run in a pod (dialing) runs on a goroutine locked to a
//     thread that enters the pod's namespace and is never unlocked, so the
//     thread ends with the goroutine instead of going back to the scheduler
//     in the wrong namespace. Only the socket is created there; the
//     connection is then used from any goroutine.
const (
	testNMIPort = 2579
	gatewayIP   = "10.244.0.1"
)

var testNMIAddr = netip.MustParseAddr("10.200.0.1")

type testPod struct {
	name   string
	ns     netns.NsHandle
	hostIf string
	ip     netip.Addr
	nl     *netlink.Handle
}

// requireIsolated fails unless the test runs in testenv's private network
// namespace, never the machine's.
func requireIsolated(t *testing.T) {
	t.Helper()
	testenv.RequireNetns(t)
	self, err := os.Readlink("/proc/self/ns/net")
	require.NoError(t, err)
	parent, err := os.Readlink(machineNetns())
	require.NoError(t, err)
	if parent == self {
		t.Fatalf("refusing to run: the test process is in the machine's network namespace %s", self)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("skipped: iptables is missing; run hack/install-deps.sh")
	}
}

var (
	saveComment  = regexp.MustCompile(`(?m)^#.*\n`)
	saveCounters = regexp.MustCompile(`\[\d+:\d+\]`)
)

// machineNetns is the network namespace testenv.Main started in: that of
// the parent process, which re-executed the tests in a private namespace.
// (pid 1's is not readable in this sandbox.)
func machineNetns() string {
	return fmt.Sprintf("/proc/%d/ns/net", os.Getppid())
}

// rootIptablesSave returns iptables-save of the machine's network namespace,
// read only, without comments and counters.
func rootIptablesSave(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+machineNetns(), "iptables-save").CombinedOutput()
	require.NoError(t, err, "iptables-save in the machine's namespace: %s", out)
	s := saveComment.ReplaceAllString(string(out), "")
	return saveCounters.ReplaceAllString(s, "")
}

// setupNode prepares the node (nmi's address on lo), n pods, and checks at
// cleanup that the machine's own iptables did not change and the node has
// no rule of ours left.
func setupNode(t *testing.T, n int) []*testPod {
	t.Helper()
	requireIsolated(t)
	before := rootIptablesSave(t)
	t.Cleanup(func() {
		if after := rootIptablesSave(t); after != before {
			t.Errorf("the machine's iptables changed during the test:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})

	lo, err := netlink.LinkByName("lo")
	require.NoError(t, err)
	nmi := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(testNMIAddr.AsSlice()), Mask: net.CIDRMask(32, 32)}}
	require.NoError(t, netlink.AddrAdd(lo, nmi))
	t.Cleanup(func() { _ = netlink.AddrDel(lo, nmi) })

	pods := make([]*testPod, n)
	for i := range pods {
		pods[i] = addPod(t, i)
	}
	return pods
}

// newNetns returns a new, unnamed network namespace.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		h, err := netns.Get()
		ch <- result{h, err}
	}()
	r := <-ch
	require.NoError(t, r.err, "create a network namespace")
	t.Cleanup(func() { r.h.Close() })
	return r.h
}

// inNetns runs fn on a thread in namespace ns. fn should only create
// sockets; the thread is discarded afterwards.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, see the layout comment
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func hostRoute(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

// addPod creates pod i with address 10.244.0.(i+2).
func addPod(t *testing.T, i int) *testPod {
	t.Helper()
	p := &testPod{
		name:   fmt.Sprintf("pod%c", 'a'+i),
		ns:     newNetns(t),
		hostIf: fmt.Sprintf("kvpod%d", i),
		ip:     netip.AddrFrom4([4]byte{10, 244, 0, byte(i + 2)}),
	}
	var err error
	p.nl, err = netlink.NewHandleAt(p.ns)
	require.NoError(t, err)
	t.Cleanup(p.nl.Close)

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.ns))}
	require.NoError(t, netlink.LinkAdd(veth), "add veth %s", p.hostIf)
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	host, err := netlink.LinkByName(p.hostIf)
	require.NoError(t, err)
	gw := netip.MustParseAddr(gatewayIP)
	require.NoError(t, netlink.AddrAdd(host, &netlink.Addr{IPNet: hostRoute(gw)}))
	require.NoError(t, netlink.LinkSetUp(host))
	require.NoError(t, netlink.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: hostRoute(p.ip), Scope: netlink.SCOPE_LINK}))

	lo, err := p.nl.LinkByName("lo")
	require.NoError(t, err)
	require.NoError(t, p.nl.LinkSetUp(lo))
	eth0, err := p.nl.LinkByName("eth0")
	require.NoError(t, err)
	require.NoError(t, p.nl.AddrAdd(eth0, &netlink.Addr{IPNet: hostRoute(p.ip)}))
	require.NoError(t, p.nl.LinkSetUp(eth0))
	require.NoError(t, p.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: hostRoute(gw), Scope: netlink.SCOPE_LINK}))
	require.NoError(t, p.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice())}))

	// The kernel activates a veth's queue only when it processes the link
	// event, up to a second later; until then packets are dropped, and a
	// dial with a one-second timeout would fail.
	for _, h := range []struct {
		nl   *netlink.Handle
		name string
	}{{nil, p.hostIf}, {p.nl, "eth0"}} {
		require.Eventually(t, func() bool {
			var l netlink.Link
			var err error
			if h.nl == nil {
				l, err = netlink.LinkByName(h.name)
			} else {
				l, err = h.nl.LinkByName(h.name)
			}
			return err == nil && l.Attrs().OperState == netlink.OperUp
		}, 5*time.Second, 10*time.Millisecond, "%s of %s is not up", h.name, p.name)
	}
	return p
}

// dial opens a TCP connection from the pod, from address from when valid.
func (p *testPod) dial(ctx context.Context, addr string, from netip.Addr) (net.Conn, error) {
	d := net.Dialer{Timeout: time.Second}
	if from.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: net.IP(from.AsSlice())}
	}
	var c net.Conn
	err := inNetns(p.ns, func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// get sends GET path to the metadata endpoint from the pod on a new
// connection and returns the body.
func (p *testPod) get(t *testing.T, path string) (string, error) {
	t.Helper()
	c, err := p.dial(t.Context(), net.JoinHostPort(MetadataIP, "80"), netip.Addr{})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return roundTrip(c, path)
}

// roundTrip sends one keep-alive HTTP request on c and reads the answer.
func roundTrip(c net.Conn, path string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nMetadata: true\r\n\r\n", path, MetadataIP); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, err = bufio.NewReader(resp.Body).WriteTo(&b)
	return b.String(), err
}

// countingServer is a stand-in for nmi (or the real metadata service): it
// answers every request with "<name> <client address>" and counts them.
type countingServer struct {
	name string
	mu   sync.Mutex
	from []string
}

func startServer(t *testing.T, name string, addr netip.AddrPort) *countingServer {
	t.Helper()
	s := &countingServer{name: name}
	ln, err := net.Listen("tcp", addr.String())
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		s.mu.Lock()
		s.from = append(s.from, host)
		s.mu.Unlock()
		fmt.Fprintf(w, "%s %s", s.name, host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

// requests returns the client addresses of the requests served so far.
func (s *countingServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.from...)
}

// ipt runs iptables in the node namespace, as a test's saboteur or reader.
func ipt(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	require.NoError(t, err, "iptables %s: %s", strings.Join(args, " "), out)
	return string(out)
}

// packets returns the packet counter of rule number n (1-based) of chain.
func packets(t *testing.T, table, chain string, n int) int {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(ipt(t, "-t", table, "-L", chain, "-n", "-v", "-x", "--line-numbers")), "\n")
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		if f[0] == strconv.Itoa(n) {
			v, err := strconv.Atoi(f[1])
			require.NoError(t, err)
			return v
		}
	}
	t.Fatalf("no rule %d in %s chain %s: %q", n, table, chain, lines)
	return 0
}

// newInterceptor returns an Interceptor for the test node that is removed at
// cleanup, after which the node must hold no chain of ours.
func newInterceptor(t *testing.T, cfg Config) *Interceptor {
	t.Helper()
	if !cfg.Address.IsValid() {
		cfg.Address = testNMIAddr
	}
	if cfg.Port == 0 {
		cfg.Port = testNMIPort
	}
	in, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := in.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
		save, err := exec.Command("iptables-save").CombinedOutput()
		if err != nil {
			t.Errorf("iptables-save: %v: %s", err, save)
		}
		if strings.Contains(string(save), "KVNODE") {
			t.Errorf("rules left after Remove:\n%s", save)
		}
	})
	return in
}
