package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/mount-utils"
)

// TestKVDriverChurn publishes and unpublishes 10,000 volumes over 200 pods
// and 20 classes, with republishes (rotations) and rotated secrets in
// between, as a busy node's kubelet would, then checks that kvdriver is
// back where it started: goroutines and open files at their baseline, the
// heap bounded, no tmpfs and no target directory left under the kubelet
// root, the object cache holding no more than the vault's objects and one
// client set for the one identity. The figures are printed.
func TestKVDriverChurn(t *testing.T) {
	const (
		cycles, pods, classes, secrets, workers = 10000, 200, 20, 10, 4
		namespace                               = "churn"
	)
	e := startDriverEnvArgs(t, "--object-cache-ttl", driverCacheTTL.String(), "-v", "1")
	values := map[string]string{}
	for i := range secrets {
		values[fmt.Sprintf("s%d", i)] = fmt.Sprintf("value-%d-gen-0", i)
	}
	seedFaultsVault(t, e, values)
	require.NoError(t, e.cp.EnsureNamespace(callCtx(t), namespace))
	classObjects := func(k int) []string {
		return []string{fmt.Sprintf("s%d", k%secrets), fmt.Sprintf("s%d", (k+1)%secrets), fmt.Sprintf("s%d", (k+3)%secrets)}
	}
	for k := range classes {
		e.createClass(t, namespace, fmt.Sprintf("class-%d", k), faultsClass(classObjects(k)...))
	}
	e.waitForClasses(t, namespace)
	owners := make([]*corev1.Pod, pods)
	for i := range owners {
		owners[i] = e.createPod(t, namespace, fmt.Sprintf("pod-%03d", i), "app")
	}
	creds := spCredentials(spClientID, spSecret)

	// cycle i: pod i%pods mounts class (i/pods)%classes, every fifth
	// cycle republishes it (a rotation), then unmounts it.
	var failures sync.Map
	cycle := func(i int) {
		pod, k := owners[i%pods], (i/pods)%classes
		req := e.publishRequest(pod, fmt.Sprintf("vol-%d", k), fmt.Sprintf("class-%d", k), creds, "")
		ctx := callCtx(t)
		if err := os.MkdirAll(filepath.Dir(req.TargetPath), 0o750); err != nil {
			failures.Store(i, err)
			return
		}
		if _, err := e.node.NodePublishVolume(ctx, req); err != nil {
			failures.Store(i, fmt.Errorf("publish: %w", err))
			return
		}
		files, err := readVolume(req.TargetPath)
		if err != nil || len(files) != 3 {
			failures.Store(i, fmt.Errorf("volume after publish: %v, %d files", err, len(files)))
		}
		for _, name := range classObjects(k) {
			if !strings.HasPrefix(files[name], "value-") {
				failures.Store(i, fmt.Errorf("file %s holds %.20q", name, files[name]))
			}
		}
		if i%5 == 0 {
			if _, err := e.node.NodePublishVolume(ctx, req); err != nil {
				failures.Store(i, fmt.Errorf("republish: %w", err))
			}
		}
		if _, err := e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
			failures.Store(i, fmt.Errorf("unpublish: %w", err))
		}
	}
	run := func(from, to int) {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Worker w takes the cycles of pods w, w+workers, ...:
				// no two calls for one target at once, as kubelet.
				for i := from; i < to; i++ {
					if (i%pods)%workers == w {
						cycle(i)
					}
				}
			}()
		}
		wg.Wait()
	}
	type figures struct{ goroutines, fds, heap, entries, clientSets float64 }
	measure := func() figures {
		return figures{
			goroutines: e.metric(t, "go_goroutines", nil),
			fds:        e.metric(t, "process_open_fds", nil),
			heap:       e.metric(t, "go_memstats_heap_inuse_bytes", nil),
			entries:    e.metric(t, "kvnode_keyvault_object_cache_entries", nil),
			clientSets: e.metric(t, "kvnode_keyvault_client_sets", nil),
		}
	}

	// A first round of every pod warms the connections, the informers
	// and the caches: the baseline.
	run(0, pods)
	time.Sleep(time.Second)
	base := measure()
	start := time.Now()
	var heapMiB []string // after each thousand cycles
	for from := pods; from < cycles; from += 1000 {
		run(from, min(from+1000, cycles))
		heapMiB = append(heapMiB, fmt.Sprintf("%.1f", e.metric(t, "go_memstats_heap_inuse_bytes", nil)/(1<<20)))
		// Rotate two secrets: the next cycles mount their new values.
		gen := from / 1000
		for _, n := range []int{gen % secrets, (gen + 5) % secrets} {
			name := fmt.Sprintf("s%d", n)
			setSecrets(t, e, map[string]string{name: fmt.Sprintf("value-%d-gen-%d", n, gen)})
		}
	}
	took := time.Since(start)
	failures.Range(func(k, v any) bool {
		t.Errorf("cycle %v: %v", k, v)
		return true
	})

	// kvdriver settles: status writes drain. Kept-alive client connections
	// (to the vault, Entra ID, the API server) may outlast the window, and
	// how many are open at the baseline is a matter of timing; each holds
	// one fd and two goroutines (net/http's read and write loops), so the
	// goroutines may exceed the baseline by two per extra fd, plus two.
	var after figures
	settled := assert.Eventually(t, func() bool {
		after = measure()
		extraConns := max(0, after.fds-base.fds)
		return after.fds <= base.fds+2 && after.goroutines <= base.goroutines+2+2*extraConns
	}, 30*time.Second, 500*time.Millisecond)
	t.Logf("%d cycles (%d republishes) over %d pods and %d classes in %v (%.1f ms per cycle, %d at a time)",
		cycles, cycles/5, pods, classes, took.Round(time.Millisecond), float64(took.Microseconds())/1000/float64(cycles-pods), workers)
	t.Logf("goroutines %.0f -> %.0f, open fds %.0f -> %.0f, heap in use %.1f -> %.1f MiB, object cache %.0f -> %.0f entries, client sets %.0f -> %.0f",
		base.goroutines, after.goroutines, base.fds, after.fds, base.heap/(1<<20), after.heap/(1<<20),
		base.entries, after.entries, base.clientSets, after.clientSets)
	t.Logf("heap in use along the way (MiB, garbage included): %s", strings.Join(heapMiB, " "))
	assert.True(t, settled, "goroutines or open files did not return to their baseline")
	assert.LessOrEqual(t, after.heap, 2*base.heap+16<<20, "the heap grew with the cycles")
	assert.LessOrEqual(t, after.entries, float64(secrets), "the object cache holds more than the vault's objects")
	assert.Equal(t, 1.0, after.clientSets, "one identity, one vault: one client set")

	// Nothing left on the node.
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, m := range mounts {
		assert.False(t, strings.HasPrefix(m.MountPoint, e.kubelet), "mount left behind: %s", m.MountPoint)
	}
	var left []string
	require.NoError(t, filepath.WalkDir(filepath.Join(e.kubelet, "pods"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() || err == nil && d.Name() == "mount" {
			left = append(left, p)
		}
		return err
	}))
	assert.Empty(t, left, "files or target directories left under the kubelet root")
}
