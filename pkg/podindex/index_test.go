package podindex

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// podOpt changes a pod built by newPod.
type podOpt func(*corev1.Pod)

// newPod builds a running pod with uid and IPs, as the informer delivers it.
func newPod(t testing.TB, name, uid string, ips []string, opts ...podOpt) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name, UID: types.UID(uid), Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: "node-a", ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func terminating(p *corev1.Pod) {
	now := metav1.Now()
	p.DeletionTimestamp = &now
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

// startBase is the test pods' clock.
var startBase = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// started sets status.startTime, as kubelet does, sec seconds after
// startBase.
func started(sec int) podOpt {
	return func(p *corev1.Pod) {
		t := metav1.NewTime(startBase.Add(time.Duration(sec) * time.Second))
		p.Status.StartTime = &t
	}
}

// sandboxAt reports the pod's sandbox ready (PodReadyToStartContainers
// True) sec seconds after startBase, as kubelet does for every sandbox.
func sandboxAt(sec int) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReadyToStartContainers,
			Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(startBase.Add(time.Duration(sec) * time.Second))})
	}
}

func hostNetwork(p *corev1.Pod) { p.Spec.HostNetwork = true }

// ownerOf returns the name of the pod at ip, or "" when none.
func ownerOf(ix *Index, ip string) string {
	pod, ok := ix.PodByIP(netip.MustParseAddr(ip), 0)
	if !ok {
		return ""
	}
	return pod.Name
}

// event is one informer notification.
type event struct {
	del bool
	pod *corev1.Pod
}

func apply(ix *Index, evs ...event) {
	for _, e := range evs {
		if e.del {
			ix.forget(e.pod)
		} else {
			ix.observe(e.pod)
		}
	}
}

func TestEventOrders(t *testing.T) {
	const ip = "10.244.0.5"
	// pod2 got the address after pod1: it started later.
	pod1 := newPod(t, "pod1", "uid-1", []string{ip}, started(1))
	pod2 := newPod(t, "pod2", "uid-2", []string{ip}, started(2))
	pod1Terminating := newPod(t, "pod1", "uid-1", []string{ip}, started(1), terminating)
	pod1Failed := newPod(t, "pod1", "uid-1", []string{ip}, started(1), phase(corev1.PodFailed))
	pod3SameSecond := newPod(t, "pod3", "uid-3", []string{ip}, started(2))

	for _, tc := range []struct {
		name   string
		events []event
		want   string
	}{
		{"first claim", []event{{pod: pod1}}, "pod1"},
		{"delete then reuse", []event{{pod: pod1}, {del: true, pod: pod1}, {pod: pod2}}, "pod2"},
		{"reuse seen before delete", []event{{pod: pod1}, {pod: pod2}, {del: true, pod: pod1}}, "pod2"},
		{"old pod updated after reuse", []event{{pod: pod1}, {pod: pod2}, {pod: pod1}}, "pod2"},
		{"old pod terminating after reuse", []event{{pod: pod1}, {pod: pod2}, {pod: pod1Terminating}}, "pod2"},
		{"new pod before old pod, old terminating", []event{{pod: pod2}, {pod: pod1Terminating}}, "pod2"},
		{"old pod failed after reuse", []event{{pod: pod1}, {pod: pod2}, {pod: pod1Failed}}, "pod2"},
		{"new pod deleted, old pod still claims", []event{{pod: pod1}, {pod: pod2}, {del: true, pod: pod2}}, "pod1"},
		{"relist tombstone of old pod", []event{{pod: pod1}, {pod: pod2}, {del: true, pod: nil}}, "pod2"},
		{"new pod seen first", []event{{pod: pod2}, {pod: pod1}}, "pod2"},
		{"two pods started in the same second: refused", []event{{pod: pod2}, {pod: pod3SameSecond}}, ""},
		{"tie broken by the old pod's deletion", []event{{pod: pod2}, {pod: pod3SameSecond}, {del: true, pod: pod3SameSecond}}, "pod2"},
		{"old pod fails", []event{{pod: pod1}, {pod: pod1Failed}}, ""},
		{"deleted", []event{{pod: pod1}, {del: true, pod: pod1}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := newIndex()
			for _, e := range tc.events {
				if e.del && e.pod == nil {
					ix.forget(cache.DeletedFinalStateUnknown{Key: "apps/pod1", Obj: pod1})
					continue
				}
				apply(ix, e)
			}
			assert.Equal(t, tc.want, ownerOf(ix, ip))
		})
	}
}

func TestIPChange(t *testing.T) {
	ix := newIndex()
	apply(ix, event{pod: newPod(t, "pod1", "uid-1", []string{"10.244.0.5"})})
	apply(ix, event{pod: newPod(t, "pod1", "uid-1", []string{"10.244.0.9"})})
	assert.Empty(t, ownerOf(ix, "10.244.0.5"))
	assert.Equal(t, "pod1", ownerOf(ix, "10.244.0.9"))

	// Another pod took .9 meanwhile; pod1 moving away must not remove it.
	apply(ix, event{pod: newPod(t, "pod2", "uid-2", []string{"10.244.0.9"})})
	apply(ix, event{pod: newPod(t, "pod1", "uid-1", []string{"10.244.0.7"})})
	assert.Equal(t, "pod2", ownerOf(ix, "10.244.0.9"))
	assert.Equal(t, "pod1", ownerOf(ix, "10.244.0.7"))
}

func TestSameNameNewUID(t *testing.T) {
	// After a relist the informer reports a recreated pod as an update of
	// the old one (same key, new UID) and never deletes the old UID.
	ix := newIndex()
	apply(ix, event{pod: newPod(t, "web-0", "uid-1", []string{"10.244.0.5"})})
	apply(ix, event{pod: newPod(t, "web-0", "uid-2", []string{"10.244.0.6"})})
	assert.Empty(t, ownerOf(ix, "10.244.0.5"))
	pod, ok := ix.PodByIP(netip.MustParseAddr("10.244.0.6"), 0)
	require.True(t, ok)
	assert.Equal(t, "uid-2", pod.UID)
	pod, ok = ix.PodByName("apps", "web-0")
	require.True(t, ok)
	assert.Equal(t, "uid-2", pod.UID)
	assert.Len(t, ix.byUID, 1)
	// The old UID's delete, if it still comes, changes nothing.
	apply(ix, event{del: true, pod: newPod(t, "web-0", "uid-1", []string{"10.244.0.5"})})
	_, ok = ix.PodByName("apps", "web-0")
	assert.True(t, ok)
	assert.Equal(t, "web-0", ownerOf(ix, "10.244.0.6"))
}

func TestClaims(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		lookup  []string
		byName  bool
		wantIPs int
	}{
		{"dual stack", newPod(t, "p", "u", []string{"fd00:10:244::5", "10.244.0.5"}), []string{"fd00:10:244::5", "10.244.0.5", "::ffff:10.244.0.5"}, true, 2},
		{"podIP only", newPod(t, "p", "u", nil, func(p *corev1.Pod) { p.Status.PodIP = "10.244.0.5" }), []string{"10.244.0.5"}, true, 1},
		{"host network", newPod(t, "p", "u", []string{"10.0.0.4"}, hostNetwork), nil, true, 0},
		{"succeeded", newPod(t, "p", "u", []string{"10.244.0.5"}, phase(corev1.PodSucceeded)), nil, true, 0},
		{"failed", newPod(t, "p", "u", []string{"10.244.0.5"}, phase(corev1.PodFailed)), nil, true, 0},
		{"pending without IP", newPod(t, "p", "u", nil, phase(corev1.PodPending)), nil, true, 0},
		{"garbage IP", newPod(t, "p", "u", []string{"not-an-ip"}), nil, true, 0},
		{"sandbox gone", newPod(t, "p", "u", []string{"10.244.0.5"}, sandboxGone), nil, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix := newIndex()
			ix.observe(tc.pod)
			for _, ip := range tc.lookup {
				pod, ok := ix.PodByIP(netip.MustParseAddr(ip), 0)
				require.True(t, ok, ip)
				assert.Equal(t, "p", pod.Name)
			}
			assert.Len(t, ix.byIP, tc.wantIPs)
			_, ok := ix.PodByName("apps", "p")
			assert.Equal(t, tc.byName, ok)
		})
	}
}

func TestPodFields(t *testing.T) {
	ix := newIndex()
	p := newPod(t, "pod1", "uid-1", []string{"10.244.0.5"})
	p.Spec.ServiceAccountName = ""
	ix.observe(p)
	pod, ok := ix.PodByIP(netip.MustParseAddr("10.244.0.5"), 0)
	require.True(t, ok)
	assert.Equal(t, "apps", pod.Namespace)
	assert.Equal(t, "pod1", pod.Name)
	assert.Equal(t, "uid-1", pod.UID)
	assert.Equal(t, "default", pod.ServiceAccount)
	assert.Equal(t, map[string]string{"app": "pod1"}, pod.Labels)
}

// TestStalePodObjectsAnyOrder: a Pod object that still says Running with
// the address of a sandbox that is gone, next to the pod whose sandbox has
// the address now, in every order the informer may deliver them (a
// re-list delivers them by name), gives the current pod every time.
func TestStalePodObjectsAnyOrder(t *testing.T) {
	const ip = "10.244.0.5"
	for _, tc := range []struct {
		name         string
		stale, fresh *corev1.Pod
	}{
		{"by start time",
			newPod(t, "stale", "uid-s", []string{ip}, started(10)),
			newPod(t, "fresh", "uid-f", []string{ip}, started(20))},
		{"by sandbox time, the stale pod started later",
			newPod(t, "stale", "uid-s", []string{ip}, started(15), sandboxAt(16)),
			newPod(t, "fresh", "uid-f", []string{ip}, started(10), sandboxAt(30))},
		{"sandbox time of one, start time of the other",
			newPod(t, "stale", "uid-s", []string{ip}, started(10)),
			newPod(t, "fresh", "uid-f", []string{ip}, started(5), sandboxAt(20))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range [][]*corev1.Pod{{tc.stale, tc.fresh}, {tc.fresh, tc.stale}, {tc.stale, tc.fresh, tc.stale}, {tc.fresh, tc.stale, tc.fresh}} {
				for _, linked := range []bool{false, true} {
					ix := newIndex()
					if linked {
						links := &fakeLinks{m: map[netip.Addr]int{}}
						links.set(ip, 7) // the fresh pod's veth; the stale one is gone
						ix.links = links
					}
					for _, p := range order {
						ix.observe(p)
					}
					assert.Equal(t, "fresh", ownerVia(ix, ip, 7), "order %v, links %v", names(order), linked)
				}
			}
		})
	}
}

func names(pods []*corev1.Pod) []string {
	var n []string
	for _, p := range pods {
		n = append(n, p.Name)
	}
	return n
}

// TestRandomEvents feeds random add/update/delete sequences and checks after
// every event that each address is owned by a pod that currently claims it,
// that a claimed address is found unless its best claims tie, and that the
// owner is the best claimant: not terminating if any claimant is not, then
// the latest network.
func TestRandomEvents(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ips := []string{"10.244.0.1", "10.244.0.2", "10.244.0.3", "fd00::1", "fd00::2"}
	for round := 0; round < 200; round++ {
		ix := newIndex()
		// live is the last state the index was told about, by UID.
		live := map[types.UID]*corev1.Pod{}
		for step := 0; step < 60; step++ {
			name := fmt.Sprintf("p%d", rng.IntN(6))
			uid := types.UID(fmt.Sprintf("%s-%d", name, rng.IntN(2)))
			if rng.IntN(4) == 0 {
				if p, ok := live[uid]; ok {
					ix.forget(p)
					delete(live, uid)
				}
				continue
			}
			var podIPs []string
			for _, ip := range ips {
				if rng.IntN(4) == 0 {
					podIPs = append(podIPs, ip)
				}
			}
			opts := []podOpt{started(rng.IntN(3))}
			switch rng.IntN(6) {
			case 0:
				opts = append(opts, terminating)
			case 1:
				opts = append(opts, phase(corev1.PodFailed))
			case 2:
				opts = append(opts, hostNetwork)
			}
			p := newPod(t, name, string(uid), podIPs, opts...)
			// The informer replaces an object of the same name.
			for u, q := range live {
				if q.Name == name && u != uid {
					delete(live, u)
				}
			}
			ix.observe(p)
			live[uid] = p
			checkInvariants(t, ix, live, ips)
		}
	}
}

func checkInvariants(t *testing.T, ix *Index, live map[types.UID]*corev1.Pod, ips []string) {
	t.Helper()
	for _, s := range ips {
		ip := netip.MustParseAddr(s)
		// best are the claimants that no other claimant beats.
		var best []*corev1.Pod
		better := func(a, b *corev1.Pod) bool {
			if (a.DeletionTimestamp == nil) != (b.DeletionTimestamp == nil) {
				return a.DeletionTimestamp == nil
			}
			return networkTime(a).After(networkTime(b))
		}
		for _, p := range live {
			if !slices.Contains(claimedIPs(p), ip) {
				continue
			}
			switch {
			case len(best) == 0 || better(p, best[0]):
				best = []*corev1.Pod{p}
			case !better(best[0], p):
				best = append(best, p)
			}
		}
		got, ok := ix.PodByIP(ip, 0)
		if len(best) != 1 {
			require.False(t, ok, "%s has %d best claimants but maps to %s", s, len(best), got.Name)
			continue
		}
		require.True(t, ok, "%s is claimed but not found", s)
		require.Equal(t, string(best[0].UID), got.UID, "%s maps to the wrong claimant", s)
	}
	require.Len(t, ix.byUID, len(live))
	require.Len(t, ix.byName, len(live))
}
