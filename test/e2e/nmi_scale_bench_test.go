package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kvnode/kvnode/pkg/bindings"
	"github.com/kvnode/kvnode/test/controlplane"
)

// The big cluster of BenchmarkNMIClusterScale. One ServiceAccount in
// scaleAnnotatedEvery carries a workload-identity client ID; pods are spread
// over scaleNodes nodes, scaleNodePods of them on nmi's.
const (
	scaleNamespaces      = 500
	scaleServiceAccounts = 50_000
	scaleAnnotatedEvery  = 10
	scalePods            = 5_000
	scaleNodePods        = 110
	scaleNodes           = 50
	scaleAzureIdentities = 1_000
	// targetScaleRSS is the most nmi may hold there, in MiB.
	targetScaleRSS = 20.0
	// scaleSettle is how long nmi runs after it is ready before its memory
	// is read: the initial lists' garbage has been collected by then.
	scaleSettle = 20 * time.Second
)

// BenchmarkNMIClusterScale measures what nmi costs on a big cluster: it runs
// nmi against an empty API server (the baseline, same run), then fills the
// API server with 50,000 ServiceAccounts, 5,000 pods (110 on nmi's node) and
// 1,000 AzureIdentities with a binding each, and runs nmi again. For each it
// reports the time from start to ready, the bytes nmi read from the API
// server until ready (its lists) and in the settle window after (its
// watches), its RSS after the window and its peak RSS, each as a ratio to
// the empty cluster's, and the RSS against its target. nmi reaches the API
// server through a TCP proxy that counts the bytes (TLS records: a few
// percent more than the HTTP bodies).
func BenchmarkNMIClusterScale(b *testing.B) {
	requireNode(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cp, emu := startNode(b)
	proxy := startCountingProxy(b, cp.Config.Host)

	var nmi *nmiProcess
	pprofAddr := freeLoopbackAddr(b)
	run := func(label string) scaleFigures {
		proxy.reset()
		start := time.Now()
		if nmi == nil {
			nmi = startNMIVia(b, cp, emu, proxy.url, "-v", "1", "--pprof-addr", pprofAddr)
		} else {
			nmi.launch(b)
		}
		require.Eventually(b, func() bool {
			status, _ := nmi.get(b, "/readyz")
			return status == http.StatusOK
		}, 5*time.Minute, 20*time.Millisecond, "nmi never became ready")
		f := scaleFigures{ready: time.Since(start), listed: proxy.fromServer.Load()}
		time.Sleep(scaleSettle)
		f.watched = proxy.fromServer.Load() - f.listed
		f.mem = processMemory(b, nmi.cmd.Process.Pid)
		f.heap = nmi.metric(b, "go_memstats_heap_inuse_bytes") / (1 << 20)
		profile := heapProfile(b, pprofAddr)
		nmi.stop(b)
		// On stdout: the framework keeps only the first lines of a
		// benchmark's log.
		fmt.Printf("\n%s: ready after %v, read %d bytes until ready and %d in the %v after, RSS %.1f MiB (anonymous %.1f, file-backed %.1f; peak %.1f), heap in use %.1f MiB; live heap after a GC:\n%s",
			label, f.ready.Round(time.Millisecond), f.listed, f.watched, scaleSettle, f.mem.rss, f.mem.anon, f.mem.file, f.mem.peak, f.heap, profile)
		return f
	}

	for b.Loop() {
		empty := run("empty cluster")
		filled := time.Now()
		fillCluster(ctx, b, cp)
		b.Logf("filled the API server in %v", time.Since(filled).Round(time.Second))
		big := run("big cluster")

		fmt.Printf("\nnmi on a cluster of %d ServiceAccounts (1 in %d annotated), %d pods (%d on its node), %d AzureIdentities and bindings; ratios to an empty cluster, same run:\n",
			scaleServiceAccounts, scaleAnnotatedEvery, scalePods, scaleNodePods, scaleAzureIdentities)
		fmt.Printf("  start to ready   %8.0f ms  (empty %6.0f ms, %.1fx)\n", ms(big.ready), ms(empty.ready), ms(big.ready)/ms(empty.ready))
		fmt.Printf("  bytes listed     %8.1f MiB (empty %6.3f MiB, %.0fx)\n", mib(big.listed), mib(empty.listed), float64(big.listed)/float64(empty.listed))
		fmt.Printf("  bytes watched    %8.1f KiB in %v (empty %.1f KiB)\n", kib(big.watched), scaleSettle, kib(empty.watched))
		fmt.Printf("  RSS              %8.1f MiB (empty %6.1f MiB, %.2fx)  target <= %.0f MiB: %s\n", big.mem.rss, empty.mem.rss, big.mem.rss/empty.mem.rss, targetScaleRSS, meets(big.mem.rss <= targetScaleRSS))
		fmt.Printf("    anonymous      %8.1f MiB (empty %6.1f MiB, %.2fx)  target <= %.0f MiB: %s\n", big.mem.anon, empty.mem.anon, big.mem.anon/empty.mem.anon, targetScaleRSS, meets(big.mem.anon <= targetScaleRSS))
		fmt.Printf("    file-backed    %8.1f MiB (empty %6.1f MiB): the binary's pages, shared and reclaimable\n", big.mem.file, empty.mem.file)
		fmt.Printf("  peak RSS         %8.1f MiB (empty %6.1f MiB, %.2fx)\n", big.mem.peak, empty.mem.peak, big.mem.peak/empty.mem.peak)
		fmt.Printf("  heap in use      %8.1f MiB (empty %6.1f MiB)\n", big.heap, empty.heap)
		b.ReportMetric(big.mem.rss, "rss-MiB")
		b.ReportMetric(big.mem.anon, "anon-rss-MiB")
		b.ReportMetric(big.mem.peak, "peak-rss-MiB")
		b.ReportMetric(ms(big.ready), "ready-ms")
		b.ReportMetric(mib(big.listed), "listed-MiB")
	}
}

type scaleFigures struct {
	ready           time.Duration
	listed, watched int64
	mem             memoryFigures
	heap            float64 // MiB
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
func kib(n int64) float64 { return float64(n) / (1 << 10) }

func meets(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

// memoryFigures are a process's resident set (VmRSS), its anonymous and
// file-backed parts (RssAnon, RssFile) and its peak (VmHWM), in MiB.
type memoryFigures struct{ rss, anon, file, peak float64 }

// processMemory reads a process's memoryFigures from /proc.
func processMemory(t testing.TB, pid int) memoryFigures {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	var m memoryFigures
	fields := map[string]*float64{"VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file, "VmHWM:": &m.peak}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" || fields[f[0]] == nil {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		require.NoError(t, err)
		*fields[f[0]] = v / 1024
	}
	require.NotZero(t, m.rss, "no VmRSS in /proc/%d/status", pid)
	return m
}

// fillCluster creates the big cluster's objects, 32 requests at a time.
func fillCluster(ctx context.Context, t testing.TB, cp *controlplane.ControlPlane) {
	t.Helper()
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = -1, 0 // no client-side rate limit
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	ns := func(i int) string { return fmt.Sprintf("scale-%03d", i%scaleNamespaces) }
	each := func(n int, create func(ctx context.Context, i int) error) {
		g, ctx := errgroup.WithContext(ctx)
		g.SetLimit(32)
		for i := range n {
			g.Go(func() error { return create(ctx, i) })
		}
		require.NoError(t, g.Wait())
	}
	each(scaleNamespaces, func(ctx context.Context, i int) error {
		_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns(i)}}, metav1.CreateOptions{})
		return err
	})
	// ServiceAccount i lives in namespace i%500 and is named sa-i.
	each(scaleServiceAccounts, func(ctx context.Context, i int) error {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns(i), Name: fmt.Sprintf("sa-%d", i),
			Labels: map[string]string{"app.kubernetes.io/name": fmt.Sprintf("app-%d", i%97), "team": fmt.Sprintf("team-%d", i%13)}}}
		if i%scaleAnnotatedEvery == 0 {
			sa.Annotations = map[string]string{bindings.ClientIDAnnotation: fmt.Sprintf("5ca1e000-0000-4000-8000-%012d", i)}
		}
		_, err := client.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, sa, metav1.CreateOptions{})
		return err
	})
	// Pod i runs as ServiceAccount i (same namespace); the first
	// scaleNodePods run on nmi's node and report an address.
	each(scalePods, func(ctx context.Context, i int) error {
		node := fmt.Sprintf("node-%d", 2+i%scaleNodes)
		if i < scaleNodePods {
			node = nmiNodeName
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns(i), Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{bindings.SelectorLabel: fmt.Sprintf("id-%d", i%scaleAzureIdentities), "app.kubernetes.io/name": fmt.Sprintf("app-%d", i%97)}},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: fmt.Sprintf("sa-%d", i),
				Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1.0",
					Env:       []corev1.EnvVar{{Name: "AZURE_CLIENT_ID", Value: "5ca1e000-0000-4000-8000-000000000000"}},
					Resources: corev1.ResourceRequirements{}}}},
		}
		created, err := client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil || i >= scaleNodePods {
			return err
		}
		ip := fmt.Sprintf("10.245.%d.%d", i/200, 2+i%200)
		created.Status.Phase = corev1.PodRunning
		created.Status.PodIP, created.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		_, err = client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	// AzureIdentity id-i and its binding, selecting pods labelled id-i.
	each(scaleAzureIdentities, func(ctx context.Context, i int) error {
		name := fmt.Sprintf("id-%d", i)
		id := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": bindings.GroupName + "/v1", "kind": "AzureIdentity",
			"metadata": map[string]any{"name": name, "namespace": ns(i)},
			"spec": map[string]any{"type": int64(0), "clientID": fmt.Sprintf("1d1d1d1d-0000-4000-8000-%012d", i),
				"resourceID": fmt.Sprintf("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/%s", name)},
		}}
		if _, err := dyn.Resource(bindings.AzureIdentitiesResource).Namespace(ns(i)).Create(ctx, id, metav1.CreateOptions{}); err != nil {
			return err
		}
		binding := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": bindings.GroupName + "/v1", "kind": "AzureIdentityBinding",
			"metadata": map[string]any{"name": name + "-binding", "namespace": ns(i)},
			"spec":     map[string]any{"azureIdentity": name, "selector": name},
		}}
		_, err := dyn.Resource(bindings.AzureIdentityBindingsResource).Namespace(ns(i)).Create(ctx, binding, metav1.CreateOptions{})
		return err
	})
}

// countingProxy forwards TCP connections to the API server and counts the
// bytes that come back.
type countingProxy struct {
	url        string
	fromServer atomic.Int64
}

func (p *countingProxy) reset() { p.fromServer.Store(0) }

func startCountingProxy(t testing.TB, apiServer string) *countingProxy {
	t.Helper()
	u, err := url.Parse(apiServer)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	p := &countingProxy{url: "https://" + ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer s.Close()
				go func() { _, _ = io.Copy(s, c); _ = s.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(countingWriter{c, &p.fromServer}, s)
			}()
		}
	}()
	return p
}

// countingWriter adds what it writes to n as it goes, so that a long-lived
// watch connection is counted before it ends.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// heapProfile forces a GC in the daemon serving pprof at pprofAddr
// (pprof's gc=1) and returns the top of its live heap by bytes.
func heapProfile(t testing.TB, pprofAddr string) string {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + pprofAddr + "/debug/pprof/heap?gc=1")
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", data)
	file := filepath.Join(t.TempDir(), "heap.pprof")
	require.NoError(t, os.WriteFile(file, data, 0o600))
	out, err := exec.Command("go", "tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount", "25", file).CombinedOutput()
	require.NoError(t, err, "go tool pprof: %s", out)
	return string(out)
}
