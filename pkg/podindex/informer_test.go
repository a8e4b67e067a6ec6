package podindex

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

const (
	waitFor = 10 * time.Second
	tick    = 10 * time.Millisecond
	ns      = "apps"
)

// cluster is a control plane with an index of node-a's pods.
type cluster struct {
	t      *testing.T
	ctx    context.Context
	client kubernetes.Interface
	ix     *Index
	// starts counts the pods given a start time, a second apart: kubelet
	// starts them one after another, and the API's times have one-second
	// resolution.
	starts int
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	_, err := cp.CreateServiceAccount(ctx, ns, "app", nil)
	require.NoError(t, err)

	core, err := kube.NewCore(cp.Config)
	require.NoError(t, err)
	ix, err := New(core, "node-a", nil)
	require.NoError(t, err)
	ictx, stop := context.WithCancel(ctx)
	ix.Start(ictx)
	t.Cleanup(func() { stop(); ix.Shutdown() })
	require.True(t, ix.WaitForSync(ctx))
	require.True(t, ix.HasSynced())
	return &cluster{t: t, ctx: ctx, client: cp.Client, ix: ix}
}

// createPod creates a pod bound to node and, when ips are given, sets its
// status as kubelet would once the sandbox has addresses.
func (c *cluster) createPod(name, node string, ips []string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	c.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"aadpodidbinding": "web"}},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			ServiceAccountName:           "app",
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
		},
	}
	for _, m := range mutate {
		m(pod)
	}
	pod, err := c.client.CoreV1().Pods(ns).Create(c.ctx, pod, metav1.CreateOptions{})
	require.NoError(c.t, err)
	if len(ips) == 0 {
		return pod
	}
	return c.setStatus(pod, corev1.PodRunning, ips)
}

func (c *cluster) setStatus(pod *corev1.Pod, phase corev1.PodPhase, ips []string) *corev1.Pod {
	c.t.Helper()
	pod = pod.DeepCopy()
	if pod.Status.StartTime == nil {
		c.starts++
		start := metav1.NewTime(pod.CreationTimestamp.Add(time.Duration(c.starts) * time.Second))
		pod.Status.StartTime = &start
	}
	pod.Status.Phase = phase
	pod.Status.HostIP = "10.0.0.4"
	pod.Status.HostIPs = []corev1.HostIP{{IP: "10.0.0.4"}}
	pod.Status.PodIPs = nil
	for _, ip := range ips {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	pod.Status.PodIP = ips[0]
	out, err := c.client.CoreV1().Pods(ns).UpdateStatus(c.ctx, pod, metav1.UpdateOptions{})
	require.NoError(c.t, err)
	return out
}

// deletePod deletes a pod at once (grace 0), as kubelet confirms a deletion.
func (c *cluster) deletePod(name string) {
	c.t.Helper()
	err := c.client.CoreV1().Pods(ns).Delete(c.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if !apierrors.IsNotFound(err) {
		require.NoError(c.t, err)
	}
}

// eventuallyOwner waits until ip maps to the pod with uid ("" for none).
func (c *cluster) eventuallyOwner(ip string, uid types.UID) {
	c.t.Helper()
	addr := netip.MustParseAddr(ip)
	require.Eventually(c.t, func() bool {
		pod, ok := c.ix.PodByIP(addr, 0)
		if uid == "" {
			return !ok
		}
		return ok && pod.UID == string(uid)
	}, waitFor, tick, "%s should map to %q", ip, uid)
}

// consistentlyOwner checks that ip keeps mapping to uid for a while.
func (c *cluster) consistentlyOwner(ip string, uid types.UID) {
	c.t.Helper()
	addr := netip.MustParseAddr(ip)
	for range 20 {
		pod, ok := c.ix.PodByIP(addr, 0)
		require.True(c.t, ok, "%s lost its owner", ip)
		require.Equal(c.t, string(uid), pod.UID)
		time.Sleep(tick)
	}
}

func TestNodePods(t *testing.T) {
	c := startCluster(t)

	a := c.createPod("web-a", "node-a", []string{"10.244.0.10"})
	b := c.createPod("web-b", "node-b", []string{"10.244.1.10"})
	host := c.createPod("host", "node-a", []string{"10.0.0.4"}, func(p *corev1.Pod) { p.Spec.HostNetwork = true })
	pending := c.createPod("pending", "node-a", nil)

	c.eventuallyOwner("10.244.0.10", a.UID)
	pod, ok := c.ix.PodByIP(netip.MustParseAddr("10.244.0.10"), 0)
	require.True(t, ok)
	assert.Equal(t, ns, pod.Namespace)
	assert.Equal(t, "web-a", pod.Name)
	assert.Equal(t, "app", pod.ServiceAccount)
	assert.Equal(t, map[string]string{"aadpodidbinding": "web"}, pod.Labels)

	require.Eventually(t, func() bool { _, ok := c.ix.PodByName(ns, "host"); return ok }, waitFor, tick)
	require.Eventually(t, func() bool { _, ok := c.ix.PodByName(ns, "pending"); return ok }, waitFor, tick)
	got, _ := c.ix.PodByName(ns, "host")
	assert.Equal(t, string(host.UID), got.UID)
	got, _ = c.ix.PodByName(ns, "pending")
	assert.Equal(t, string(pending.UID), got.UID)

	// node-b's pod and the host-network pod are never found by address.
	_, ok = c.ix.PodByIP(netip.MustParseAddr("10.244.1.10"), 0)
	assert.False(t, ok, "a pod of another node was found by IP")
	_, ok = c.ix.PodByName(ns, b.Name)
	assert.False(t, ok, "a pod of another node was found by name")
	_, ok = c.ix.PodByIP(netip.MustParseAddr("10.0.0.4"), 0)
	assert.False(t, ok, "a host-network pod was found by the node's IP")

	// A pod that has finished is not found by address, only by name.
	done := c.createPod("job", "node-a", []string{"10.244.0.11"})
	c.eventuallyOwner("10.244.0.11", done.UID)
	c.setStatus(done, corev1.PodSucceeded, []string{"10.244.0.11"})
	c.eventuallyOwner("10.244.0.11", "")
	_, ok = c.ix.PodByName(ns, "job")
	assert.True(t, ok)

	// Deleted pods go away.
	c.deletePod("web-a")
	c.eventuallyOwner("10.244.0.10", "")
	require.Eventually(t, func() bool { _, ok := c.ix.PodByName(ns, "web-a"); return !ok }, waitFor, tick)
}

func TestDualStack(t *testing.T) {
	c := startCluster(t)
	p := c.createPod("dual", "node-a", []string{"fd00:10:244::5", "10.244.0.5"})
	c.eventuallyOwner("fd00:10:244::5", p.UID)
	c.eventuallyOwner("10.244.0.5", p.UID)
	// A request on a dual-stack listener shows IPv4 as IPv4-mapped IPv6.
	c.eventuallyOwner("::ffff:10.244.0.5", p.UID)
	c.deletePod("dual")
	c.eventuallyOwner("fd00:10:244::5", "")
	c.eventuallyOwner("10.244.0.5", "")
}

func TestIPReuse(t *testing.T) {
	c := startCluster(t)
	const ip = "10.244.0.5"

	t.Run("old pod deleted first", func(t *testing.T) {
		c.t = t
		pod1 := c.createPod("reuse-a1", "node-a", []string{ip})
		c.eventuallyOwner(ip, pod1.UID)
		c.deletePod("reuse-a1")
		c.eventuallyOwner(ip, "")
		pod2 := c.createPod("reuse-a2", "node-a", []string{ip})
		c.eventuallyOwner(ip, pod2.UID)
		c.deletePod("reuse-a2")
		c.eventuallyOwner(ip, "")
	})

	t.Run("new pod seen before the old pod's delete", func(t *testing.T) {
		c.t = t
		pod1 := c.createPod("reuse-b1", "node-a", []string{ip})
		c.eventuallyOwner(ip, pod1.UID)
		pod2 := c.createPod("reuse-b2", "node-a", []string{ip})
		c.eventuallyOwner(ip, pod2.UID)
		// A late update of the old pod does not take the address back.
		pod1.Labels["late"] = "update"
		_, err := c.client.CoreV1().Pods(ns).Update(c.ctx, pod1, metav1.UpdateOptions{})
		require.NoError(t, err)
		c.deletePod("reuse-b1")
		require.Eventually(t, func() bool { _, ok := c.ix.PodByName(ns, "reuse-b1"); return !ok }, waitFor, tick)
		c.consistentlyOwner(ip, pod2.UID)
		c.deletePod("reuse-b2")
		c.eventuallyOwner(ip, "")
	})

	t.Run("old pod terminating", func(t *testing.T) {
		c.t = t
		pod1 := c.createPod("reuse-c1", "node-a", []string{ip})
		c.eventuallyOwner(ip, pod1.UID)
		// A graceful delete of a pod bound to a node only marks it: the
		// object stays, terminating, until kubelet confirms.
		require.NoError(t, c.client.CoreV1().Pods(ns).Delete(c.ctx, "reuse-c1", metav1.DeleteOptions{}))
		pod2 := c.createPod("reuse-c2", "node-a", []string{ip})
		c.eventuallyOwner(ip, pod2.UID)
		// The terminating pod's status is written again after the new pod
		// got the address; it still does not win.
		cur, err := c.client.CoreV1().Pods(ns).Get(c.ctx, "reuse-c1", metav1.GetOptions{})
		require.NoError(t, err)
		require.NotNil(t, cur.DeletionTimestamp)
		cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse})
		_, err = c.client.CoreV1().Pods(ns).UpdateStatus(c.ctx, cur, metav1.UpdateOptions{})
		require.NoError(t, err)
		c.consistentlyOwner(ip, pod2.UID)
		c.deletePod("reuse-c1")
		require.Eventually(t, func() bool { _, ok := c.ix.PodByName(ns, "reuse-c1"); return !ok }, waitFor, tick)
		c.consistentlyOwner(ip, pod2.UID)
		c.deletePod("reuse-c2")
		c.eventuallyOwner(ip, "")
	})
}

// TestChurn creates and deletes 100 pods from four goroutines, reusing a
// small pool of addresses, and checks that the index ends up matching the
// pods that remain.
func TestChurn(t *testing.T) {
	c := startCluster(t)
	const pods, workers = 100, 4
	ipOf := func(i int) string { return fmt.Sprintf("10.244.2.%d", i%25+1) }

	errs := make(chan error, pods)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < pods; i += workers {
				if err := c.churnPod(i, ipOf(i), i < pods-25); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	list, err := c.client.CoreV1().Pods(ns).List(c.ctx, metav1.ListOptions{})
	require.NoError(t, err)
	want := map[string]types.UID{}
	for _, p := range list.Items {
		if p.Status.PodIP != "" {
			want[p.Status.PodIP] = p.UID
		}
	}
	require.Len(t, want, 25)
	for ip, uid := range want {
		c.eventuallyOwner(ip, uid)
	}
	require.Eventually(t, func() bool {
		c.ix.mu.RLock()
		defer c.ix.mu.RUnlock()
		return len(c.ix.byUID) == len(list.Items) && len(c.ix.byIP) == 25
	}, waitFor, tick)
}

// churnPod creates pod churn-i with ip and, if del, deletes it at once. It
// runs outside the test goroutine, so it returns errors.
func (c *cluster) churnPod(i int, ip string, del bool) error {
	name := fmt.Sprintf("churn-%d", i)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName:                     "node-a",
			ServiceAccountName:           "app",
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "registry.example/app:1"}},
		},
	}
	pods := c.client.CoreV1().Pods(ns)
	pod, err := pods.Create(c.ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	if _, err := pods.UpdateStatus(c.ctx, pod, metav1.UpdateOptions{}); err != nil {
		return err
	}
	if !del {
		return nil
	}
	return pods.Delete(c.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
}
