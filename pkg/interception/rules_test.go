package interception

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigValidate(t *testing.T) {
	addr := netip.MustParseAddr("10.200.0.1")
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{Address: addr, Port: 2579}, ""},
		{"no address", Config{Port: 2579}, "want an IPv4 address"},
		{"IPv6", Config{Address: netip.MustParseAddr("fd00::1"), Port: 2579}, "want an IPv4 address"},
		{"loopback", Config{Address: netip.MustParseAddr("127.0.0.1"), Port: 2579}, "route_localnet"},
		{"metadata address itself", Config{Address: netip.MustParseAddr(MetadataIP), Port: 2579}, "not a usable"},
		{"no port", Config{Address: addr}, "port is 0"},
		{"bad prefix", Config{Address: addr, Port: 1, InterfacePrefix: "veth+ -j ACCEPT"}, "interface prefix"},
		{"IPv6 CIDR", Config{Address: addr, Port: 1, PodCIDR: netip.MustParsePrefix("fd00::/64")}, "want IPv4"},
		{"chain too long", Config{Address: addr, Port: 1, NATChain: "KVNODE-NMI-0123456789012345678"}, "chain name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				assert.Equal(t, DefaultNATChain, tc.cfg.NATChain)
				assert.Equal(t, DefaultRawChain, tc.cfg.RawChain)
				return
			}
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// The rules are written as iptables -S prints them back; the root tests
// check that iptables agrees.
func TestNATRules(t *testing.T) {
	cfg := Config{Address: netip.MustParseAddr("10.200.0.1"), Port: 2579}
	assert.Equal(t, []string{
		"-d 169.254.169.254/32 ! -i lo -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579",
		"-j RETURN",
	}, ruleStrings(natRules(cfg)))

	cfg.InterfacePrefix, cfg.PodCIDR = "azv", netip.MustParsePrefix("10.244.3.4/16")
	assert.Equal(t, "-s 10.244.0.0/16 -d 169.254.169.254/32 -i azv+ -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579",
		natRules(cfg)[0].String())
}

func TestAntiSpoofRules(t *testing.T) {
	ip := netip.MustParseAddr
	assert.Equal(t, []string{
		"-i a -j DROP",
		"! -s 10.0.0.2/32 -i b -j DROP",
		"-s 10.0.0.3/32 -i c -j RETURN",
		"-s 10.0.0.4/32 -i c -j RETURN",
		"-i c -j DROP",
	}, ruleStrings(antiSpoofRules([]PodInterface{
		{Interface: "a"},
		{Interface: "b", IPs: []netip.Addr{ip("10.0.0.2")}},
		{Interface: "c", IPs: []netip.Addr{ip("10.0.0.3"), ip("10.0.0.4")}},
	})))
}

func ruleStrings(rules []rule) []string {
	var s []string
	for _, r := range rules {
		s = append(s, r.String())
	}
	return s
}
