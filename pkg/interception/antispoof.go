package interception

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/go-logr/logr"
)

// Anti-spoofing, and which pod network layouts it covers.
//
// Routed layouts (a veth per pod, the pod's address routed to it by a /32):
// Calico, Cilium in routed mode, Azure CNI transparent mode, kindnet, the ptp
// plugin. A pod that adds a neighbour's address to its eth0 and sends from
// it is stopped at the door by the raw-table rule of its own host-side veth,
// before conntrack and NAT, so nmi never sees the SYN. rp_filter=1 on the
// host-side veths (Config.StrictReversePath) stops it too, later (in the
// routing decision, after DNAT); it is only effective if
// net.ipv4.conf.all.rp_filter is not 2, since the kernel applies the larger
// of "all" and the interface's value. Without either, the forged SYN does
// reach nmi; the handshake then fails only because the SYN-ACK is routed to
// the real owner, whose kernel resets it.
//
// Bridge layouts (the CNI bridge plugin, kubenet, Azure CNI bridge mode): all
// pods' packets enter the node through the bridge, so "-i <veth>" never
// matches and the bridge's route covers every pod, so rp_filter passes the
// forged source too. There the attack succeeds once the forger has answered
// ARP for the address. Covering it needs per-port filtering in the bridge
// family (nft "bridge" table or ebtables: drop IPv4 and ARP from a port whose
// source address is not that port's pod), which this package does not do:
// on bridge layouts, pass no pods to SetPods and rely on the CNI's own
// spoof protection (or none).

// PodInterface is one pod's host-side network interface and the pod's
// addresses. IPv6 addresses are ignored.
type PodInterface struct {
	Interface string
	IPs       []netip.Addr
}

// SetPods replaces the set of pod interfaces whose forged traffic is
// dropped and asks a running Run loop to apply it. An interface listed with
// only IPv6 addresses gets all its IPv4 traffic dropped. Until the first
// call, Reconcile leaves the rules of an existing raw chain as it finds
// them.
func (in *Interceptor) SetPods(pods []PodInterface) error {
	byIface := map[string][]netip.Addr{}
	for _, p := range pods {
		if !ifaceName.MatchString(p.Interface) {
			return fmt.Errorf("pod interface %q: not an interface name", p.Interface)
		}
		if len(p.IPs) == 0 {
			return fmt.Errorf("pod interface %s: no addresses", p.Interface)
		}
		v4 := byIface[p.Interface]
		for _, ip := range p.IPs {
			ip = ip.Unmap()
			if ip.Is4() && !slices.Contains(v4, ip) {
				v4 = append(v4, ip)
			}
		}
		byIface[p.Interface] = v4
	}
	want := make([]PodInterface, 0, len(byIface))
	for name, ips := range byIface {
		slices.SortFunc(ips, netip.Addr.Compare)
		want = append(want, PodInterface{Interface: name, IPs: ips})
	}
	slices.SortFunc(want, func(a, b PodInterface) int { return strings.Compare(a.Interface, b.Interface) })

	in.mu.Lock()
	in.pods, in.podsSet = want, true
	in.mu.Unlock()
	in.Trigger()
	return nil
}

func (in *Interceptor) rpFilterPath(iface string) string {
	return filepath.Join(in.cfg.ProcSys, "net", "ipv4", "conf", iface, "rp_filter")
}

// syncRPFilter sets rp_filter=1 on every pod interface that still exists and
// restores the interfaces that left the set.
func (in *Interceptor) syncRPFilter(logger logr.Logger) error {
	if all, err := os.ReadFile(in.rpFilterPath("all")); err == nil && strings.TrimSpace(string(all)) == "2" {
		logger.V(1).Info("net.ipv4.conf.all.rp_filter is 2 (loose) and overrides strict rp_filter on pod interfaces; the raw-table rules still apply")
	}
	keep := map[string]bool{}
	var errs []error
	for _, p := range in.pods {
		keep[p.Interface] = true
		path := in.rpFilterPath(p.Interface)
		cur, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the pod's interface is gone
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read rp_filter of %s: %w", p.Interface, err))
			continue
		}
		val := strings.TrimSpace(string(cur))
		if val == "1" {
			continue
		}
		if _, saved := in.savedRPFilter[p.Interface]; !saved {
			in.savedRPFilter[p.Interface] = val
		}
		if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("set rp_filter of %s to 1: %w", p.Interface, err))
			continue
		}
		logger.V(2).Info("Set strict reverse-path filtering", "interface", p.Interface, "previous", val)
	}
	errs = append(errs, in.restoreRPFilter(keep))
	return errors.Join(errs...)
}

// restoreRPFilter gives back their previous rp_filter value to the
// interfaces it changed that are not in keep.
func (in *Interceptor) restoreRPFilter(keep map[string]bool) error {
	var errs []error
	for iface, val := range in.savedRPFilter {
		if keep[iface] {
			continue
		}
		err := os.WriteFile(in.rpFilterPath(iface), []byte(val+"\n"), 0o644)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("restore rp_filter of %s to %s: %w", iface, val, err))
			continue
		}
		delete(in.savedRPFilter, iface)
	}
	return errors.Join(errs...)
}
