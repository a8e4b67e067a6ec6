// Package podindex finds the pods of one node by source address or by name.
// It is nmi's imds.PodFinder: a pod informer limited to the node's pods feeds
// two maps, pod IP -> pod and namespace/name -> pod, so that a token request
// costs a map lookup under a read lock and never a call to the API server.
//
// Address ownership follows the node's churn. Every pod that lists an address
// in status.podIPs claims it; host-network pods (they share the node's
// address), pods in a terminal phase and pods whose sandbox kubelet reports
// gone (PodReadyToStartContainers False) claim nothing. Claims are keyed by
// pod UID and removed only by their own pod's events, so a late update or
// delete of the old pod never takes the address from the new one.
//
// Two pods can claim one address: a new pod inherited the address of a pod
// whose deletion the informer has not delivered yet, or a Pod object still
// says Running with the address of a sandbox that is gone (after a node
// restart, until kubelet writes the pod again). The winner must not depend
// on the order in which the informer delivers them, which after a re-list
// is the order of names. So a claim of a pod that is not terminating beats
// a terminating pod's, and among those the pod whose sandbox got its
// network last wins, as kubelet reports it: the PodReadyToStartContainers
// condition's last transition to True (kubelet sets it again for every new
// sandbox), else status.startTime, else the pod's creation. The address's
// sandbox came after every other sandbox that had it. When the best two
// claims are equal (those times have one-second resolution), the address is
// refused until the pods' next writes tell them apart.
//
// With Links (routed pod networks), a claim is also tied to the pod
// interface that carries the address, and an address is served only to
// connections that came through that interface (imds.PodFinder's link):
//
//   - A pod that is not terminating follows its interface: every event of
//     the pod looks the interface up again, so a pod that kubelet gives a
//     new sandbox with the same address (pinned addresses) is served again
//     once kubelet reports it.
//   - A terminating pod is pinned to the interface it had when nmi first saw
//     it terminating (kubelet never gives a terminating pod a new sandbox).
//     Once its veth is gone nothing can reach nmi through it: a new sandbox
//     given the address, whose Pod has not reported it yet, comes through a
//     new veth and is not served the old pod's identity, and neither is a
//     host that uses the address from the node's network (which
//     interception.Listener refuses before any request).
package podindex

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/podauth"
)

// Links tells which pod interface carries an address now;
// interception.PodRoutes is the implementation.
type Links interface {
	// PodLink returns the index of the pod interface that carries ip, or
	// false when none does.
	PodLink(ip netip.Addr) (int, bool)
}

// Index is an imds.PodFinder for the pods of one node. Create it with New,
// start it with Start and serve once HasSynced reports true.
type Index struct {
	node     string
	links    Links // nil: claims are not tied to interfaces
	informer cache.SharedIndexInformer
	wait     func() // waits for the informer to return after Start
	synced   cache.ResourceEventHandlerRegistration

	mu sync.RWMutex
	// byUID holds every indexed pod; a pod's claims point at its record.
	byUID map[types.UID]*record
	// byName maps namespace/name to the pod of that name.
	byName map[podName]*record
	// byIP holds the claims on each address. Usually there is one.
	byIP map[netip.Addr][]claim
}

// podName is a pod's namespace and name.
type podName struct{ namespace, name string }

// record is one indexed pod.
type record struct {
	pod podauth.Pod
	uid types.UID
	// ips are the addresses the pod claims (empty for host-network and
	// terminal pods).
	ips []netip.Addr
	// terminating is set once the pod has a deletion timestamp; its claims
	// yield to those of pods that are not terminating.
	terminating bool
	// network is when the pod's sandbox got its network (networkTime);
	// among claims of equal standing, the latest wins.
	network time.Time
}

// claim is a pod's claim on an address.
type claim struct {
	rec *record
	// link is the pod interface that carried the address when the claim
	// was last tied to one (see the package comment); 0 when none did, or
	// when the index has no Links.
	link int
}

// beats reports whether claim c wins over d. Neither beats the other when
// both are terminating or both are not, and their networks came in the
// same instant.
func (c claim) beats(d claim) bool {
	if c.rec.terminating != d.rec.terminating {
		return !c.rec.terminating
	}
	return c.rec.network.After(d.rec.network)
}

// New returns an index of the pods whose spec.nodeName is node. Its informer
// lists and watches only those pods through client. links, when not nil,
// ties claims to pod interfaces (see the package comment); nil serves an
// address to any connection from it (bridge layouts).
func New(client *kube.Core, node string, links Links) (*Index, error) {
	if node == "" {
		return nil, errors.New("podindex: node name is required")
	}
	selector := fields.OneTermEqualSelector("spec.nodeName", node).String()
	lw := client.ListWatch("pods", metav1.NamespaceAll, func(o *metav1.ListOptions) { o.FieldSelector = selector })
	ix := newIndex()
	ix.node = node
	ix.links = links
	// No indexes: the index's own maps are what lookups read.
	ix.informer = cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{}, cache.SharedIndexInformerOptions{})
	if err := ix.informer.SetTransform(slimPod); err != nil {
		return nil, fmt.Errorf("podindex: set transform: %w", err)
	}
	reg, err := ix.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { ix.observe(obj) },
		UpdateFunc: func(_, obj any) { ix.observe(obj) },
		DeleteFunc: ix.forget,
	})
	if err != nil {
		return nil, fmt.Errorf("podindex: add event handler: %w", err)
	}
	ix.synced = reg
	return ix, nil
}

// newIndex returns an empty index without an informer.
func newIndex() *Index {
	return &Index{
		byUID:  make(map[types.UID]*record),
		byName: make(map[podName]*record),
		byIP:   make(map[netip.Addr][]claim),
	}
}

// Start runs the informer until ctx ends. It does not block.
func (ix *Index) Start(ctx context.Context) {
	ix.wait = kube.Run(ctx, ix.informer)
}

// Shutdown waits for the informer's goroutines to end after Start's context
// has ended.
func (ix *Index) Shutdown() {
	if ix.wait != nil {
		ix.wait()
	}
}

// HasSynced reports whether the index holds every pod of the initial list,
// for readiness: until then a pod that exists may not be found.
func (ix *Index) HasSynced() bool {
	return ix.synced.HasSynced()
}

// WaitForSync blocks until HasSynced or until ctx ends, and reports which.
func (ix *Index) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), ix.synced.HasSynced)
}

// Len returns how many pods the index holds and how many addresses they
// claim (for the metrics: both follow the node's live pods).
func (ix *Index) Len() (pods, addresses int) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.byUID), len(ix.byIP)
}

// PodByIP returns the pod that owns address ip for a connection that came
// through pod interface link. With Links, only claims tied to link count,
// and link 0 (no pod interface) finds nothing; without, link is ignored.
// When the best two claims are equal, it finds nothing (see the package
// comment). IPv4-mapped IPv6 addresses are looked up as IPv4, and an IPv6
// zone is ignored.
func (ix *Index) PodByIP(ip netip.Addr, link int) (podauth.Pod, bool) {
	ip = ip.Unmap().WithZone("")
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	claims := ix.byIP[ip]
	var best *claim
	tie := false
	for i := range claims {
		c := &claims[i]
		if ix.links != nil && (link == 0 || c.link != link) {
			continue
		}
		switch {
		case best == nil || c.beats(*best):
			best, tie = c, false
		case !best.beats(*c):
			tie = true
		}
	}
	if best == nil || tie {
		return podauth.Pod{}, false
	}
	return best.rec.pod, true
}

// PodByName returns the pod namespace/name, whatever its phase or network.
func (ix *Index) PodByName(namespace, name string) (podauth.Pod, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	rec, ok := ix.byName[podName{namespace, name}]
	if !ok {
		return podauth.Pod{}, false
	}
	return rec.pod, true
}

// observe indexes an added or updated pod.
func (ix *Index) observe(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		klog.ErrorS(nil, "podindex: unexpected object from the pod informer", "type", fmt.Sprintf("%T", obj))
		return
	}
	ips := claimedIPs(p)
	// Looked up outside the lock: one netlink request per address.
	var links []int
	if ix.links != nil {
		links = make([]int, len(ips))
		for i, ip := range ips {
			links[i], _ = ix.links.PodLink(ip)
		}
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.set(p, ips, links)
}

// forget removes a deleted pod.
func (ix *Index) forget(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		klog.ErrorS(nil, "podindex: unexpected deleted object from the pod informer", "type", fmt.Sprintf("%T", obj))
		return
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.remove(p.UID)
}

// set makes the index reflect pod p claiming ips, carried now by the pod
// interfaces links (nil without Links). ix.mu is held.
func (ix *Index) set(p *corev1.Pod, ips []netip.Addr, links []int) {
	key := podName{p.Namespace, p.Name}
	// The informer keys pods by name: after a relist, a pod deleted and
	// recreated under the same name arrives as an update with a new UID.
	if old, ok := ix.byName[key]; ok && old.uid != p.UID {
		ix.remove(old.uid)
	}
	rec, existed := ix.byUID[p.UID]
	if !existed {
		rec = &record{uid: p.UID}
		ix.byUID[p.UID] = rec
	}
	// The record is shared by the claims, and readers copy rec.pod under
	// the read lock, so it is updated in place under the write lock.
	rec.pod = podauth.Pod{
		Namespace:      p.Namespace,
		Name:           p.Name,
		UID:            string(p.UID),
		ServiceAccount: serviceAccount(p),
		Labels:         p.Labels,
	}
	wasTerminating := rec.terminating
	rec.terminating = p.DeletionTimestamp != nil
	rec.network = networkTime(p)
	ix.byName[key] = rec
	if rec.terminating && !wasTerminating {
		klog.V(4).InfoS("Pod terminating: served only through the interfaces it has now", "pod", klog.KObj(p), "links", links)
	}

	for _, ip := range rec.ips {
		if !slices.Contains(ips, ip) {
			ix.unclaim(ip, rec)
		}
	}
	for i, ip := range ips {
		link := 0
		if links != nil {
			link = links[i]
		}
		switch {
		case !slices.Contains(rec.ips, ip):
			ix.claim(ip, rec, link)
		case !rec.terminating || !wasTerminating:
			// A pod that is not terminating follows its interface; one
			// seen terminating for the first time is pinned to the one it
			// has now. A terminating pod's claim stays where it was pinned.
			ix.retie(ip, rec, link)
		}
	}
	rec.ips = ips
}

// retie ties rec's claim on ip to link. ix.mu is held.
func (ix *Index) retie(ip netip.Addr, rec *record, link int) {
	for i := range ix.byIP[ip] {
		if ix.byIP[ip][i].rec == rec {
			ix.byIP[ip][i].link = link
		}
	}
}

// remove drops the pod with uid and its claims. ix.mu is held.
func (ix *Index) remove(uid types.UID) {
	rec, ok := ix.byUID[uid]
	if !ok {
		return
	}
	for _, ip := range rec.ips {
		ix.unclaim(ip, rec)
	}
	delete(ix.byUID, uid)
	key := podName{rec.pod.Namespace, rec.pod.Name}
	if ix.byName[key] == rec {
		delete(ix.byName, key)
	}
}

// claim adds rec's claim on ip, tied to link. ix.mu is held.
func (ix *Index) claim(ip netip.Addr, rec *record, link int) {
	claims := append(ix.byIP[ip], claim{rec: rec, link: link})
	if len(claims) > 1 {
		other := claims[0].rec
		klog.V(2).InfoS("Two pods claim one address; a pod that is not terminating wins, then the one whose sandbox got its network last, and a tie is refused",
			"ip", ip, "pod", klog.KRef(rec.pod.Namespace, rec.pod.Name), "network", rec.network,
			"other", klog.KRef(other.pod.Namespace, other.pod.Name), "otherNetwork", other.network)
	}
	ix.byIP[ip] = claims
}

// unclaim removes rec's claim on ip, leaving other pods' claims. ix.mu is
// held.
func (ix *Index) unclaim(ip netip.Addr, rec *record) {
	claims := ix.byIP[ip]
	kept := claims[:0]
	for _, c := range claims {
		if c.rec != rec {
			kept = append(kept, c)
		}
	}
	if len(kept) == 0 {
		delete(ix.byIP, ip)
		return
	}
	clear(claims[len(kept):])
	ix.byIP[ip] = kept
}

// claimedIPs returns the addresses pod p owns: its status.podIPs (or
// status.podIP), none for a host-network pod, a pod in a terminal phase,
// or a pod whose sandbox kubelet reports gone (PodReadyToStartContainers
// False: after the pod's containers were killed, or while kubelet gives it
// a new sandbox), whatever addresses its status still lists.
func claimedIPs(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || !sandboxReady(p) {
		return nil
	}
	var ips []netip.Addr
	add := func(s string) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			if s != "" {
				klog.V(2).InfoS("ignoring an unparsable pod IP", "pod", klog.KObj(p), "ip", s)
			}
			return
		}
		ip = ip.Unmap().WithZone("")
		if !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	for _, pip := range p.Status.PodIPs {
		add(pip.IP)
	}
	// status.podIP is podIPs[0] when both are set; older writers set only it.
	add(p.Status.PodIP)
	return ips
}

// networkTime is when p's sandbox got its network, as kubelet reports it:
// the PodReadyToStartContainers condition's last transition to True, else
// status.startTime, else the pod's creation.
func networkTime(p *corev1.Pod) time.Time {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers && c.Status == corev1.ConditionTrue && !c.LastTransitionTime.IsZero() {
			return c.LastTransitionTime.Time
		}
	}
	if p.Status.StartTime != nil {
		return p.Status.StartTime.Time
	}
	return p.CreationTimestamp.Time
}

// sandboxReady reports whether p's sandbox has its network, as far as
// kubelet says: false only when the PodReadyToStartContainers condition is
// there and False (kubelets before 1.29 may not report it).
func sandboxReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReadyToStartContainers {
			return c.Status != corev1.ConditionFalse
		}
	}
	return true
}

// slimPod keeps only the fields the index reads, so that the informer's
// cache of the node's pods stays small.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         p.Namespace,
			Name:              p.Name,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			Labels:            p.Labels,
			CreationTimestamp: p.CreationTimestamp,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			ServiceAccountName: p.Spec.ServiceAccountName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:      p.Status.Phase,
			PodIP:      p.Status.PodIP,
			PodIPs:     p.Status.PodIPs,
			Conditions: sandboxCondition(p.Status.Conditions),
			StartTime:  p.Status.StartTime,
		},
	}, nil
}

// sandboxCondition returns only the PodReadyToStartContainers condition.
func sandboxCondition(cs []corev1.PodCondition) []corev1.PodCondition {
	for _, c := range cs {
		if c.Type == corev1.PodReadyToStartContainers {
			return []corev1.PodCondition{{Type: c.Type, Status: c.Status, LastTransitionTime: c.LastTransitionTime}}
		}
	}
	return nil
}

// serviceAccount returns the name of p's service account; an empty name
// means "default", as the API server's admission fills it in.
func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}
