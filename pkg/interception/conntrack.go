package interception

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// bypassFilter matches the conntrack entries of TCP connections to the
// metadata endpoint that are not translated to nmi: connections opened
// before the DNAT rule existed, which would otherwise keep going wherever
// they went for as long as they live.
type bypassFilter struct {
	nmi net.IP
}

var _ netlink.CustomConntrackFilter = bypassFilter{}

func (f bypassFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return flow.Forward.Protocol == unix.IPPROTO_TCP &&
		flow.Forward.DstIP.Equal(net.IP(metadataAddr.AsSlice())) &&
		flow.Forward.DstPort == MetadataPort &&
		!flow.Reverse.SrcIP.Equal(f.nmi)
}

// deleteBypassingFlows deletes the conntrack entries that bypass
// interception to nmi at addr and returns how many it deleted. The next
// packet of such a connection starts a new entry, which the nat rules now
// send to nmi; nmi knows no such connection and resets it, and the client
// reconnects, this time to nmi.
//
// netlink's delete dumps the whole IPv4 table and deletes the matches one by
// one; it runs only when the nat rules changed, not on every reconcile.
func deleteBypassingFlows(addr netip.Addr) (uint, error) {
	return netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, bypassFilter{nmi: net.IP(addr.AsSlice())})
}
