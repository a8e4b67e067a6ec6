package interception

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m)
}

const tokenPath = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"

// wantNAT is the nat chain as iptables -S prints it for the default config.
var wantNAT = []string{
	"-N KVNODE-NMI",
	"-A KVNODE-NMI -d 169.254.169.254/32 ! -i lo -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579",
	"-A KVNODE-NMI -j RETURN",
}

func listChain(t *testing.T, table, chain string) []string {
	t.Helper()
	return strings.Split(strings.TrimSpace(ipt(t, "-t", table, "-S", chain)), "\n")
}

func TestInterceptionRootPodRequestsReachNMIWithTheirOwnAddress(t *testing.T) {
	pods := setupNode(t, 3)
	nmi := startServer(t, "nmi", netip.AddrPortFrom(testNMIAddr, testNMIPort))
	in := newInterceptor(t, Config{})

	_, err := pods[0].get(t, tokenPath)
	require.Error(t, err, "before the rules, the node has no route to the metadata address")
	assert.False(t, in.Ready())

	require.NoError(t, in.Reconcile(t.Context()))
	assert.True(t, in.Ready())
	assert.Equal(t, wantNAT, listChain(t, "nat", "KVNODE-NMI"))
	assert.Contains(t, listChain(t, "nat", "PREROUTING"), "-A PREROUTING -j KVNODE-NMI")

	for _, p := range pods {
		body, err := p.get(t, tokenPath)
		require.NoError(t, err, p.name)
		assert.Equal(t, "nmi "+p.ip.String(), body, p.name)
	}
	assert.Equal(t, []string{"10.244.0.2", "10.244.0.3", "10.244.0.4"}, nmi.requests())

	// The node's own (host-network) request goes through OUTPUT, is not
	// intercepted, and fails at once: the node has no route there.
	start := time.Now()
	c, err := net.DialTimeout("tcp", MetadataIP+":80", 2*time.Second)
	if err == nil {
		c.Close()
	}
	require.Error(t, err, "the node's own request must not be intercepted")
	assert.Less(t, time.Since(start), time.Second)
	assert.Len(t, nmi.requests(), 3)

	// Nothing changed: Reconcile rewrites nothing (the DNAT rule keeps its
	// packet counter) and is cheap.
	dnatPackets := packets(t, "nat", "KVNODE-NMI", 1)
	require.Equal(t, 3, dnatPackets, "one new connection per pod")
	const rounds = 20
	start = time.Now()
	for range rounds {
		require.NoError(t, in.Reconcile(t.Context()))
	}
	t.Logf("Reconcile with nothing to change: %v each (mean of %d)", time.Since(start)/rounds, rounds)
	assert.Equal(t, dnatPackets, packets(t, "nat", "KVNODE-NMI", 1), "an unchanged rule was rewritten")

	require.NoError(t, in.Remove())
	assert.False(t, in.Ready())
	assert.NotContains(t, ipt(t, "-t", "nat", "-S"), "KVNODE")
	assert.NotContains(t, ipt(t, "-t", "raw", "-S"), "KVNODE")
	_, err = pods[0].get(t, tokenPath)
	require.Error(t, err, "after Remove, pods are no longer intercepted")
	assert.Len(t, nmi.requests(), 3)
}

func TestInterceptionRootRestrictedToPodInterfacesAndCIDR(t *testing.T) {
	pods := setupNode(t, 1)
	nmi := startServer(t, "nmi", netip.AddrPortFrom(testNMIAddr, testNMIPort))

	for _, tc := range []struct {
		name string
		cfg  Config
		rule string
		hit  bool
	}{
		{"prefix matches", Config{InterfacePrefix: "kvpod"},
			"-A KVNODE-NMI -d 169.254.169.254/32 -i kvpod+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579", true},
		{"prefix does not match", Config{InterfacePrefix: "cali"},
			"-A KVNODE-NMI -d 169.254.169.254/32 -i cali+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579", false},
		{"pod CIDR, unmasked", Config{PodCIDR: netip.MustParsePrefix("10.244.7.1/16")},
			"-A KVNODE-NMI -s 10.244.0.0/16 -d 169.254.169.254/32 ! -i lo -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579", true},
		{"other CIDR", Config{PodCIDR: netip.MustParsePrefix("10.10.0.0/16"), InterfacePrefix: "kvpod"},
			"-A KVNODE-NMI -s 10.10.0.0/16 -d 169.254.169.254/32 -i kvpod+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInterceptor(t, tc.cfg)
			for range 2 { // idempotent
				require.NoError(t, in.Reconcile(t.Context()))
				assert.Equal(t, []string{"-N KVNODE-NMI", tc.rule, "-A KVNODE-NMI -j RETURN"}, listChain(t, "nat", "KVNODE-NMI"))
			}
			n := len(nmi.requests())
			body, err := pods[0].get(t, tokenPath)
			if tc.hit {
				require.NoError(t, err)
				assert.Equal(t, "nmi 10.244.0.2", body)
				assert.Len(t, nmi.requests(), n+1)
			} else {
				require.Error(t, err)
				assert.Len(t, nmi.requests(), n)
			}
		})
	}
}

func TestInterceptionRootReconcileRepairs(t *testing.T) {
	pods := setupNode(t, 1)
	nmi := startServer(t, "nmi", netip.AddrPortFrom(testNMIAddr, testNMIPort))
	wantJump := "-A PREROUTING -j KVNODE-NMI"

	for _, tc := range []struct {
		name     string
		sabotage [][]string
		// broken: a pod's request no longer reaches nmi before the repair.
		broken bool
	}{
		{"deleted DNAT rule", [][]string{{"-t", "nat", "-D", "KVNODE-NMI", "1"}}, true},
		{"reordered chain", [][]string{{"-t", "nat", "-D", "KVNODE-NMI", "2"}, {"-t", "nat", "-I", "KVNODE-NMI", "1", "-j", "RETURN"}}, true},
		{"changed destination", [][]string{{"-t", "nat", "-R", "KVNODE-NMI", "1", "-d", MetadataIP, "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.200.0.1:9"}}, true},
		{"extra rule", [][]string{{"-t", "nat", "-A", "KVNODE-NMI", "-j", "ACCEPT"}}, false},
		{"missing jump", [][]string{{"-t", "nat", "-D", "PREROUTING", "-j", "KVNODE-NMI"}}, true},
		{"duplicate jump", [][]string{{"-t", "nat", "-A", "PREROUTING", "-j", "KVNODE-NMI"}}, false},
		{"chain deleted", [][]string{{"-t", "nat", "-D", "PREROUTING", "-j", "KVNODE-NMI"}, {"-t", "nat", "-F", "KVNODE-NMI"}, {"-t", "nat", "-X", "KVNODE-NMI"}}, true},
		{"raw jump deleted", [][]string{{"-t", "raw", "-D", "PREROUTING", "-j", "KVNODE-ANTISPOOF"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInterceptor(t, Config{})
			require.NoError(t, in.Reconcile(t.Context()))
			for _, s := range tc.sabotage {
				ipt(t, s...)
			}
			n := len(nmi.requests())
			_, err := pods[0].get(t, tokenPath)
			if tc.broken {
				require.Error(t, err, "the sabotage should break interception")
				require.Len(t, nmi.requests(), n)
			}

			require.NoError(t, in.Reconcile(t.Context()))
			assert.Equal(t, wantNAT, listChain(t, "nat", "KVNODE-NMI"))
			jumps := 0
			for _, r := range listChain(t, "nat", "PREROUTING") {
				if r == wantJump {
					jumps++
				}
			}
			assert.Equal(t, 1, jumps, "jumps to KVNODE-NMI")
			assert.Contains(t, listChain(t, "raw", "PREROUTING"), "-A PREROUTING -j KVNODE-ANTISPOOF")
			body, err := pods[0].get(t, tokenPath)
			require.NoError(t, err)
			assert.Equal(t, "nmi 10.244.0.2", body)
		})
	}
}

func TestInterceptionRootRunRepairsWhenTriggered(t *testing.T) {
	pods := setupNode(t, 1)
	startServer(t, "nmi", netip.AddrPortFrom(testNMIAddr, testNMIPort))
	in := newInterceptor(t, Config{})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); in.Run(ctx, time.Hour) }()
	t.Cleanup(func() { cancel(); <-done })

	require.Eventually(t, in.Ready, 5*time.Second, 10*time.Millisecond)
	ipt(t, "-t", "nat", "-D", "PREROUTING", "-j", "KVNODE-NMI")
	_, err := pods[0].get(t, tokenPath)
	require.Error(t, err)

	in.Trigger() // the hour-long tick is not what repairs it
	require.Eventually(t, func() bool {
		return strings.Contains(ipt(t, "-t", "nat", "-S", "PREROUTING"), "-j KVNODE-NMI")
	}, 5*time.Second, 10*time.Millisecond)
	body, err := pods[0].get(t, tokenPath)
	require.NoError(t, err)
	assert.Equal(t, "nmi 10.244.0.2", body)
}

// A connection opened to the real metadata service before the DNAT rule
// keeps going there (conntrack) unless its entry is deleted.
func TestInterceptionRootOpenConnectionsAreCutOver(t *testing.T) {
	pods := setupNode(t, 1)
	nmi := startServer(t, "nmi", netip.AddrPortFrom(testNMIAddr, testNMIPort))

	// The "real" metadata service lives on the node here, and conntrack is
	// on before any rule of ours, as on a real node (kube-proxy's rules).
	lo, err := netlink.LinkByName("lo")
	require.NoError(t, err)
	imdsAddr := &netlink.Addr{IPNet: hostRoute(netip.MustParseAddr(MetadataIP))}
	require.NoError(t, netlink.AddrAdd(lo, imdsAddr))
	t.Cleanup(func() { _ = netlink.AddrDel(lo, imdsAddr) })
	imds := startServer(t, "imds", netip.MustParseAddrPort(MetadataIP+":80"))
	ipt(t, "-t", "filter", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	t.Cleanup(func() {
		ipt(t, "-t", "filter", "-D", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
	})

	early, err := pods[0].dial(t.Context(), MetadataIP+":80", netip.Addr{})
	require.NoError(t, err)
	defer early.Close()
	body, err := roundTrip(early, tokenPath)
	require.NoError(t, err)
	require.Equal(t, "imds 10.244.0.2", body)

	// Without deleting the entry, a DNAT rule alone leaves it alone: the
	// open connection still reaches the real service, new ones reach nmi.
	manual := []string{"-t", "nat", "-I", "PREROUTING", "-d", MetadataIP + "/32", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.200.0.1:2579"}
	ipt(t, manual...)
	body, err = roundTrip(early, tokenPath)
	require.NoError(t, err)
	assert.Equal(t, "imds 10.244.0.2", body, "the open connection bypasses a bare DNAT rule")
	manual[2] = "-D"
	ipt(t, manual...)

	in := newInterceptor(t, Config{})
	require.NoError(t, in.Reconcile(t.Context()))
	_, err = roundTrip(early, tokenPath)
	require.Error(t, err, "after the conntrack entry is deleted the old connection is reset")
	assert.Len(t, imds.requests(), 2, "no request on the old connection reached the real service")

	body, err = pods[0].get(t, tokenPath)
	require.NoError(t, err)
	assert.Equal(t, "nmi 10.244.0.2", body, "the client's new connection is intercepted")
	assert.Len(t, nmi.requests(), 1)
}

// synCounter counts the SYNs that reach nmi's socket from the forged source
// through the forger's interface, with a counting rule in the node's INPUT.
type synCounter struct {
	t    *testing.T
	rule []string
}

func countForgedSYNs(t *testing.T, victim, forger *testPod) *synCounter {
	rule := []string{"-s", victim.ip.String() + "/32", "-d", testNMIAddr.String() + "/32", "-i", forger.hostIf,
		"-p", "tcp", "-m", "tcp", "--dport", "2579", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-j", "ACCEPT"}
	ipt(t, append([]string{"-t", "filter", "-I", "INPUT", "1"}, rule...)...)
	t.Cleanup(func() { ipt(t, append([]string{"-t", "filter", "-D", "INPUT"}, rule...)...) })
	return &synCounter{t: t, rule: rule}
}

func (c *synCounter) count() int { return packets(c.t, "filter", "INPUT", 1) }

// TestInterceptionRootForgedSourceAddress: pod B (root in its namespace)
// adds pod A's address to its eth0 and asks nmi from it.
func TestInterceptionRootForgedSourceAddress(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		// setPods: give the interceptor the pod interfaces.
		setPods bool
		// synsReachNMI: whether forged SYNs get to nmi's socket.
		synsReachNMI bool
	}{
		{"no mitigation", Config{DisableRawRules: true}, false, true},
		{"raw-table rules", Config{}, true, false},
		{"strict rp_filter only", Config{DisableRawRules: true, StrictReversePath: true}, true, false},
		{"both", Config{StrictReversePath: true}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pods := setupNode(t, 2)
			a, b := pods[0], pods[1]
			nmi := startServer(t, "nmi", netip.AddrPortFrom(testNMIAddr, testNMIPort))
			in := newInterceptor(t, tc.cfg)
			if tc.setPods {
				require.NoError(t, in.SetPods([]PodInterface{
					{Interface: a.hostIf, IPs: []netip.Addr{a.ip}},
					{Interface: b.hostIf, IPs: []netip.Addr{b.ip, netip.MustParseAddr("fd00::3")}},
				}))
			}
			require.NoError(t, in.Reconcile(t.Context()))
			syns := countForgedSYNs(t, a, b)

			eth0, err := b.nl.LinkByName("eth0")
			require.NoError(t, err)
			require.NoError(t, b.nl.AddrAdd(eth0, &netlink.Addr{IPNet: hostRoute(a.ip)}))

			c, err := b.dial(t.Context(), MetadataIP+":80", a.ip)
			if err == nil {
				body, rerr := roundTrip(c, tokenPath)
				c.Close()
				t.Fatalf("the forged connection was established: %q, %v", body, rerr)
			}
			t.Logf("forged dial from %s: %v; forged SYNs that reached nmi: %d", a.ip, err, syns.count())
			assert.Empty(t, nmi.requests(), "nmi served a forged request")
			if tc.synsReachNMI {
				assert.Positive(t, syns.count(), "without a mitigation the forged SYN reaches nmi (the handshake then fails: the SYN-ACK goes to the real owner, who resets it)")
			} else {
				assert.Zero(t, syns.count(), "a forged SYN reached nmi")
			}

			// The pods' own requests are unaffected. B may need a few
			// seconds (seen once with strict rp_filter): while it held A's
			// address it probably sent its ARP requests for the gateway
			// from that address, which rp_filter also checks and ignores,
			// so its neighbour entry must be resolved again.
			require.NoError(t, b.nl.AddrDel(eth0, &netlink.Addr{IPNet: hostRoute(a.ip)}))
			for _, p := range pods {
				var body string
				require.Eventually(t, func() bool {
					body, err = p.get(t, tokenPath)
					return err == nil
				}, 10*time.Second, 100*time.Millisecond, "%s's own request", p.name)
				assert.Equal(t, "nmi "+p.ip.String(), body)
			}
			if tc.cfg.StrictReversePath {
				for _, p := range pods {
					v, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + p.hostIf + "/rp_filter")
					require.NoError(t, err)
					assert.Equal(t, "1\n", string(v), p.hostIf)
				}
				require.NoError(t, in.Remove())
				v, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + a.hostIf + "/rp_filter")
				require.NoError(t, err)
				assert.Equal(t, "0\n", string(v), "Remove restores rp_filter")
			}
		})
	}
}

func TestInterceptionRootSetPodsReconcilesTheRawChain(t *testing.T) {
	pods := setupNode(t, 3)
	in := newInterceptor(t, Config{})
	ctx := t.Context()

	require.NoError(t, in.SetPods([]PodInterface{
		{Interface: pods[1].hostIf, IPs: []netip.Addr{pods[1].ip}},
		{Interface: pods[0].hostIf, IPs: []netip.Addr{pods[0].ip, netip.MustParseAddr("10.244.1.9")}},
	}))
	require.NoError(t, in.Reconcile(ctx))
	assert.Equal(t, []string{
		"-N KVNODE-ANTISPOOF",
		"-A KVNODE-ANTISPOOF -s 10.244.0.2/32 -i kvpod0 -j RETURN",
		"-A KVNODE-ANTISPOOF -s 10.244.1.9/32 -i kvpod0 -j RETURN",
		"-A KVNODE-ANTISPOOF -i kvpod0 -j DROP",
		"-A KVNODE-ANTISPOOF ! -s 10.244.0.3/32 -i kvpod1 -j DROP",
	}, listChain(t, "raw", "KVNODE-ANTISPOOF"))

	// A pod leaves, another arrives.
	require.NoError(t, in.SetPods([]PodInterface{
		{Interface: pods[2].hostIf, IPs: []netip.Addr{pods[2].ip}},
		{Interface: pods[1].hostIf, IPs: []netip.Addr{pods[1].ip}},
	}))
	require.NoError(t, in.Reconcile(ctx))
	assert.Equal(t, []string{
		"-N KVNODE-ANTISPOOF",
		"-A KVNODE-ANTISPOOF ! -s 10.244.0.3/32 -i kvpod1 -j DROP",
		"-A KVNODE-ANTISPOOF ! -s 10.244.0.4/32 -i kvpod2 -j DROP",
	}, listChain(t, "raw", "KVNODE-ANTISPOOF"))

	// A foreign rule slipped into the chain is removed.
	ipt(t, "-t", "raw", "-I", "KVNODE-ANTISPOOF", "1", "-j", "ACCEPT")
	require.NoError(t, in.Reconcile(ctx))
	assert.Len(t, listChain(t, "raw", "KVNODE-ANTISPOOF"), 3)

	assert.ErrorContains(t, in.SetPods([]PodInterface{{Interface: "../../all", IPs: []netip.Addr{pods[0].ip}}}), "not an interface name")
	assert.ErrorContains(t, in.SetPods([]PodInterface{{Interface: pods[0].hostIf}}), "no addresses")

	require.NoError(t, in.SetPods(nil))
	require.NoError(t, in.Reconcile(ctx))
	assert.Equal(t, []string{"-N KVNODE-ANTISPOOF"}, listChain(t, "raw", "KVNODE-ANTISPOOF"))
}

// An nmi that starts again after being killed finds its raw chain in place.
// Until it has listed the pods' interfaces it keeps those rules, forged
// sources stay dropped throughout, and the first SetPods takes over.
func TestInterceptionRootRestartKeepsAntiSpoofingUntilPodsAreKnown(t *testing.T) {
	pods := setupNode(t, 2)
	ctx := t.Context()
	before := newInterceptor(t, Config{})
	require.NoError(t, before.SetPods([]PodInterface{{Interface: pods[0].hostIf, IPs: []netip.Addr{pods[0].ip}}}))
	require.NoError(t, before.Reconcile(ctx))
	kept := listChain(t, "raw", "KVNODE-ANTISPOOF")
	require.Equal(t, []string{"-N KVNODE-ANTISPOOF", "-A KVNODE-ANTISPOOF ! -s 10.244.0.2/32 -i kvpod0 -j DROP"}, kept)

	// The restarted nmi: a new Interceptor over the same chains.
	after := newInterceptor(t, Config{})
	require.NoError(t, after.Reconcile(ctx))
	assert.Equal(t, kept, listChain(t, "raw", "KVNODE-ANTISPOOF"), "a restart dropped the anti-spoofing rules before the pods were known")
	assert.True(t, after.Ready())

	require.NoError(t, after.SetPods([]PodInterface{{Interface: pods[1].hostIf, IPs: []netip.Addr{pods[1].ip}}}))
	require.NoError(t, after.Reconcile(ctx))
	assert.Equal(t, []string{"-N KVNODE-ANTISPOOF", "-A KVNODE-ANTISPOOF ! -s 10.244.0.3/32 -i kvpod1 -j DROP"},
		listChain(t, "raw", "KVNODE-ANTISPOOF"))

	// With no chain at all, the first Reconcile creates it empty.
	require.NoError(t, after.Remove())
	fresh := newInterceptor(t, Config{})
	require.NoError(t, fresh.Reconcile(ctx))
	assert.Equal(t, []string{"-N KVNODE-ANTISPOOF"}, listChain(t, "raw", "KVNODE-ANTISPOOF"))
}
