package interception

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
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
