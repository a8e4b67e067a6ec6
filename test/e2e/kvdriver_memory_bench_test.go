package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/controlplane"
)

// The figures of BenchmarkKVDriverClusterScale.
const (
	memClasses    = 2000
	memNamespaces = 100
	memVolumes    = 500
	// targetKVDriverRSS is the target for kvdriver's RSS with memVolumes
	// mounted and memClasses in the cluster.
	targetKVDriverRSS = 30.0
)

// BenchmarkKVDriverClusterScale measures kvdriver's memory on a busy node
// of a big cluster: memClasses SecretProviderClasses in memNamespaces
// namespaces (5 objects each, created with kubectl's last-applied
// annotation, as `kubectl apply` leaves them), and memVolumes volumes
// mounted on the node. The baseline, in the same run, is a kvdriver on the
// same control plane before the classes exist, with nothing mounted.
// Reported: RSS, its anonymous and file-backed parts, the peak, and the Go
// heap in use, each next to the baseline and the target. Run it alone:
//
//	make bench BENCH=KVDriverClusterScale BENCH_PKGS=./test/e2e
func BenchmarkKVDriverClusterScale(b *testing.B) {
	cp, emu := startScaleNode(b)
	measure := func(e *driverEnv) (memoryFigures, float64) {
		time.Sleep(2 * time.Second) // let the GC and the scavenger settle
		return processMemory(b, e.proc.Process.Pid), e.metric(b, "go_memstats_heap_inuse_bytes", nil) / (1 << 20)
	}
	for b.Loop() {
		idle := startScaleDriver(b, cp, emu, "node-idle", time.Minute)
		empty, emptyHeap := measure(idle)
		require.NoError(b, idle.proc.Process.Signal(syscall.SIGTERM))
		<-idle.exited

		start := time.Now()
		fillClasses(b, cp)
		b.Logf("created %d SecretProviderClasses in %v", memClasses, time.Since(start).Round(time.Millisecond))

		pprofAddr := freeLoopbackAddr(b)
		e := startKVDriver(b, cp, emu, "--nodeid", "node-1", "--object-cache-ttl", "1m", "--rotation-poll-interval", "0s", "-v", "1", "--pprof-addr", pprofAddr)
		e.waitForClasses(b, scaleNamespace)
		reqs := e.scaleVolumes(b, "mem", memVolumes)
		start = time.Now()
		d, err := e.publishAll(reqs, kubeletParallel)
		require.NoError(b, err)
		b.Logf("published %d volumes in %v (p50 %v)", memVolumes, time.Since(start).Round(time.Millisecond), d.pct(0.5))
		require.Equal(b, memVolumes, e.tmpfsCount(b))
		// A round of kubelet's republish, so that every volume's state
		// (rotation times, status, events) exists as it would on a node.
		_, err = e.publishAll(reqs, kubeletParallel)
		require.NoError(b, err)
		busy, busyHeap := measure(e)
		profile := heapProfile(b, pprofAddr)
		e.unpublishAll(b, reqs)

		fmt.Printf("\nkvdriver with %d volumes mounted and %d SecretProviderClasses in the cluster; ratios to an idle kvdriver on an empty cluster, same run:\n",
			memVolumes, memClasses)
		fmt.Printf("  RSS              %8.1f MiB (idle %6.1f MiB, %.2fx)  target <= %.0f MiB: %s\n", busy.rss, empty.rss, busy.rss/empty.rss, targetKVDriverRSS, meets(busy.rss <= targetKVDriverRSS))
		fmt.Printf("    anonymous      %8.1f MiB (idle %6.1f MiB, %.2fx)\n", busy.anon, empty.anon, busy.anon/empty.anon)
		fmt.Printf("    file-backed    %8.1f MiB (idle %6.1f MiB): the binary's pages, shared and reclaimable\n", busy.file, empty.file)
		fmt.Printf("  peak RSS         %8.1f MiB (idle %6.1f MiB, %.2fx)\n", busy.peak, empty.peak, busy.peak/empty.peak)
		fmt.Printf("  heap in use      %8.1f MiB (idle %6.1f MiB)\n", busyHeap, emptyHeap)
		fmt.Printf("kvdriver's live heap after a GC:\n%s", profile)
		b.ReportMetric(busy.rss, "rss-MiB")
		b.ReportMetric(busy.anon, "anon-rss-MiB")
		b.ReportMetric(busy.peak, "peak-rss-MiB")
		b.ReportMetric(busyHeap, "heap-MiB")
	}
}

// fillClasses creates memClasses SecretProviderClasses, 32 requests at a
// time, as kubectl apply writes them: each carries its whole manifest again
// in the last-applied-configuration annotation.
func fillClasses(b *testing.B, cp *controlplane.ControlPlane) {
	b.Helper()
	c := rest.CopyConfig(cp.Config)
	c.QPS, c.Burst = -1, 0
	dyn, err := dynamic.NewForConfig(c)
	require.NoError(b, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := range memNamespaces {
		require.NoError(b, cp.EnsureNamespace(ctx, fmt.Sprintf("spc-%03d", i)))
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range memClasses {
		g.Go(func() error {
			u := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": spc.SchemeGroupVersion.String(), "kind": "SecretProviderClass",
				"metadata": map[string]any{"namespace": fmt.Sprintf("spc-%03d", i%memNamespaces), "name": fmt.Sprintf("class-%04d", i)},
				"spec": map[string]any{"provider": "azure", "parameters": map[string]any{
					"keyvaultName": e2eVault, "tenantId": e2eTenant, "objects": fiveObjects,
					"clientID": fmt.Sprintf("00000000-0000-4000-8000-%012d", i)}},
			}}
			manifest, err := json.Marshal(u.Object)
			if err != nil {
				return err
			}
			u.SetAnnotations(map[string]string{"kubectl.kubernetes.io/last-applied-configuration": string(manifest)})
			_, err = dyn.Resource(spc.SecretProviderClassesResource).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{})
			return err
		})
	}
	require.NoError(b, g.Wait())
}
