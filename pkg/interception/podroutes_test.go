package interception

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
)

// addBridge adds a bridge (not a veth) to the node with a /32 route
// through it, as a node's own bridge or service interface might have.
func addBridge(t *testing.T, name string, route netip.Addr) {
	t.Helper()
	d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	require.NoError(t, netlink.LinkAdd(d))
	t.Cleanup(func() { _ = netlink.LinkDel(d) })
	require.NoError(t, netlink.LinkSetUp(d))
	link, err := netlink.LinkByName(name)
	require.NoError(t, err)
	require.NoError(t, netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostRoute(route), Scope: netlink.SCOPE_LINK}))
}

// TestInterceptionRootPodInterfacesFromRoutes: the node's pod interfaces
// are its /32 routes through veths, and nothing else: not a /32 through
// another kind of interface, not a wider route through a pod's veth.
func TestInterceptionRootPodInterfacesFromRoutes(t *testing.T) {
	pods := setupNode(t, 2)
	addBridge(t, "kvbr0", netip.MustParseAddr("10.96.0.10"))
	veth, err := netlink.LinkByName(pods[0].hostIf)
	require.NoError(t, err)
	_, wide, _ := net.ParseCIDR("10.245.0.0/24")
	require.NoError(t, netlink.RouteAdd(&netlink.Route{LinkIndex: veth.Attrs().Index, Dst: wide, Scope: netlink.SCOPE_LINK}))

	got, err := PodInterfaces()
	require.NoError(t, err)
	assert.Equal(t, []PodInterface{
		{Interface: pods[0].hostIf, IPs: []netip.Addr{pods[0].ip}},
		{Interface: pods[1].hostIf, IPs: []netip.Addr{pods[1].ip}},
	}, got)
}

// TestInterceptionRootWatchPodRoutesFeedsAntiSpoofing: the watcher installs
// a pod's anti-spoofing rule when its route appears and removes it when
// the route goes, without waiting for the resync.
func TestInterceptionRootWatchPodRoutesFeedsAntiSpoofing(t *testing.T) {
	pods := setupNode(t, 2)
	in := newInterceptor(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{}, 2)
	go func() { in.Run(ctx, time.Hour); done <- struct{}{} }()
	go func() { _ = WatchPodRoutes(ctx, in, time.Hour); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })

	rule := func(p *testPod) string { return "! -s " + p.ip.String() + "/32 -i " + p.hostIf + " -j DROP" }
	// Listing can fail while the watcher rewrites the chain: poll.
	rawRules := func() string {
		out, _ := exec.Command("iptables", "-w", "-t", "raw", "-S").CombinedOutput()
		return string(out)
	}
	require.Eventually(t, func() bool {
		r := rawRules()
		return strings.Contains(r, rule(pods[0])) && strings.Contains(r, rule(pods[1]))
	}, 10*time.Second, 20*time.Millisecond, "no anti-spoofing rules for the pods' veths")

	veth, err := netlink.LinkByName(pods[1].hostIf)
	require.NoError(t, err)
	require.NoError(t, netlink.LinkDel(veth))
	require.Eventually(t, func() bool { return !strings.Contains(rawRules(), rule(pods[1])) }, 10*time.Second, 20*time.Millisecond,
		"the rule of a deleted veth stayed")
	assert.Contains(t, rawRules(), rule(pods[0]))
}
