package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/client-go/dynamic"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

// The cost-at-scale benchmarks: what N pods sharing an identity and a
// 5-object class (fiveObjects) cost Key Vault through kvdriver's object
// cache, next to the upstream Azure provider's one GET per object per pod
// per rotation (5 x N). Each is a load test with a fixed schedule: setup
// happens in the parent, which the framework calls once because it has
// sub-benchmarks, and each sub-benchmark runs its load on its first call
// and only reports the same figures on any later one, whatever b.N; ns/op
// is the time of the schedule, not of a request. They assert what must be
// exact (the files hold the rotated value, one GET per object in a cold
// burst, nothing left mounted) and no timing.

const (
	scaleNamespace = "scale"
	scaleClass     = "five"
	// scaleObjects is the number of objects in fiveObjects: upstream's GETs
	// per pod per rotation.
	scaleObjects = 5
	// kubeletParallel is how many volume operations one node runs at once:
	// kubelet republishes the volumes of different pods in parallel.
	kubeletParallel = 8
	// scaleCallTimeout bounds each CSI call; a publish that needs it is a
	// failure, not a figure.
	scaleCallTimeout = time.Minute
)

// fiveObjectNames are the emulator's Request.Object of fiveObjects' objects.
var fiveObjectNames = []string{"secrets/db-password", "secrets/api-key", "secrets/history", "keys/rsa-key", "secrets/web-tls"}

// startScaleNode starts what the scale benchmarks share: a control plane
// with the CRDs, the emulator with the e2e vault, and the class in
// scaleNamespace. No kvdriver runs yet.
func startScaleNode(b *testing.B) (*controlplane.ControlPlane, *emulator.Emulator) {
	b.Helper()
	testenv.RequireNetns(b)
	cp, emu := startNode(b)
	// seedVault needs only the control plane's issuer and the emulator.
	seedVault(b, &driverEnv{cp: cp, emu: emu})
	require.NoError(b, cp.EnsureNamespace(context.Background(), scaleNamespace))
	dyn, err := dynamic.NewForConfig(cp.Config)
	require.NoError(b, err)
	(&driverEnv{cp: cp, emu: emu, dyn: dyn}).createClass(b, scaleNamespace, scaleClass,
		map[string]string{"keyvaultName": e2eVault, "tenantId": e2eTenant, "objects": fiveObjects})
	return cp, emu
}

// startScaleDriver starts kvdriver as node nodeID with the object cache
// TTL ttl and a rotation at every republish, and waits until its informer
// has the class. It logs at -v 1: the scale loads would otherwise fill the
// test's memory with kvdriver's debug lines.
func startScaleDriver(b *testing.B, cp *controlplane.ControlPlane, emu *emulator.Emulator, nodeID string, ttl time.Duration) *driverEnv {
	b.Helper()
	e := startKVDriver(b, cp, emu, "--nodeid", nodeID, "--object-cache-ttl", ttl.String(), "--rotation-poll-interval", "0s", "-v", "1")
	e.waitForClasses(b, scaleNamespace)
	return e
}

// scaleVolumes creates n pods named prefix-<i> and returns what kubelet
// sends to publish their volume of the class with the service principal.
func (e *driverEnv) scaleVolumes(b *testing.B, prefix string, n int) []*csipb.NodePublishVolumeRequest {
	b.Helper()
	reqs := make([]*csipb.NodePublishVolumeRequest, n)
	for i := range reqs {
		pod := e.createPod(b, scaleNamespace, fmt.Sprintf("%s-%d", prefix, i), "app")
		reqs[i] = e.publishRequest(pod, "secrets", scaleClass, spCredentials(spClientID, spSecret), "")
		mkTargetParent(b, reqs[i].TargetPath)
	}
	return reqs
}

// publishAll publishes reqs, parallel at a time (all at once when parallel
// is len(reqs): each call waits for the others to be ready), and returns
// each call's latency. It runs on goroutines, so it reports the first
// failure instead of failing the benchmark itself.
func (e *driverEnv) publishAll(reqs []*csipb.NodePublishVolumeRequest, parallel int) (durations, error) {
	d := make(durations, len(reqs))
	errs := make([]error, len(reqs))
	next := make(chan int, len(reqs))
	for i := range reqs {
		next <- i
	}
	close(next)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(parallel)
	for range parallel {
		done.Add(1)
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), scaleCallTimeout)
				t0 := time.Now()
				_, errs[i] = e.node.NodePublishVolume(ctx, reqs[i])
				d[i] = time.Since(t0)
				cancel()
			}
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	for i, err := range errs {
		if err != nil {
			return d, fmt.Errorf("publish %s: %w", reqs[i].TargetPath, err)
		}
	}
	return d, nil
}

// unpublishAll unpublishes reqs as kubelet does when the pods go, and
// checks that no tmpfs is left under the node's kubelet root.
func (e *driverEnv) unpublishAll(b *testing.B, reqs []*csipb.NodePublishVolumeRequest) {
	b.Helper()
	for _, r := range reqs {
		ctx, cancel := context.WithTimeout(context.Background(), scaleCallTimeout)
		_, err := e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: r.VolumeId, TargetPath: r.TargetPath})
		cancel()
		require.NoError(b, err, "unpublish %s", r.TargetPath)
	}
	assert.Zero(b, e.tmpfsCount(b), "tmpfs mounts left under the kubelet root after every volume was unpublished")
}

// tmpfsCount is the number of tmpfs mounts under the node's kubelet root.
func (e *driverEnv) tmpfsCount(b *testing.B) int {
	b.Helper()
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	require.NoError(b, err)
	n := 0
	for _, m := range mounts {
		if m.FsType == "tmpfs" && strings.HasPrefix(m.MountPoint, e.kubelet+string(filepath.Separator)) {
			n++
		}
	}
	return n
}

// rssMiB is the resident set of the kvdriver process (VmRSS), in MiB.
func (e *driverEnv) rssMiB(b *testing.B) float64 {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.proc.Process.Pid))
	require.NoError(b, err)
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.Atoi(f[1])
			require.NoError(b, err)
			return float64(kb) / 1024
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", e.proc.Process.Pid)
	return 0
}

// requireFile checks every volume's file name holds want.
func requireFile(b *testing.B, reqs []*csipb.NodePublishVolumeRequest, name, want string) {
	b.Helper()
	for _, r := range reqs {
		got, err := os.ReadFile(filepath.Join(r.TargetPath, name))
		require.NoError(b, err)
		require.Equal(b, want, string(got), "%s in %s", name, r.TargetPath)
	}
}

// kvGETs counts the Key Vault GETs answered 200 since t: the objects
// actually fetched (401 challenges and 429s are counted apart).
func kvGETs(emu *emulator.Emulator, since time.Time) int {
	return emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Method: http.MethodGet, Status: http.StatusOK, Since: since})
}

// peakInWindow is the most of times (sorted) that fall in any window of
// length w: what a sliding-window limit like Key Vault's sees at its worst.
func peakInWindow(times []time.Time, w time.Duration) int {
	peak, lo := 0, 0
	for hi := range times {
		for times[hi].Sub(times[lo]) >= w {
			lo++
		}
		peak = max(peak, hi-lo+1)
	}
	return peak
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rotationSizes are the pods on one node of BenchmarkKVDriverRotationCost.
var rotationSizes = []int{1, 10, 100, 500}

const (
	// rotationTTL is kvdriver's object cache TTL in the rotation
	// benchmark: long enough that republishing 500 volumes fits in one
	// TTL on a loaded two-core machine, so that a cycle's count is one
	// rotation's and not one and a bit.
	rotationTTL = 5 * time.Second
	// rotationCycles is the number of rotations after the cold publish;
	// rotatedCycle is the one during which a secret gets a new version.
	rotationCycles = 4
	rotatedCycle   = 1
)

// rotationResult is what one size of BenchmarkKVDriverRotationCost
// measured.
type rotationResult struct {
	coldGETs, cold401, coldTokens int
	coldTook                      time.Duration
	cycleGETs                     []int
	cycleTook                     []time.Duration
	republish                     durations
	rssIdle, rssMounted           float64
}

// BenchmarkKVDriverRotationCost measures Key Vault GETs per rotation for
// N pods on one node (one kvdriver over its CSI socket) sharing a service
// principal and a 5-object class. Each N gets a new kvdriver with
// --object-cache-ttl 5s and --rotation-poll-interval 0: every volume is
// published (cold), then in each of four cycles the benchmark waits out the
// TTL after the previous cycle ended and republishes every volume, as
// kubelet does about once a minute, kubeletParallel at a time. Reported per
// N: GETs per cycle (mean; each cycle in the log), the upstream figure 5 x N
// and their ratio, the cold publish's GETs, the republish p50/p95, and
// kvdriver's RSS with no volume and with the N volumes mounted.
//
// During the second cycle db-password gets a new version: every pod's file
// must show it after that cycle. A cycle that ends within the TTL must cost
// exactly one GET per object; a longer one (a slow machine) may cost more,
// which is reported, not failed. At the end every volume is unpublished and
// no tmpfs may be left.
func BenchmarkKVDriverRotationCost(b *testing.B) {
	cp, emu := startScaleNode(b)
	results := map[int]*rotationResult{}
	for _, n := range rotationSizes {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			r, ok := results[n]
			if !ok {
				r = runRotationCost(b, cp, emu, n)
				results[n] = r
				// Here, not in the parent: the framework prints a
				// parent benchmark's log only with -v.
				b.Log(rotationTable(results))
			}
			perCycle := float64(sumInts(r.cycleGETs)) / float64(len(r.cycleGETs))
			upstream := float64(scaleObjects * n)
			b.ReportMetric(perCycle, "GETs/cycle")
			b.ReportMetric(upstream, "upstream-GETs/cycle")
			b.ReportMetric(upstream/perCycle, "upstream/kvnode")
			b.ReportMetric(float64(r.coldGETs), "cold-GETs")
			b.ReportMetric(ms(r.republish.pct(0.5)), "republish-p50-ms")
			b.ReportMetric(ms(r.republish.pct(0.95)), "republish-p95-ms")
			b.ReportMetric(r.rssIdle, "rss-0-vols-MiB")
			b.ReportMetric(r.rssMounted, "rss-mounted-MiB")
		})
	}
}

// rotationTable is the figures of the sizes measured so far, one line each.
func rotationTable(results map[int]*rotationResult) string {
	rows := []string{fmt.Sprintf("GETs per rotation on one node, one identity, 5-object class, cache TTL %v:", rotationTTL),
		" pods cold-GETs GETs/cycle    upstream/cycle upstream/kvnode cycle-took-ms     rss-0-MiB rss-N-MiB"}
	for _, n := range rotationSizes {
		r, ok := results[n]
		if !ok {
			continue
		}
		rows = append(rows, fmt.Sprintf("%5d %9d %-13s %14d %15.1f %-17s %9.1f %9.1f",
			n, r.coldGETs, fmt.Sprint(r.cycleGETs), scaleObjects*n, float64(scaleObjects*n*len(r.cycleGETs))/float64(sumInts(r.cycleGETs)),
			fmt.Sprint(durationsMs(r.cycleTook)), r.rssIdle, r.rssMounted))
	}
	return strings.Join(rows, "\n")
}

func runRotationCost(b *testing.B, cp *controlplane.ControlPlane, emu *emulator.Emulator, n int) *rotationResult {
	r := &rotationResult{}
	e := startScaleDriver(b, cp, emu, "node-1", rotationTTL)
	r.rssIdle = e.rssMiB(b)
	reqs := e.scaleVolumes(b, fmt.Sprintf("rot%d", n), n)

	tokens := func(since time.Time) int {
		return emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: http.MethodPost, Since: since})
	}
	start := time.Now()
	_, err := e.publishAll(reqs, kubeletParallel)
	require.NoError(b, err)
	r.coldTook = time.Since(start)
	r.coldGETs = kvGETs(emu, start)
	r.cold401 = emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Status: http.StatusUnauthorized, Since: start})
	r.coldTokens = tokens(start)
	if r.coldTook < rotationTTL {
		require.Equal(b, scaleObjects, r.coldGETs, "a cold publish of %d volumes within the cache TTL fetches each object once", n)
	}
	requireFile(b, reqs, "db-password", dbPassword2)
	b.Logf("pods=%d: cold publish took %v: %d GETs, %d 401 challenges, %d Entra ID token requests",
		n, r.coldTook.Round(time.Millisecond), r.coldGETs, r.cold401, r.coldTokens)

	want := dbPassword2
	for c := range rotationCycles {
		// Every cached object has expired: the last fetch was before the
		// previous cycle ended.
		time.Sleep(rotationTTL + 250*time.Millisecond)
		if c == rotatedCycle {
			want = fmt.Sprintf("db-password rotated before cycle %d of %d pods", c, n)
			_, err := emu.SetSecret(e2eVault, "db-password", want, emulator.SecretOptions{})
			require.NoError(b, err)
		}
		fetchesBefore := e.metric(b, "kvnode_keyvault_object_cache_fetches_total", nil)
		start := time.Now()
		d, err := e.publishAll(reqs, kubeletParallel)
		require.NoError(b, err)
		took := time.Since(start)
		gets := kvGETs(emu, start)
		r.cycleGETs, r.cycleTook = append(r.cycleGETs, gets), append(r.cycleTook, took)
		r.republish = append(r.republish, d...)
		if took < rotationTTL {
			require.Equal(b, scaleObjects, gets, "cycle %d: republishing %d volumes within the cache TTL fetches each object once", c, n)
		} else {
			b.Logf("pods=%d cycle %d took %v, longer than the cache TTL: its %d GETs include refetches", n, c, took, gets)
		}
		// kvdriver's own count of what it fetched agrees with the vault's.
		assert.Equal(b, float64(gets), e.metric(b, "kvnode_keyvault_object_cache_fetches_total", nil)-fetchesBefore, "cycle %d: object cache fetches", c)
		// A benchmark of stale files would measure nothing.
		requireFile(b, reqs, "db-password", want)
	}
	assert.Zero(b, emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Status: http.StatusTooManyRequests}), "429s from the vault")
	r.rssMounted = e.rssMiB(b)
	require.Equal(b, n, e.tmpfsCount(b), "one tmpfs per mounted volume")
	b.Logf("pods=%d: GETs per cycle %v (upstream %d each), cycles took %v ms, kvdriver RSS %.1f MiB with 0 volumes, %.1f MiB with %d",
		n, r.cycleGETs, scaleObjects*n, durationsMs(r.cycleTook), r.rssIdle, r.rssMounted, n)
	e.unpublishAll(b, reqs)
	// The next size starts from the seeded value.
	_, err = emu.SetSecret(e2eVault, "db-password", dbPassword2, emulator.SecretOptions{})
	require.NoError(b, err)
	return r
}

func durationsMs(d []time.Duration) []int64 {
	out := make([]int64, len(d))
	for i, x := range d {
		out[i] = x.Milliseconds()
	}
	return out
}

func sumInts(s []int) int {
	var n int
	for _, x := range s {
		n += x
	}
	return n
}

// burstPods is the size of BenchmarkKVDriverColdBurst's burst.
const burstPods = 100

// burstResult is what BenchmarkKVDriverColdBurst measured.
type burstResult struct {
	perObject         map[string]int
	gets, c401, token int
	publish, get      durations
}

// BenchmarkKVDriverColdBurst issues burstPods NodePublishVolume calls at
// once, for new pods of one service principal and the 5-object class, to a
// kvdriver that has fetched nothing (no object, no client, no token): a
// node filling up with a deployment's replicas. The object cache lets one
// GET per object through and the other callers wait for it, so the burst
// costs Key Vault exactly one GET per object, which is asserted. Reported:
// GETs per object, 401 challenges and Entra ID token requests, and the
// publish p50/p95/max next to one Key Vault GET's p50 measured through the
// emulator in the same run (measureGET).
func BenchmarkKVDriverColdBurst(b *testing.B) {
	cp, emu := startScaleNode(b)
	var r *burstResult
	b.Run(fmt.Sprintf("pods=%d", burstPods), func(b *testing.B) {
		if r == nil {
			r = runColdBurst(b, cp, emu)
		}
		b.ReportMetric(float64(r.gets)/scaleObjects, "GETs/object")
		b.ReportMetric(float64(r.c401), "kv-401")
		b.ReportMetric(float64(r.token), "entra-tokens")
		b.ReportMetric(ms(r.publish.pct(0.5)), "publish-p50-ms")
		b.ReportMetric(ms(r.publish.pct(0.95)), "publish-p95-ms")
		b.ReportMetric(ms(r.publish.pct(1)), "publish-max-ms")
		b.ReportMetric(ms(r.get.pct(0.5)), "GET-p50-ms")
	})
}

func runColdBurst(b *testing.B, cp *controlplane.ControlPlane, emu *emulator.Emulator) *burstResult {
	// A TTL far longer than the burst: every GET the burst causes is a
	// miss of the cold cache, none an expiry.
	e := startScaleDriver(b, cp, emu, "node-1", 10*time.Minute)
	reqs := e.scaleVolumes(b, "burst", burstPods)
	r := &burstResult{perObject: map[string]int{}}
	start := time.Now()
	d, err := e.publishAll(reqs, len(reqs))
	require.NoError(b, err)
	r.publish = d
	for _, req := range emu.Requests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Method: http.MethodGet, Status: http.StatusOK, Since: start}) {
		r.perObject[req.Object]++
	}
	r.gets = kvGETs(emu, start)
	r.c401 = emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Status: http.StatusUnauthorized, Since: start})
	r.token = emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: http.MethodPost, Since: start})
	want := map[string]int{}
	for _, o := range fiveObjectNames {
		want[o] = 1
	}
	assert.Equal(b, want, r.perObject, "a cold burst of %d publishes fetches each object exactly once", burstPods)
	assert.Equal(b, float64(scaleObjects), e.metric(b, "kvnode_keyvault_object_cache_fetches_total", nil), "object cache fetches")
	requireFile(b, reqs, "db-password", dbPassword2)
	// The floor: one GET with a token in hand, through the same proxy.
	r.get = measureGET(b, emu, 300)
	b.Logf("cold burst of %d publishes: GETs per object %v, %d 401 challenges, %d Entra ID token requests; publish p50 %v p95 %v max %v; one GET p50 %v p95 %v",
		burstPods, r.perObject, r.c401, r.token, r.publish.pct(0.5).Round(time.Microsecond), r.publish.pct(0.95).Round(time.Microsecond),
		r.publish.pct(1).Round(time.Microsecond), r.get.pct(0.5).Round(time.Microsecond), r.get.pct(0.95).Round(time.Microsecond))
	e.unpublishAll(b, reqs)
	return r
}

// A cluster shape of BenchmarkKVDriverClusterSimulation.
type clusterShape struct{ nodes, pods int }

var clusterShapes = []clusterShape{{10, 20}, {25, 20}, {50, 5}, {50, 20}}

const (
	// clusterTTL is the object cache TTL of the simulated nodes and the
	// rotation interval: Key Vault's limit window, so that a window holds
	// one rotation's GETs (the real TTL is a minute, so the real peak is
	// at most this one).
	clusterTTL = 10 * time.Second
	// clusterIntervals is the number of rotations after the cold publish.
	clusterIntervals = 3
	// keyVaultLimit is Key Vault's GET limit per vault per 10 s, which the
	// emulator enforces too.
	keyVaultLimit  = emulator.DefaultThrottleLimit
	keyVaultWindow = emulator.DefaultThrottleWindow
	// clusterShapeTimeout bounds one shape's load.
	clusterShapeTimeout = 4 * time.Minute
)

// clusterResult is what one shape of BenchmarkKVDriverClusterSimulation
// measured.
type clusterResult struct {
	coldGETs, totalGETs, peak, throttled int
	intervalGETs                         []int
	republish                            durations
	rssTotal, rssMax                     float64
	took                                 time.Duration
}

// BenchmarkKVDriverClusterSimulation runs many nodes, each a kvdriver
// process with its own CSI socket and kubelet root, against one emulated
// vault with Key Vault's limit of 4,000 requests per 10 s, every pod using
// the same service principal and 5-object class. The nodes are started
// once; each shape uses the first nodes of them with pods volumes each: all
// are published (cold), then every 10 s (the nodes' object cache TTL) every
// node republishes all its volumes at the same moment, the worst alignment
// of kubelets for the vault. Reported per shape: total GETs, GETs per
// interval, the peak Key Vault requests in any 10 s window of the
// emulator's log against the limit, the upstream figure (5 x volumes per
// rotation, all of it in one window when aligned), the 429s seen, the
// republish p50/p95, and the nodes' RSS (sum and largest) with the volumes
// mounted; a table of all shapes is logged at the end. Every interval must
// cost exactly one GET per object per node, and the vault must never
// throttle.
func BenchmarkKVDriverClusterSimulation(b *testing.B) {
	cp, emu := startScaleNode(b)
	maxNodes, maxPods := 0, 0
	for _, s := range clusterShapes {
		maxNodes, maxPods = max(maxNodes, s.nodes), max(maxPods, s.pods)
	}
	started := time.Now()
	nodes := make([]*driverEnv, maxNodes)
	volumes := make([][]*csipb.NodePublishVolumeRequest, maxNodes)
	for i := range nodes {
		nodes[i] = startScaleDriver(b, cp, emu, fmt.Sprintf("node-%d", i+1), clusterTTL)
		volumes[i] = nodes[i].scaleVolumes(b, fmt.Sprintf("n%d", i+1), maxPods)
	}
	var idle float64
	for _, e := range nodes {
		idle += e.rssMiB(b)
	}
	startup := fmt.Sprintf("%d kvdriver processes started, with %d pods each, in %v; their RSS with no volume: %.0f MiB in all",
		maxNodes, maxPods, time.Since(started).Round(time.Second), idle)

	results := map[clusterShape]*clusterResult{}
	for _, s := range clusterShapes {
		b.Run(fmt.Sprintf("nodes=%d/pods=%d", s.nodes, s.pods), func(b *testing.B) {
			r, ok := results[s]
			if !ok {
				reqs := make([][]*csipb.NodePublishVolumeRequest, s.nodes)
				for i := range reqs {
					reqs[i] = volumes[i][:s.pods]
				}
				// A node a previous shape used may still have objects cached.
				r = runClusterShape(b, emu, nodes[:s.nodes], reqs, len(results) > 0)
				results[s] = r
				// Here, not in the parent: the framework prints a
				// parent benchmark's log only with -v.
				b.Log(startup + "\n" + clusterTable(results))
			}
			b.ReportMetric(float64(r.totalGETs), "GETs")
			b.ReportMetric(float64(sumInts(r.intervalGETs))/float64(len(r.intervalGETs)), "GETs/interval")
			b.ReportMetric(float64(r.peak), "peak-per-10s")
			b.ReportMetric(float64(keyVaultLimit), "limit-per-10s")
			b.ReportMetric(float64(scaleObjects*s.nodes*s.pods), "upstream-GETs/interval")
			b.ReportMetric(float64(r.throttled), "429s")
			b.ReportMetric(ms(r.republish.pct(0.5)), "republish-p50-ms")
			b.ReportMetric(ms(r.republish.pct(0.95)), "republish-p95-ms")
			b.ReportMetric(r.rssTotal, "rss-total-MiB")
			b.ReportMetric(r.rssMax, "rss-max-MiB")
		})
	}
}

// clusterTable is the figures of the shapes measured so far, one line each.
func clusterTable(results map[clusterShape]*clusterResult) string {
	rows := []string{fmt.Sprintf("Key Vault load of a cluster, one vault, one identity, 5-object class, every node rotating every %v at once:", clusterTTL),
		"nodes pods/node volumes cold-GETs GETs/interval total-GETs peak/10s limit upstream/rotation 429s republish-p95-ms rss-sum-MiB rss-max-MiB"}
	for _, s := range clusterShapes {
		r, ok := results[s]
		if !ok {
			continue
		}
		rows = append(rows, fmt.Sprintf("%5d %9d %7d %9d %-13s %10d %8d %5d %17d %4d %16.1f %11.0f %11.1f",
			s.nodes, s.pods, s.nodes*s.pods, r.coldGETs, fmt.Sprint(r.intervalGETs), r.totalGETs, r.peak, keyVaultLimit,
			scaleObjects*s.nodes*s.pods, r.throttled, ms(r.republish.pct(0.95)), r.rssTotal, r.rssMax))
	}
	return strings.Join(rows, "\n")
}

// runClusterShape publishes reqs[i] on nodes[i], then republishes them all
// every clusterTTL, clusterIntervals times, and unpublishes them.
func runClusterShape(b *testing.B, emu *emulator.Emulator, nodes []*driverEnv, reqs [][]*csipb.NodePublishVolumeRequest, used bool) *clusterResult {
	r := &clusterResult{}
	deadline := time.Now().Add(clusterShapeTimeout)
	// every publishes every node's volumes at once, each node
	// kubeletParallel at a time, and returns the latencies.
	every := func() durations {
		var (
			mu   sync.Mutex
			all  durations
			errs []error
			wg   sync.WaitGroup
		)
		for i, e := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := e.publishAll(reqs[i], kubeletParallel)
				mu.Lock()
				defer mu.Unlock()
				all = append(all, d...)
				if err != nil {
					errs = append(errs, fmt.Errorf("node %d: %w", i+1, err))
				}
			}()
		}
		wg.Wait()
		require.Empty(b, errs)
		return all
	}
	if used {
		time.Sleep(clusterTTL)
	}
	start := time.Now()
	every()
	r.coldGETs = kvGETs(emu, start)
	for c := range clusterIntervals {
		require.True(b, time.Now().Before(deadline), "shape of %d nodes ran out of its %v", len(nodes), clusterShapeTimeout)
		// Every node's objects expire a TTL after its last fetch, which
		// was before the previous round ended; the second more keeps two
		// rounds' GETs out of one 10 s window.
		time.Sleep(clusterTTL + time.Second)
		fetched := make([]float64, len(nodes))
		for i, e := range nodes {
			fetched[i] = e.metric(b, "kvnode_keyvault_object_cache_fetches_total", nil)
		}
		t0 := time.Now()
		r.republish = append(r.republish, every()...)
		gets := kvGETs(emu, t0)
		r.intervalGETs = append(r.intervalGETs, gets)
		if took := time.Since(t0); took < clusterTTL {
			// Each node's own count says which node sent more, if any did.
			for i, e := range nodes {
				assert.Equal(b, float64(scaleObjects), e.metric(b, "kvnode_keyvault_object_cache_fetches_total", nil)-fetched[i],
					"interval %d: object cache fetches of node %d", c, i+1)
			}
			require.Equal(b, scaleObjects*len(nodes), gets, "interval %d: one GET per object per node", c)
		} else {
			b.Logf("interval %d of %d nodes took %v, longer than the cache TTL: its %d GETs include refetches", c, len(nodes), took, gets)
		}
	}
	r.took = time.Since(start)
	var times []time.Time
	for _, req := range emu.Requests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Since: start}) {
		times = append(times, req.Time)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	r.peak = peakInWindow(times, keyVaultWindow)
	r.totalGETs = kvGETs(emu, start)
	r.throttled = emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Status: http.StatusTooManyRequests, Since: start})
	assert.Zero(b, r.throttled, "429s from the vault")
	for _, e := range nodes {
		rss := e.rssMiB(b)
		r.rssTotal += rss
		r.rssMax = math.Max(r.rssMax, rss)
	}
	for i, e := range nodes {
		e.unpublishAll(b, reqs[i])
	}
	b.Logf("%d nodes x %d pods in %v: cold %d GETs, per interval %v, total %d, peak %d Key Vault requests in a 10 s window (limit %d; upstream would send %d per rotation), %d 429s; nodes' RSS %.0f MiB in all, %.1f MiB the largest",
		len(nodes), len(reqs[0]), r.took.Round(time.Second), r.coldGETs, r.intervalGETs, r.totalGETs, r.peak, keyVaultLimit, scaleObjects*len(nodes)*len(reqs[0]), r.throttled, r.rssTotal, r.rssMax)
	return r
}
