package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/emulator"
)

const (
	faultsVault     = "kvnode-faults"
	faultsNamespace = "faults"
)

// seedFaultsVault creates the service principal and a vault it reads,
// holding the given secrets.
func seedFaultsVault(t *testing.T, e *driverEnv, secrets map[string]string) {
	t.Helper()
	sp, err := e.emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: spClientID, Secret: spSecret})
	require.NoError(t, err)
	require.NoError(t, e.emu.CreateVault(faultsVault, emulator.VaultOptions{TenantID: e2eTenant}))
	require.NoError(t, e.emu.Grant(faultsVault, sp.ObjectID))
	setSecrets(t, e, secrets)
}

func setSecrets(t *testing.T, e *driverEnv, secrets map[string]string) {
	t.Helper()
	for name, value := range secrets {
		_, err := e.emu.SetSecret(faultsVault, name, value, emulator.SecretOptions{})
		require.NoError(t, err)
	}
}

// faultsClass is a class of the faults vault mounting the named secrets.
func faultsClass(names ...string) map[string]string {
	entries := make([]string, len(names))
	for i, n := range names {
		entries[i] = "objectName: " + n + "\nobjectType: secret"
	}
	return map[string]string{"keyvaultName": faultsVault, "tenantId": e2eTenant, "objects": objectsParam(entries...)}
}

// volumeFiles reads the files a pod sees in target: the visible names
// (not atomicwriter's ".." entries), through their links.
func volumeFiles(t *testing.T, target string) map[string]string {
	t.Helper()
	files, err := readVolume(target)
	require.NoError(t, err)
	return files
}

// readVolume is volumeFiles for any goroutine: it returns the first
// error instead of failing the test.
func readVolume(target string) (map[string]string, error) {
	entries, err := os.ReadDir(target)
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	for _, de := range entries {
		if strings.HasPrefix(de.Name(), "..") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(target, de.Name()))
		if err != nil {
			return nil, fmt.Errorf("a visible name that does not resolve to a file: %w", err)
		}
		files[de.Name()] = string(b)
	}
	return files, nil
}

// publishOK publishes req and requires success.
func publishOK(t *testing.T, e *driverEnv, req *csipb.NodePublishVolumeRequest) {
	t.Helper()
	_, err := e.node.NodePublishVolume(callCtx(t), req)
	require.NoError(t, err)
}

// TestFaultKVDriverAPIServerDown stops kube-apiserver under kvdriver: a
// publish of a class kvdriver already knows mounts from the informer cache
// (the volume status is written once the API server is back), and when the
// API server returns the same kvdriver sees a class created afterwards.
func TestFaultKVDriverAPIServerDown(t *testing.T) {
	e := startDriverEnv(t)
	seedFaultsVault(t, e, map[string]string{"db": "db-value-1"})
	require.NoError(t, e.cp.EnsureNamespace(callCtx(t), faultsNamespace))
	e.createClass(t, faultsNamespace, "known", faultsClass("db"))
	e.waitForClasses(t, faultsNamespace)
	pod := e.createPod(t, faultsNamespace, "during-outage", "app")
	later := e.createPod(t, faultsNamespace, "after-outage", "app")

	require.NoError(t, e.cp.StopAPIServer())
	down := true
	t.Cleanup(func() {
		if down {
			_ = e.cp.StartAPIServer()
		}
	})
	req := e.publishRequest(pod, "secrets", "known", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req.TargetPath)
	publishOK(t, e, req)
	assert.Equal(t, map[string]string{"db": "db-value-1"}, volumeFiles(t, req.TargetPath))
	publishOK(t, e, req) // kubelet's republish

	require.NoError(t, e.cp.StartAPIServer())
	down = false
	e.createClass(t, faultsNamespace, "new", faultsClass("db"))
	req2 := e.publishRequest(later, "secrets", "new", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req2.TargetPath)
	require.Eventually(t, func() bool {
		_, err := e.node.NodePublishVolume(callCtx(t), req2)
		return err == nil
	}, 60*time.Second, 200*time.Millisecond, "kvdriver never saw the class created after the outage")
	assert.Equal(t, map[string]string{"db": "db-value-1"}, volumeFiles(t, req2.TargetPath))
	require.Eventually(t, func() bool {
		list, err := e.dyn.Resource(spc.SecretProviderClassPodStatusesResource).Namespace(faultsNamespace).List(callCtx(t), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, item := range list.Items {
			if name, _, _ := unstructured.NestedString(item.Object, "status", "podName"); name == pod.Name {
				return true
			}
		}
		return false
	}, 60*time.Second, 200*time.Millisecond, "the status of the volume mounted during the outage was never written")
}

// TestFaultKVDriverVaultDown makes Key Vault answer 503: a first publish
// fails with Unavailable and leaves nothing mounted or written (whether
// kubelet made the target or not); a republish of a mounted volume, a
// rotation, keeps its files as they were, answers kubelet with success (as
// upstream does) and tells the pod with a MountRotationFailed event. When
// Key Vault is back
// the same requests mount, and rotate, the volumes.
func TestFaultKVDriverVaultDown(t *testing.T) {
	e := startDriverEnv(t)
	seedFaultsVault(t, e, map[string]string{"db": "db-value-1", "api": "api-value-1"})
	require.NoError(t, e.cp.EnsureNamespace(callCtx(t), faultsNamespace))
	e.createClass(t, faultsNamespace, "db", faultsClass("db"))
	e.createClass(t, faultsNamespace, "api", faultsClass("api"))
	e.waitForClasses(t, faultsNamespace)
	creds := spCredentials(spClientID, spSecret)
	mounted := e.createPod(t, faultsNamespace, "mounted", "app")
	mountedReq := e.publishRequest(mounted, "secrets", "db", creds, "")
	mkTargetParent(t, mountedReq.TargetPath)
	publishOK(t, e, mountedReq)

	// api was never fetched, and db's cached copy expires.
	setSecrets(t, e, map[string]string{"db": "db-value-2"})
	time.Sleep(2 * driverCacheTTL)
	require.NoError(t, e.emu.InjectVaultFault(emulator.Fault{Status: http.StatusServiceUnavailable}))
	defer e.emu.ClearVaultFaults()

	var fresh []*csipb.NodePublishVolumeRequest
	for i, existed := range []bool{false, true} {
		pod := e.createPod(t, faultsNamespace, fmt.Sprintf("fresh-%d", i), "app")
		req := e.publishRequest(pod, "secrets", "api", creds, "")
		mkTargetParent(t, req.TargetPath)
		if existed {
			require.NoError(t, os.Mkdir(req.TargetPath, 0o750))
		}
		_, err := e.node.NodePublishVolume(callCtx(t), req)
		t.Logf("first publish, Key Vault down: %v", err)
		assert.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		e.assertNothingPublished(t, pod, req.TargetPath, existed)
		fresh = append(fresh, req)
	}
	_, err := e.node.NodePublishVolume(callCtx(t), mountedReq)
	require.NoError(t, err, "a failed rotation is not a failed volume")
	assert.Equal(t, map[string]string{"db": "db-value-1"}, volumeFiles(t, mountedReq.TargetPath), "a failed republish changed the volume")
	warning := waitEvents(t, e, mounted, corev1.EventTypeWarning, 1)
	assert.Equal(t, "MountRotationFailed", warning[0].Reason)
	assert.Contains(t, warning[0].Message, "Unavailable")

	e.emu.ClearVaultFaults()
	for _, req := range fresh {
		publishOK(t, e, req)
		assert.Equal(t, map[string]string{"api": "api-value-1"}, volumeFiles(t, req.TargetPath))
	}
	publishOK(t, e, mountedReq)
	assert.Equal(t, map[string]string{"db": "db-value-2"}, volumeFiles(t, mountedReq.TargetPath))
}

// rotationSecrets is generation gen of n secrets, each large enough that
// writing the set takes a while.
func rotationSecrets(n, gen int) map[string]string {
	pad := strings.Repeat("x", 16<<10)
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("s%02d", i)] = fmt.Sprintf("gen-%d-s%02d-%s", gen, i, pad)
	}
	return m
}

// generationOf returns the one generation every file of files belongs to,
// or an error saying how files is not one complete generation of n.
func generationOf(files map[string]string, n int) (int, error) {
	if len(files) != n {
		names := make([]string, 0, len(files))
		for k := range files {
			names = append(names, k)
		}
		sort.Strings(names)
		return 0, fmt.Errorf("%d files, want %d: %v", len(files), n, names)
	}
	gens := map[int]bool{}
	for name, v := range files {
		var g int
		var got string
		if _, err := fmt.Sscanf(v, "gen-%d-%3s", &g, &got); err != nil || got != name {
			return 0, fmt.Errorf("%s holds %.20q", name, v)
		}
		gens[g] = true
	}
	if len(gens) != 1 {
		return 0, fmt.Errorf("files of generations %v", gens)
	}
	for g := range gens {
		return g, nil
	}
	return 0, nil
}

// payloadDirs lists atomicwriter's payload directories in target.
func payloadDirs(t *testing.T, target string) []string {
	t.Helper()
	entries, err := os.ReadDir(target)
	require.NoError(t, err)
	var dirs []string
	for _, de := range entries {
		if de.IsDir() && strings.HasPrefix(de.Name(), "..") {
			dirs = append(dirs, de.Name())
		}
	}
	return dirs
}

// publishAsync starts req's publish and returns where its error will be.
func publishAsync(t *testing.T, e *driverEnv, req *csipb.NodePublishVolumeRequest) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := e.node.NodePublishVolume(callCtx(t), req)
		done <- err
	}()
	return done
}

// rotationClass seeds the vault with generation 1 of rotationSecrets(n)
// and creates a class that mounts them all; it returns the objects' names.
func rotationClass(t *testing.T, e *driverEnv, class string, n int) []string {
	t.Helper()
	seedFaultsVault(t, e, rotationSecrets(n, 1))
	require.NoError(t, e.cp.EnsureNamespace(callCtx(t), faultsNamespace))
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	e.createClass(t, faultsNamespace, class, faultsClass(names...))
	e.waitForClasses(t, faultsNamespace)
	return names
}

// TestFaultKVDriverSIGKILLMidRotation kills kvdriver (SIGKILL) at points
// spread over a rotating republish and starts a new one: each time the
// volume holds one complete set of files, the old or the new (never
// empty, never partial, never a mix), and the new kvdriver's republish
// brings it to the new set.
func TestFaultKVDriverSIGKILLMidRotation(t *testing.T) {
	const n, kills = 40, 8
	e := startDriverEnv(t)
	names := rotationClass(t, e, "rotating", n)
	pod := e.createPod(t, faultsNamespace, "rotating", "app")
	req := e.publishRequest(pod, "secrets", "rotating", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req.TargetPath)
	publishOK(t, e, req)

	// How long a rotating republish takes, to spread the kills over it.
	gen := 2
	setSecrets(t, e, rotationSecrets(n, gen))
	time.Sleep(2 * driverCacheTTL)
	start := time.Now()
	publishOK(t, e, req)
	took := time.Since(start)
	g, err := generationOf(volumeFiles(t, req.TargetPath), n)
	require.NoError(t, err)
	require.Equal(t, gen, g)
	t.Logf("a rotating republish of %d files takes %v", n, took)

	driver := e
	midWrite := 0
	for k := range kills {
		gen++
		setSecrets(t, e, rotationSecrets(n, gen))
		time.Sleep(2 * driverCacheTTL)
		before := payloadDirs(t, req.TargetPath)
		done := publishAsync(t, driver, req)
		var when string
		if k%2 == 0 {
			// At a point spread over the call, from its start to a
			// little past its usual end.
			delay := took * time.Duration(k) / (kills / 2)
			time.Sleep(delay)
			when = fmt.Sprintf("%v into the republish", delay)
		} else {
			// As soon as the new payload directory appears: while the
			// files are being written.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && len(payloadDirs(t, req.TargetPath)) <= len(before) {
			}
			when = "once the new files were being written"
		}
		require.NoError(t, driver.proc.Process.Kill())
		<-driver.exited
		err := <-done
		leftovers := len(payloadDirs(t, req.TargetPath)) > 1
		if leftovers {
			midWrite++
		}
		g, gerr := generationOf(volumeFiles(t, req.TargetPath), n)
		require.NoError(t, gerr, "kill %d %s (the publish returned %v)", k, when, err)
		require.Contains(t, []int{gen - 1, gen}, g, "kill %d", k)
		t.Logf("kill %d %s: generation %d of %d, a half-written payload left: %v (the publish returned %v)", k, when, g, gen, leftovers, status.Code(err))

		driver = startKVDriver(t, e.cp, e.emu, "--object-cache-ttl", driverCacheTTL.String())
		start := time.Now()
		require.Eventually(t, func() bool {
			start = time.Now()
			_, err := driver.node.NodePublishVolume(callCtx(t), req)
			return err == nil
		}, 30*time.Second, 100*time.Millisecond, "the new kvdriver's republish failed")
		took = time.Since(start)
		g, gerr = generationOf(volumeFiles(t, req.TargetPath), n)
		require.NoError(t, gerr, "after the new kvdriver's republish")
		require.Equal(t, gen, g, "the new kvdriver's republish did not rotate the volume")
		assert.Len(t, payloadDirs(t, req.TargetPath), 1, "the new kvdriver's republish left an old payload behind")
	}
	t.Logf("%d of %d kills left a half-written payload", midWrite, kills)
	assert.Positive(t, midWrite, "no kill landed while the files were written: the test proves less than it says")

	// What a kill in the middle of writing leaves, whether or not one of
	// the kills above landed there: a payload directory with some of the
	// files and a ..data_tmp link to it that never replaced ..data.
	partial := filepath.Join(req.TargetPath, "..2001_01_01_00_00_00.42")
	require.NoError(t, os.Mkdir(partial, 0o755))
	for i := range n / 3 {
		require.NoError(t, os.WriteFile(filepath.Join(partial, names[i]), []byte("gen-0-"+names[i]), 0o644))
	}
	require.NoError(t, os.Symlink(filepath.Base(partial), filepath.Join(req.TargetPath, "..data_tmp")))
	g, err = generationOf(volumeFiles(t, req.TargetPath), n)
	require.NoError(t, err, "a half-written payload showed through")
	require.Equal(t, gen, g)
	gen++
	setSecrets(t, e, rotationSecrets(n, gen))
	time.Sleep(2 * driverCacheTTL)
	publishOK(t, driver, req)
	g, err = generationOf(volumeFiles(t, req.TargetPath), n)
	require.NoError(t, err)
	assert.Equal(t, gen, g)
	entries, err := os.ReadDir(req.TargetPath)
	require.NoError(t, err)
	var hidden []string
	for _, de := range entries {
		if strings.HasPrefix(de.Name(), "..") {
			hidden = append(hidden, de.Name())
		}
	}
	assert.Len(t, hidden, 2, "the republish left the half-written payload behind: %v", hidden) // ..data and its payload
	assert.NotContains(t, hidden, "..data_tmp")
	assert.NotContains(t, hidden, filepath.Base(partial))
}

// TestFaultKVDriverSIGKILLFirstPublish kills kvdriver (SIGKILL) during a
// pod's first publish: as soon as the tmpfs is mounted at the target, or at
// points spread over the call. Each time the volume holds no file or the
// complete set (never a partial file, never some of the set); kubelet's
// retry against a new kvdriver publishes the complete set on the one tmpfs
// (no second mount stacked on the first), and the unpublish leaves no mount
// and no target behind.
func TestFaultKVDriverSIGKILLFirstPublish(t *testing.T) {
	const n, kills = 40, 6
	e := startDriverEnv(t)
	rotationClass(t, e, "first", n)
	mounter := mount.New("")

	// How long a pod's first publish takes once the objects are cached
	// (as they are for the kills below), to spread the kills over it.
	var took time.Duration
	for _, name := range []string{"first-cold", "first-warm"} {
		pod := e.createPod(t, faultsNamespace, name, "app")
		req := e.publishRequest(pod, "secrets", "first", spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, req.TargetPath)
		start := time.Now()
		publishOK(t, e, req)
		took = time.Since(start)
	}
	t.Logf("a first publish of %d cached files takes %v", n, took)

	driver := e
	outcomes := map[string]int{}
	for k := range kills {
		pod := e.createPod(t, faultsNamespace, fmt.Sprintf("first-%d", k), "app")
		req := e.publishRequest(pod, "secrets", "first", spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, req.TargetPath)
		done := publishAsync(t, driver, req)
		var when string
		if k%2 == 0 {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if notMnt, err := mounter.IsLikelyNotMountPoint(req.TargetPath); err == nil && !notMnt {
					break
				}
			}
			when = "as soon as the tmpfs was mounted"
		} else {
			delay := took * time.Duration(k) / kills
			time.Sleep(delay)
			when = fmt.Sprintf("%v into the publish", delay)
		}
		require.NoError(t, driver.proc.Process.Kill())
		<-driver.exited
		err := <-done

		// Before the switch of ..data the new names already exist and
		// dangle (the writer links them first, so that they resolve the
		// moment ..data appears); after it every file is there. No name
		// ever opens to a partial file. kubelet starts no container on a
		// volume whose publish has not succeeded, so what matters to the
		// pod is what the retry below leaves.
		var seen string
		switch _, lerr := os.Lstat(filepath.Join(req.TargetPath, "..data")); {
		case mountsAt(t, req.TargetPath) == 0:
			seen = "nothing mounted"
		case lerr != nil:
			require.ErrorIs(t, lerr, fs.ErrNotExist)
			entries, err := os.ReadDir(req.TargetPath)
			require.NoError(t, err)
			for _, de := range entries {
				b, err := os.ReadFile(filepath.Join(req.TargetPath, de.Name()))
				if de.IsDir() || err != nil {
					continue
				}
				require.Failf(t, "a file before the switch", "kill %d %s: %s opens to %.20q", k, when, de.Name(), b)
			}
			seen = fmt.Sprintf("no ..data yet (%d entries)", len(entries))
		default:
			g, gerr := generationOf(volumeFiles(t, req.TargetPath), n)
			require.NoError(t, gerr, "kill %d %s: the pod saw some of its files", k, when)
			require.Equal(t, 1, g)
			seen = "every file"
		}
		outcomes[seen]++
		t.Logf("kill %d %s: %s (the publish returned %v)", k, when, seen, status.Code(err))

		// kubelet retries the publish until it succeeds.
		driver = startKVDriver(t, e.cp, e.emu, "--object-cache-ttl", driverCacheTTL.String())
		require.Eventually(t, func() bool {
			_, err := driver.node.NodePublishVolume(callCtx(t), req)
			return err == nil
		}, 30*time.Second, 100*time.Millisecond, "kill %d: the new kvdriver's publish failed", k)
		g, gerr := generationOf(volumeFiles(t, req.TargetPath), n)
		require.NoError(t, gerr, "kill %d: after the new kvdriver's publish", k)
		require.Equal(t, 1, g)
		assert.Equal(t, 1, mountsAt(t, req.TargetPath), "kill %d: mounts at the target after the retry", k)
		assert.Len(t, payloadDirs(t, req.TargetPath), 1, "kill %d: a half-written payload was left behind", k)

		_, err = driver.node.NodeUnpublishVolume(callCtx(t), &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
		require.NoError(t, err)
		assert.Zero(t, mountsAt(t, req.TargetPath), "kill %d: still mounted after the unpublish", k)
		assert.NoDirExists(t, req.TargetPath, "kill %d: the unpublish left the target", k)
	}
	t.Logf("what the pod saw right after a kill: %v", outcomes)
}

// mountsAt counts the mounts whose mount point is path.
func mountsAt(t *testing.T, path string) int {
	t.Helper()
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	require.NoError(t, err)
	c := 0
	for _, m := range mounts {
		if m.MountPoint == path {
			c++
		}
	}
	return c
}

// TestFaultKVDriverSIGTERM sends SIGTERM while a publish waits on a slow
// Entra ID: the publish completes and mounts, and kvdriver exits within
// the pod's termination grace period.
func TestFaultKVDriverSIGTERM(t *testing.T) {
	e := startDriverEnv(t)
	seedFaultsVault(t, e, map[string]string{"db": "db-value-1"})
	require.NoError(t, e.cp.EnsureNamespace(callCtx(t), faultsNamespace))
	e.createClass(t, faultsNamespace, "db", faultsClass("db"))
	e.waitForClasses(t, faultsNamespace)
	pod := e.createPod(t, faultsNamespace, "in-flight", "app")
	req := e.publishRequest(pod, "secrets", "db", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req.TargetPath)

	// In flight for well under the grace period, longer than a quick
	// shutdown would wait.
	const inFlight = 12 * time.Second
	require.NoError(t, e.emu.InjectEntraFault(emulator.Fault{Latency: inFlight, Count: 1}))
	done := make(chan error, 1)
	go func() {
		_, err := e.node.NodePublishVolume(callCtx(t), req)
		done <- err
	}()
	// The SDK asks the vault for its challenge before it asks Entra ID
	// for a token: once the vault has answered, the publish is in flight.
	require.Eventually(t, func() bool {
		return e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault}) > 0
	}, 10*time.Second, 10*time.Millisecond, "the publish never reached Key Vault")

	sent := time.Now()
	require.NoError(t, e.proc.Process.Signal(syscall.SIGTERM))
	select {
	case <-e.exited:
	case <-time.After(podGracePeriod + 10*time.Second):
		t.Fatal("kvdriver did not exit")
	}
	exited := time.Since(sent)
	assert.NoError(t, e.exitErr, "kvdriver exit")
	assert.Less(t, exited, podGracePeriod, "kvdriver outlived the termination grace period")
	err := <-done
	t.Logf("in-flight publish: %v; kvdriver exited %v after SIGTERM", err, exited)
	require.NoError(t, err, "the publish in flight at SIGTERM did not complete")
	assert.Equal(t, map[string]string{"db": "db-value-1"}, volumeFiles(t, req.TargetPath))
}

// TestFaultKVDriverEntraDown makes Entra ID fail kvdriver's token request
// at a first publish, answering 503 or not answering at all (the
// connection broken, as when it is unreachable): the publish fails with
// Unavailable (an outage, not a refused credential) and leaves nothing
// mounted or written; when Entra ID is back the same request mounts.
func TestFaultKVDriverEntraDown(t *testing.T) {
	e := startDriverEnv(t)
	seedFaultsVault(t, e, map[string]string{"db": "db-value-1"})
	require.NoError(t, e.cp.EnsureNamespace(callCtx(t), faultsNamespace))
	e.createClass(t, faultsNamespace, "db", faultsClass("db"))
	e.waitForClasses(t, faultsNamespace)
	for i, f := range []emulator.Fault{{Status: http.StatusServiceUnavailable}, {Drop: true}} {
		// A new service principal each time: kvdriver holds no token for it.
		clientID := fmt.Sprintf("5a1e0000-0000-4000-8000-00000000000%d", i)
		sp, err := e.emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: clientID, Secret: spSecret})
		require.NoError(t, err)
		require.NoError(t, e.emu.Grant(faultsVault, sp.ObjectID))
		pod := e.createPod(t, faultsNamespace, fmt.Sprintf("entra-down-%d", i), "app")
		req := e.publishRequest(pod, "secrets", "db", spCredentials(clientID, spSecret), "")
		mkTargetParent(t, req.TargetPath)

		require.NoError(t, e.emu.InjectEntraFault(f))
		_, err = e.node.NodePublishVolume(callCtx(t), req)
		e.emu.ClearEntraFaults()
		t.Logf("publish, Entra ID down (%+v): %v", f, err)
		assert.Equal(t, codes.Unavailable, status.Code(err), "%+v: %v", f, err)
		assert.NotContains(t, fmt.Sprint(err), spSecret)
		e.assertNothingPublished(t, pod, req.TargetPath, false)

		publishOK(t, e, req)
		assert.Equal(t, map[string]string{"db": "db-value-1"}, volumeFiles(t, req.TargetPath))
	}
}

// TestFaultKVDriverRotationUnderFaults rotates mounted volumes while Key
// Vault or Entra ID misbehaves: a 429 storm, 500s, answers slower than
// kubelet waits, Entra ID down. Throughout, a reader plays the pods: every
// read of every volume finds all its files, each one whole (never empty,
// never partial), and between rotations every volume holds one version of
// everything. A republish during the fault keeps
// the files, answers kubelet, and tells the pod with a Warning event, or,
// where kvdriver needs nothing from the failing service (a token still
// valid while Entra ID is down), rotates; once the fault ends, the next
// rotation brings every volume to the new versions.
func TestFaultKVDriverRotationUnderFaults(t *testing.T) {
	const n, pods = 3, 4
	e := startDriverEnv(t)
	seedFaultsVault(t, e, rotationSecrets(n, 1))
	ctx := callCtx(t)
	require.NoError(t, e.cp.EnsureNamespace(ctx, faultsNamespace))
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("s%02d", i)
	}
	e.createClass(t, faultsNamespace, "rotating", faultsClass(names...))
	e.waitForClasses(t, faultsNamespace)
	creds := spCredentials(spClientID, spSecret)
	var reqs []*csipb.NodePublishVolumeRequest
	var owners []*corev1.Pod
	for i := range pods {
		pod := e.createPod(t, faultsNamespace, fmt.Sprintf("rot-%d", i), "app")
		req := e.publishRequest(pod, "secrets", "rotating", creds, "")
		mkTargetParent(t, req.TargetPath)
		publishOK(t, e, req)
		reqs = append(reqs, req)
		owners = append(owners, pod)
	}

	// The pods read their files all along.
	var reads atomic.Int64
	stop := make(chan struct{})
	readerDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				readerDone <- nil
				return
			default:
			}
			for _, r := range reqs {
				if err := completeFiles(r.TargetPath, n); err != nil {
					readerDone <- fmt.Errorf("%s: %w", r.TargetPath, err)
					return
				}
				reads.Add(1)
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	})

	// rotateAll republishes every volume at once, as kubelet does, each
	// call bounded by timeout, and returns the calls' codes.
	rotateAll := func(timeout time.Duration) []codes.Code {
		out := make([]codes.Code, len(reqs))
		var wg sync.WaitGroup
		for i, r := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(context.Background(), timeout)
				defer cancel()
				_, err := e.node.NodePublishVolume(cctx, r)
				out[i] = status.Code(err)
			}()
		}
		wg.Wait()
		return out
	}
	generations := func() []int {
		out := make([]int, len(reqs))
		for i, r := range reqs {
			g, err := generationOf(volumeFiles(t, r.TargetPath), n)
			require.NoError(t, err)
			out[i] = g
		}
		return out
	}
	same := func(g int) []int {
		out := make([]int, len(reqs))
		for i := range out {
			out[i] = g
		}
		return out
	}

	gen := 1
	faults := []struct {
		name string
		// inject starts the fault; it returns the function that ends it.
		inject func() (end func())
		// timeout is how long kubelet waits for each republish.
		timeout time.Duration
		// rotates: the republish during the fault still rotates.
		rotates bool
	}{
		{name: "429 storm", timeout: time.Minute, inject: func() func() {
			// One request per 3 s for the vault: the republishes of the
			// storm get 429 with Retry-After.
			require.NoError(t, e.emu.SetThrottle(faultsVault, 1, 3*time.Second))
			return func() {
				require.NoError(t, e.emu.SetThrottle(faultsVault, 0, 0))
				time.Sleep(4 * time.Second) // the Retry-After kvdriver honours
			}
		}},
		{name: "500s", timeout: time.Minute, inject: func() func() {
			require.NoError(t, e.emu.InjectVaultFault(emulator.Fault{Status: http.StatusInternalServerError}))
			return e.emu.ClearVaultFaults
		}},
		{name: "slower than kubelet waits", timeout: 2 * time.Second, inject: func() func() {
			require.NoError(t, e.emu.InjectVaultFault(emulator.Fault{Latency: 30 * time.Second}))
			return e.emu.ClearVaultFaults
		}},
		{name: "Entra ID down, token valid", timeout: time.Minute, rotates: true, inject: func() func() {
			require.NoError(t, e.emu.InjectEntraFault(emulator.Fault{Status: http.StatusServiceUnavailable}))
			return e.emu.ClearEntraFaults
		}},
	}
	for _, f := range faults {
		gen++
		setSecrets(t, e, rotationSecrets(n, gen))
		time.Sleep(2 * driverCacheTTL)
		warnedBefore := make([]int, len(owners))
		for i, pod := range owners {
			warnedBefore[i] = len(warningEvents(t, e, pod))
		}
		e.emu.ResetRequests()
		end := f.inject()
		codesDuring := rotateAll(f.timeout)
		during := generations()
		kvDuring := e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault})
		entraDuring := e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra})
		end()
		t.Logf("%s: republish codes %v, generations %v, Key Vault requests %d, Entra ID requests %d",
			f.name, codesDuring, during, kvDuring, entraDuring)
		if f.rotates {
			assert.Equal(t, same(gen), during, "%s: the rotation needed nothing from the failing service", f.name)
			assert.Zero(t, entraDuring, "%s: a valid token is not requested again", f.name)
		} else {
			assert.Equal(t, same(gen-1), during, "%s: a failed rotation changed files", f.name)
			for i, c := range codesDuring {
				// A failed rotation answers kubelet with success, as
				// upstream does, and tells the pod; one kubelet gave up
				// on is told too, but its answer went nowhere.
				assert.Contains(t, []codes.Code{codes.OK, codes.DeadlineExceeded}, c, "%s", f.name)
				if c == codes.OK {
					assert.Eventually(t, func() bool { return len(warningEvents(t, e, owners[i])) > warnedBefore[i] },
						10*time.Second, 100*time.Millisecond, "%s: pod %s was not told its rotation failed", f.name, owners[i].Name)
				}
			}
		}

		// Fault over: the next rotation rotates every volume.
		require.Eventually(t, func() bool {
			for _, c := range rotateAll(time.Minute) {
				if c != codes.OK {
					return false
				}
			}
			g := generations()
			return assert.ObjectsAreEqual(same(gen), g)
		}, 30*time.Second, 500*time.Millisecond, "%s: the rotation after the fault did not bring the new files", f.name)
	}
	close(stop)
	require.NoError(t, <-readerDone, "a pod saw a broken volume")
	t.Logf("%d reads of %d volumes, every file there and whole", reads.Load(), pods)
	assert.Positive(t, reads.Load())
}

// completeFiles checks what a pod reading the volume at target file by
// file sees: the n names, each file whole, of some generation. (Files read
// one after another across a rotation may be of two generations; each is
// complete. The test checks whole sets between the rotations.)
func completeFiles(target string, n int) error {
	files, err := readVolume(target)
	if err != nil {
		return err
	}
	if len(files) != n {
		return fmt.Errorf("%d files, want %d", len(files), n)
	}
	for name, v := range files {
		var g int
		if _, err := fmt.Sscanf(v, "gen-%d-", &g); err != nil || rotationSecrets(n, g)[name] != v {
			return fmt.Errorf("%s holds %d bytes, not a whole generation's value", name, len(v))
		}
	}
	return nil
}
