package podindex

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
)

// fakeLinks is the node's pod interfaces by address, changed by the test as
// a CNI would change them.
type fakeLinks struct {
	mu sync.Mutex
	m  map[netip.Addr]int
}

func (f *fakeLinks) PodLink(ip netip.Addr) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.m[ip]
	return l, ok
}

func (f *fakeLinks) set(ip string, link int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if link == 0 {
		delete(f.m, netip.MustParseAddr(ip))
		return
	}
	f.m[netip.MustParseAddr(ip)] = link
}

func newLinkedIndex() (*Index, *fakeLinks) {
	links := &fakeLinks{m: map[netip.Addr]int{}}
	ix := newIndex()
	ix.links = links
	return ix, links
}

// ownerVia returns the name of the pod served at ip to a connection through
// link, or "" when none.
func ownerVia(ix *Index, ip string, link int) string {
	pod, ok := ix.PodByIP(netip.MustParseAddr(ip), link)
	if !ok {
		return ""
	}
	return pod.Name
}

func sandboxGone(p *corev1.Pod) {
	p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionFalse})
}

// TestClaimsTiedToPodInterfaces walks the lifecycles that used to hand a
// pod another pod's identity, with claims tied to the interface that
// carries the address.
func TestClaimsTiedToPodInterfaces(t *testing.T) {
	const ip = "10.244.0.5"
	oldPod := newPod(t, "old", "uid-old", []string{ip})
	oldTerminating := newPod(t, "old", "uid-old", []string{ip}, terminating)
	newP := newPod(t, "new", "uid-new", []string{ip})

	t.Run("served only through its own interface", func(t *testing.T) {
		ix, links := newLinkedIndex()
		links.set(ip, 5)
		apply(ix, event{pod: oldPod})
		assert.Equal(t, "old", ownerVia(ix, ip, 5))
		assert.Empty(t, ownerVia(ix, ip, 6), "another interface")
		assert.Empty(t, ownerVia(ix, ip, 0), "no pod interface")
	})

	t.Run("terminating pod released, new sandbox before its Pod reports", func(t *testing.T) {
		ix, links := newLinkedIndex()
		links.set(ip, 5)
		apply(ix, event{pod: oldPod}, event{pod: oldTerminating})
		assert.Equal(t, "old", ownerVia(ix, ip, 5), "served while terminating, through its own veth")
		// The CNI deletes the old veth; a new sandbox gets the address.
		links.set(ip, 0)
		apply(ix, event{pod: oldTerminating})
		links.set(ip, 9)
		apply(ix, event{pod: oldTerminating}) // a late status write
		assert.Empty(t, ownerVia(ix, ip, 9), "the new sandbox must not get the old pod's identity")
		apply(ix, event{pod: newP})
		assert.Equal(t, "new", ownerVia(ix, ip, 9))
	})

	t.Run("seen terminating for the first time after its network went", func(t *testing.T) {
		ix, links := newLinkedIndex()
		links.set(ip, 5)
		apply(ix, event{pod: oldPod})
		links.set(ip, 0)
		apply(ix, event{pod: oldTerminating})
		links.set(ip, 9)
		assert.Empty(t, ownerVia(ix, ip, 9))
		assert.Empty(t, ownerVia(ix, ip, 5))
	})

	t.Run("sandbox gone, as kubelet reports it", func(t *testing.T) {
		ix, links := newLinkedIndex()
		links.set(ip, 5)
		// After a restart nmi first sees the terminating pod when a new
		// sandbox already has the address: kubelet's condition says the
		// old pod has no sandbox.
		links.set(ip, 9)
		apply(ix, event{pod: newPod(t, "old", "uid-old", []string{ip}, terminating, sandboxGone)})
		assert.Empty(t, ownerVia(ix, ip, 9))
		assert.Empty(t, ownerVia(ix, ip, 5))
	})

	t.Run("pod given a new sandbox with the same address", func(t *testing.T) {
		ix, links := newLinkedIndex()
		links.set(ip, 5)
		apply(ix, event{pod: oldPod})
		links.set(ip, 0)
		apply(ix, event{pod: newPod(t, "old", "uid-old", []string{ip}, sandboxGone)})
		assert.Empty(t, ownerVia(ix, ip, 5))
		links.set(ip, 7)
		assert.Empty(t, ownerVia(ix, ip, 7), "not before kubelet reports the new sandbox")
		apply(ix, event{pod: oldPod})
		assert.Equal(t, "old", ownerVia(ix, ip, 7))
	})

	t.Run("pod reported before its route appeared", func(t *testing.T) {
		ix, links := newLinkedIndex()
		apply(ix, event{pod: oldPod})
		links.set(ip, 5)
		assert.Empty(t, ownerVia(ix, ip, 5))
		apply(ix, event{pod: oldPod}) // kubelet's next status write
		assert.Equal(t, "old", ownerVia(ix, ip, 5))
	})

	t.Run("without links, any connection from the address", func(t *testing.T) {
		ix := newIndex()
		apply(ix, event{pod: oldPod})
		assert.Equal(t, "old", ownerVia(ix, ip, 0))
		assert.Equal(t, "old", ownerVia(ix, ip, 42))
	})
}
