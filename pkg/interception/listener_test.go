package interception

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
)

// The uplink: a network namespace joined to the node by a veth pair, the
// node's side kvuplink with 192.168.77.2/24 and the node's default route
// via the network's 192.168.77.1. The node's replies to any address it has
// no route of its own for leave through it, as through a node's uplink.
var (
	uplinkNodeIP = netip.MustParseAddr("192.168.77.2")
	uplinkHostIP = netip.MustParseAddr("192.168.77.1")
)

func addUplink(t *testing.T) *testPod {
	t.Helper()
	h := &testPod{name: "uplink", ns: newNetns(t), hostIf: "kvuplink", ip: uplinkHostIP}
	var err error
	h.nl, err = netlink.NewHandleAt(h.ns)
	require.NoError(t, err)
	t.Cleanup(h.nl.Close)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(h.ns))}
	require.NoError(t, netlink.LinkAdd(veth))
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	node, err := netlink.LinkByName(h.hostIf)
	require.NoError(t, err)
	subnet := func(a netip.Addr) *net.IPNet { return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(24, 32)} }
	require.NoError(t, netlink.AddrAdd(node, &netlink.Addr{IPNet: subnet(uplinkNodeIP)}))
	require.NoError(t, netlink.LinkSetUp(node))
	require.NoError(t, netlink.RouteAdd(&netlink.Route{LinkIndex: node.Attrs().Index, Gw: net.IP(uplinkHostIP.AsSlice())}))

	lo, err := h.nl.LinkByName("lo")
	require.NoError(t, err)
	require.NoError(t, h.nl.LinkSetUp(lo))
	eth0, err := h.nl.LinkByName("eth0")
	require.NoError(t, err)
	require.NoError(t, h.nl.AddrAdd(eth0, &netlink.Addr{IPNet: subnet(uplinkHostIP)}))
	require.NoError(t, h.nl.LinkSetUp(eth0))
	require.NoError(t, h.nl.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(uplinkNodeIP.AsSlice())}))
	require.Eventually(t, func() bool {
		l, err := h.nl.LinkByName("eth0")
		return err == nil && l.Attrs().OperState == netlink.OperUp
	}, 5*time.Second, 10*time.Millisecond)
	return h
}

// serveLinks accepts connections from ln and answers each with the pod
// interface index it carries, then closes it.
func serveLinks(t *testing.T, ln *Listener) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "link %d\n", c.(*PodConn).PodLink())
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
}

// ask connects from h (from address from when valid) to addr and returns
// what the server wrote before closing, or the dial error.
func ask(t *testing.T, h *testPod, addr string, from netip.Addr) (string, error) {
	t.Helper()
	c, err := h.dial(t.Context(), addr, from)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil && !strings.Contains(err.Error(), "connection reset") {
		return string(b), err
	}
	return string(b), nil
}

func linkIndex(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	require.NoError(t, err)
	return l.Attrs().Index
}

// TestInterceptionRootListenerAdmitsOnlyPodsThroughTheRule: the listener
// serves intercepted connections from a pod's own veth, with that veth's
// index, and closes unread every connection made to nmi's address
// directly, every one from the uplink, and one from a released pod
// address, which a host on the uplink can use once the pod's /32 route is
// gone (the handshake then completes through the default route).
func TestInterceptionRootListenerAdmitsOnlyPodsThroughTheRule(t *testing.T) {
	pods := setupNode(t, 2)
	uplink := addUplink(t)
	in := newInterceptor(t, Config{DisableRawRules: true})
	require.NoError(t, in.Reconcile(t.Context()))
	routes, err := NewPodRoutes(PodRoutesConfig{Source: testNMIAddr})
	require.NoError(t, err)
	t.Cleanup(routes.Close)
	nmiAddr := netip.AddrPortFrom(testNMIAddr, testNMIPort).String()
	raw, err := net.Listen("tcp4", nmiAddr)
	require.NoError(t, err)
	ln := NewListener(raw, routes)
	serveLinks(t, ln)
	metadata := net.JoinHostPort(MetadataIP, strconv.Itoa(MetadataPort))
	admitted := func(p *testPod) string { return fmt.Sprintf("link %d\n", linkIndex(t, p.hostIf)) }

	got, err := ask(t, pods[0], metadata, netip.Addr{})
	require.NoError(t, err)
	assert.Equal(t, admitted(pods[0]), got, "a pod through the rule is served with its veth")

	for _, tc := range []struct {
		name string
		from *testPod
		addr string
		src  netip.Addr
	}{
		{"pod to nmi's address directly", pods[0], nmiAddr, netip.Addr{}},
		{"uplink host through the rule", uplink, metadata, netip.Addr{}},
		{"uplink host to nmi's address directly", uplink, nmiAddr, netip.Addr{}},
	} {
		got, err := ask(t, tc.from, tc.addr, tc.src)
		require.NoError(t, err, tc.name)
		assert.Empty(t, got, "%s: the connection must be closed unread", tc.name)
	}

	// Pod b's network goes away; a host on the uplink takes its address.
	released := pods[1].ip
	oldLink, ok := routes.PodLink(released)
	require.True(t, ok)
	require.NoError(t, netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pods[1].hostIf}}))
	_, ok = routes.PodLink(released)
	assert.False(t, ok, "a released address is no pod's")
	eth0, err := uplink.nl.LinkByName("eth0")
	require.NoError(t, err)
	require.NoError(t, uplink.nl.AddrAdd(eth0, &netlink.Addr{IPNet: hostRoute(released)}))
	for _, addr := range []string{metadata, nmiAddr} {
		got, err := ask(t, uplink, addr, released)
		require.NoError(t, err, "the handshake completes through the uplink once the pod's route is gone")
		assert.Empty(t, got, "a released pod address from the uplink to %s must be closed unread", addr)
	}
	assert.Equal(t, 3.0, testutil.ToFloat64(ln.notIntercepted))
	assert.Equal(t, 2.0, testutil.ToFloat64(ln.notFromPod))

	// A new sandbox gets the released address: served, with its own veth.
	require.NoError(t, uplink.nl.AddrDel(eth0, &netlink.Addr{IPNet: hostRoute(released)}))
	fresh := addPod(t, 1)
	require.Equal(t, released, fresh.ip)
	got, err = ask(t, fresh, metadata, netip.Addr{})
	require.NoError(t, err)
	assert.Equal(t, admitted(fresh), got)
	assert.NotEqual(t, fmt.Sprintf("link %d\n", oldLink), got, "a new veth, a new index")
}

// TestInterceptionRootPodLink: only an address's own /32 through a veth
// (with the prefix) is a pod interface.
func TestInterceptionRootPodLink(t *testing.T) {
	pods := setupNode(t, 1)
	addUplink(t)
	addBridge(t, "kvbr0", netip.MustParseAddr("10.96.0.10"))
	routes, err := NewPodRoutes(PodRoutesConfig{Source: testNMIAddr})
	require.NoError(t, err)
	t.Cleanup(routes.Close)
	cali, err := NewPodRoutes(PodRoutesConfig{InterfacePrefix: "cali", Source: testNMIAddr})
	require.NoError(t, err)
	t.Cleanup(cali.Close)

	link, ok := routes.PodLink(pods[0].ip)
	assert.True(t, ok)
	assert.Equal(t, linkIndex(t, pods[0].hostIf), link)
	link, ok = routes.PodLink(netip.MustParseAddr("::ffff:" + pods[0].ip.String()))
	assert.True(t, ok, "IPv4-mapped")
	assert.Equal(t, linkIndex(t, pods[0].hostIf), link)
	for _, tc := range []struct {
		name   string
		routes *PodRoutes
		ip     string
	}{
		{"veth without the prefix", cali, pods[0].ip.String()},
		{"a /32 through a bridge", routes, "10.96.0.10"},
		{"the uplink's subnet", routes, uplinkHostIP.String()},
		{"the default route", routes, "10.244.9.9"},
		{"nmi's own address", routes, testNMIAddr.String()},
		{"IPv6", routes, "fd00::1"},
	} {
		_, ok := tc.routes.PodLink(netip.MustParseAddr(tc.ip))
		assert.False(t, ok, tc.name)
	}
}
