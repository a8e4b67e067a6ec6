package interception

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// WatchPodRoutes feeds the anti-spoofing rules with the node's pod
// interfaces, learnt from its routing table: in routed CNI layouts (Calico,
// Cilium in routed mode, Azure CNI transparent mode, kindnet, ptp) each pod
// address is an IPv4 /32 route through the pod's own host-side veth. Routes
// through anything but a veth are ignored, so the node's uplink never gets a
// source filter. It reads the table at start, on every route change netlink
// reports, and every resync, until ctx ends.
//
// The routing table rather than the pod informer: it names the interface,
// which the API server does not know, and it changes the moment the CNI
// wires a pod, before the pod's address is even reported.
func WatchPodRoutes(ctx context.Context, rules *Interceptor, resync time.Duration) error {
	logger := klog.FromContext(ctx)
	updates := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{
		ErrorCallback: func(err error) {
			if ctx.Err() == nil {
				logger.Error(err, "Route subscription")
			}
		},
	}); err != nil {
		return fmt.Errorf("subscribe to route changes: %w", err)
	}
	tick := time.NewTicker(resync)
	defer tick.Stop()
	var last []PodInterface
	for {
		pods, err := PodInterfaces()
		if err != nil {
			logger.Error(err, "List pod routes")
		} else if !slices.EqualFunc(pods, last, samePodInterface) {
			if err := rules.SetPods(pods); err != nil {
				logger.Error(err, "Set anti-spoofing interfaces")
			} else {
				logger.V(2).Info("Pod interfaces changed", "interfaces", len(pods))
				last = pods
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-updates:
			if !ok {
				return fmt.Errorf("route subscription closed")
			}
			// A CNI adds several routes in a row: take them all at once.
			drain(updates, 50*time.Millisecond)
		case <-tick.C:
		}
	}
}

// drain discards the updates that arrive within quiet of each other.
func drain(updates <-chan netlink.RouteUpdate, quiet time.Duration) {
	t := time.NewTimer(quiet)
	defer t.Stop()
	for {
		select {
		case <-updates:
			t.Reset(quiet)
		case <-t.C:
			return
		}
	}
}

// PodInterfaces lists the IPv4 /32 routes of the main table that go
// through a veth, by interface, sorted.
func PodInterfaces() ([]PodInterface, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	byIndex := map[int]*PodInterface{}
	veth := map[int]bool{}
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex <= 0 || r.Gw != nil {
			continue
		}
		if ones, bits := r.Dst.Mask.Size(); ones != 32 || bits != 32 {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok {
			continue
		}
		isVeth, seen := veth[r.LinkIndex]
		if !seen {
			link, err := netlink.LinkByIndex(r.LinkIndex)
			isVeth = err == nil && link.Type() == "veth"
			veth[r.LinkIndex] = isVeth
			if isVeth {
				byIndex[r.LinkIndex] = &PodInterface{Interface: link.Attrs().Name}
			}
		}
		if isVeth {
			p := byIndex[r.LinkIndex]
			p.IPs = append(p.IPs, ip)
		}
	}
	out := make([]PodInterface, 0, len(byIndex))
	for _, p := range byIndex {
		slices.SortFunc(p.IPs, netip.Addr.Compare)
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b PodInterface) int { return strings.Compare(a.Interface, b.Interface) })
	return out, nil
}

func samePodInterface(a, b PodInterface) bool {
	return a.Interface == b.Interface && slices.Equal(a.IPs, b.IPs)
}

// PodRoutes answers whether a pod interface carries an address, from the
// kernel's routing decision at the moment of asking: no watcher lag, so a
// connection accepted a moment after a pod's veth went away, or after a new
// veth took its address, is judged by the interface that exists now. Its
// methods are safe for concurrent use.
type PodRoutes struct {
	prefix string
	src    net.IP // nil: the kernel picks the source, as for any reply
	nl     *netlink.Handle

	mu sync.Mutex
	// podLink caches, by interface index, whether an interface is a pod
	// interface: a veth (with the prefix). Indexes are allocated cyclically
	// by the kernel, so an index is not reused while it can matter.
	podLink map[int]bool
}

// maxLinkCache bounds PodRoutes' interface cache; it is cleared when full.
const maxLinkCache = 4096

// PodRoutesConfig configures a PodRoutes.
type PodRoutesConfig struct {
	// InterfacePrefix, when set, counts only veths whose name starts with
	// it as pod interfaces (Config.InterfacePrefix).
	InterfacePrefix string
	// Source is nmi's address: the lookups are made for the replies nmi
	// sends from it, so that source-based policy routing is honoured.
	Source netip.Addr
}

// NewPodRoutes returns a PodRoutes with a netlink socket of its own; Close
// releases it.
func NewPodRoutes(cfg PodRoutesConfig) (*PodRoutes, error) {
	if cfg.InterfacePrefix != "" && !ifaceName.MatchString(cfg.InterfacePrefix) {
		return nil, fmt.Errorf("interface prefix %q is not an interface name prefix", cfg.InterfacePrefix)
	}
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open a netlink socket: %w", err)
	}
	r := &PodRoutes{prefix: cfg.InterfacePrefix, nl: nl, podLink: map[int]bool{}}
	if cfg.Source.IsValid() {
		r.src = net.IP(cfg.Source.Unmap().AsSlice())
	}
	return r, nil
}

// Close releases the netlink socket.
func (r *PodRoutes) Close() { r.nl.Close() }

// PodLink returns the index of the pod interface that carries ip now: the
// node's route to ip is an IPv4 /32 route for exactly ip, without a gateway,
// through a veth (with the configured prefix). It reports false for
// anything else: no route of its own (the pod's veth is gone and the
// default route would carry the reply off the node), a subnet route (a
// bridge, the uplink's own subnet), a route through a gateway or an
// interface that is not a pod's.
func (r *PodRoutes) PodLink(ip netip.Addr) (int, bool) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return 0, false
	}
	routes, err := r.nl.RouteGetWithOptions(net.IP(ip.AsSlice()), &netlink.RouteGetOptions{SrcAddr: r.src, FIBMatch: true})
	if err != nil || len(routes) != 1 {
		return 0, false
	}
	rt := routes[0]
	if rt.Dst == nil || rt.Gw != nil || len(rt.MultiPath) > 0 || rt.LinkIndex <= 0 {
		return 0, false
	}
	if ones, bits := rt.Dst.Mask.Size(); ones != 32 || bits != 32 || !rt.Dst.IP.Equal(net.IP(ip.AsSlice())) {
		return 0, false
	}
	if !r.isPodLink(rt.LinkIndex) {
		return 0, false
	}
	return rt.LinkIndex, true
}

// isPodLink reports whether interface index is a veth with the prefix.
func (r *PodRoutes) isPodLink(index int) bool {
	r.mu.Lock()
	pod, ok := r.podLink[index]
	r.mu.Unlock()
	if ok {
		return pod
	}
	link, err := r.nl.LinkByIndex(index)
	if err != nil {
		return false // gone: not cached, it may be a new interface next time
	}
	pod = link.Type() == "veth" && strings.HasPrefix(link.Attrs().Name, r.prefix)
	r.mu.Lock()
	if len(r.podLink) >= maxLinkCache {
		clear(r.podLink)
	}
	r.podLink[index] = pod
	r.mu.Unlock()
	return pod
}
