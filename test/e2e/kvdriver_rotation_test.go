package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/kvnode/kvnode/test/emulator"
)

// TestKVDriverRotation: kubelet's republish of a mounted volume is a
// rotation. A new secret version is written, recorded in the pod status,
// counted (rotation_reconcile_total) and told to the pod with a Normal
// event; a republish that cannot fetch keeps the files, answers kubelet
// with success as upstream does, and tells the pod with a Warning event;
// --rotation-poll-interval spaces fetches, and --enable-secret-rotation=false
// leaves mounted volumes alone.
func TestKVDriverRotation(t *testing.T) {
	e := startDriverEnvArgs(t, "--object-cache-ttl", "0")
	seedBadInput(t, e)
	ctx := callCtx(t)
	const ns = "rotation"
	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))
	polled := startKVDriver(t, e.cp, e.emu, "--object-cache-ttl", "0", "--rotation-poll-interval", "1h")
	frozen := startKVDriver(t, e.cp, e.emu, "--object-cache-ttl", "0", "--enable-secret-rotation=false")
	v1, err := e.emu.SetSecret(badVault, "rotating", "first value", emulator.SecretOptions{})
	require.NoError(t, err)
	e.createClassOf(t, ns, "rot", "", badParams("objects", objectsParam("objectName: rotating\nobjectType: secret")))
	e.waitForClasses(t, ns)
	polled.waitForClasses(t, ns)
	frozen.waitForClasses(t, ns)

	pod := e.createPod(t, ns, "app", "app")
	req := e.publishRequest(pod, "secrets", "rot", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req.TargetPath)
	getsBefore := e.metric(t, "kvnode_keyvault_http_requests_total", map[string]string{"operation": "get_secret", "code": "200"})
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assertFiles(t, req.TargetPath, map[string]string{"rotating": "first value"}, nil)
	// The Key Vault metrics: one GET sent, one object observed under
	// upstream's keyvault_request.
	assert.Equal(t, getsBefore+1, e.metric(t, "kvnode_keyvault_http_requests_total", map[string]string{"operation": "get_secret", "code": "200"}))
	assert.Equal(t, float64(1), e.metric(t, "keyvault_request", map[string]string{"object_name": "rotating", "object_type": "secret", "error": ""}))
	assert.Equal(t, v1, e.podStatus(t, ns, "app-rotation-rot")[0]["version"])

	// Nothing changed: the republish fetches, rewrites nothing, tells no one.
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, float64(1), e.metric(t, "rotation_reconcile_total", map[string]string{"rotated": "false"}))

	// A new version: written, recorded, counted and told.
	v2, err := e.emu.SetSecret(badVault, "rotating", "second value", emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assertFiles(t, req.TargetPath, map[string]string{"rotating": "second value"}, nil)
	require.Eventually(t, func() bool { return e.podStatus(t, ns, "app-rotation-rot")[0]["version"] == v2 },
		10*time.Second, 50*time.Millisecond, "the pod status keeps the old version")
	assert.Equal(t, float64(1), e.metric(t, "rotation_reconcile_total", map[string]string{"rotated": "true", "provider": "azure"}))
	assert.Equal(t, float64(2), e.metric(t, "rotation_reconcile_duration_sec", nil))
	normal := waitEvents(t, e, pod, corev1.EventTypeNormal, 1)
	assert.Equal(t, "MountRotationComplete", normal[0].Reason)

	// The vault refuses: the files stay, kubelet hears success, the pod
	// is told why.
	sp, ok := e.emu.Principal(spClientID)
	require.True(t, ok)
	require.NoError(t, e.emu.Revoke(badVault, sp.ObjectID))
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err, "a failed rotation is not a failed volume")
	assertFiles(t, req.TargetPath, map[string]string{"rotating": "second value"}, nil)
	warning := waitEvents(t, e, pod, corev1.EventTypeWarning, 1)
	assert.Equal(t, "MountRotationFailed", warning[0].Reason)
	assert.Contains(t, warning[0].Message, "the files are unchanged")
	assert.NotContains(t, warning[0].Message, spSecret)
	assert.Equal(t, float64(1), e.metric(t, "rotation_reconcile_error_total", map[string]string{"error_type": "PermissionDenied"}))
	require.NoError(t, e.emu.Grant(badVault, sp.ObjectID))

	// A poll interval of an hour: the republish right after the mount does
	// not fetch, so a new version waits.
	for name, d := range map[string]*driverEnv{"polled": polled, "frozen": frozen} {
		p := d.createPod(t, ns, name, "app")
		r := d.publishRequest(p, "secrets", "rot", spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, r.TargetPath)
		_, err = d.node.NodePublishVolume(ctx, r)
		require.NoError(t, err)
		assertFiles(t, r.TargetPath, map[string]string{"rotating": "second value"}, nil)
		before := e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault})
		_, err = e.emu.SetSecret(badVault, "rotating", "value for "+p.Name, emulator.SecretOptions{})
		require.NoError(t, err)
		_, err = d.node.NodePublishVolume(ctx, r)
		require.NoError(t, err)
		assertFiles(t, r.TargetPath, map[string]string{"rotating": "second value"}, nil)
		assert.Equal(t, before, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault}),
			"a republish that is not due fetches nothing")
		assert.Zero(t, d.metric(t, "rotation_reconcile_total", nil))
		_, err = e.emu.SetSecret(badVault, "rotating", "second value", emulator.SecretOptions{})
		require.NoError(t, err)
	}
}

// waitEvents waits for n events of type typ on pod and returns them.
func waitEvents(t *testing.T, e *driverEnv, pod *corev1.Pod, typ string, n int) []corev1.Event {
	t.Helper()
	var items []corev1.Event
	require.Eventually(t, func() bool {
		list, err := e.cp.Client.CoreV1().Events(pod.Namespace).List(callCtx(t), metav1.ListOptions{
			FieldSelector: fields.AndSelectors(
				fields.OneTermEqualSelector("involvedObject.name", pod.Name),
				fields.OneTermEqualSelector("type", typ),
			).String(),
		})
		require.NoError(t, err)
		items = list.Items
		return len(items) >= n
	}, 10*time.Second, 50*time.Millisecond, "no %s event on %s", typ, pod.Name)
	return items
}

// TestKVDriverOptionalObjects: an object marked optional that the vault
// lacks does not fail the mount; its file is absent, a Warning event says
// so, and it appears at the rotation after it is created. A required
// object the vault lacks still fails the mount, and "optional" takes only
// true or false.
func TestKVDriverOptionalObjects(t *testing.T) {
	e := startDriverEnvArgs(t, "--object-cache-ttl", "0")
	seedBadInput(t, e)
	ctx := callCtx(t)
	const ns = "optional"
	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))
	e.createClassOf(t, ns, "opt", "", badParams("objects", objectsParam(
		"objectName: db-password\nobjectType: secret",
		"objectName: not-yet\nobjectType: secret\noptional: true",
		"objectName: not-yet-either\nobjectType: secret\nobjectVersionHistory: 2\noptional: \"true\"")))
	e.createClassOf(t, ns, "required", "", badParams("objects", objectsParam("objectName: never-created\nobjectType: secret")))
	e.createClassOf(t, ns, "bad", "", badParams("objects", objectsParam("objectName: db-password\nobjectType: secret\noptional: maybe")))
	e.waitForClasses(t, ns)

	pod := e.createPod(t, ns, "app", "app")
	req := e.publishRequest(pod, "secrets", "opt", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req.TargetPath)
	_, err := e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assertFiles(t, req.TargetPath, map[string]string{"db-password": dbPassword1}, nil)
	warning := waitEvents(t, e, pod, corev1.EventTypeWarning, 1)
	assert.Contains(t, warning[0].Message, "optional secret not-yet is not in the vault")
	assert.Contains(t, warning[0].Message, "optional secret not-yet-either is not in the vault")

	_, err = e.emu.SetSecret(badVault, "not-yet", "here now", emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assertFiles(t, req.TargetPath, map[string]string{"db-password": dbPassword1, "not-yet": "here now"}, nil)

	for class, code := range map[string]string{"required": "NotFound", "bad": "InvalidArgument"} {
		p := e.createPod(t, ns, class, "app")
		r := e.publishRequest(p, "secrets", class, spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, r.TargetPath)
		_, err := e.node.NodePublishVolume(ctx, r)
		requireCode(t, err, code, map[string]string{"required": "never-created", "bad": `optional: "maybe" is not true or false`}[class])
		e.assertNothingPublished(t, p, r.TargetPath, false)
	}
}

// TestKVDriverSeveralVaults: an object may name its own keyvaultName; it is
// fetched from that vault with the class's identity, next to the objects
// of the class's vault, and a name no vault can have is refused naming the
// object's field.
func TestKVDriverSeveralVaults(t *testing.T) {
	e := startDriverEnvArgs(t, "--object-cache-ttl", "0")
	seedBadInput(t, e)
	ctx := callCtx(t)
	const ns, second = "vaults", "kvnode-second"
	require.NoError(t, e.emu.CreateVault(second, emulator.VaultOptions{TenantID: e2eTenant}))
	sp, ok := e.emu.Principal(spClientID)
	require.True(t, ok)
	require.NoError(t, e.emu.Grant(second, sp.ObjectID))
	_, err := e.emu.SetSecret(second, "db-password", "from the second vault", emulator.SecretOptions{})
	require.NoError(t, err)
	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))
	e.createClassOf(t, ns, "two", "", badParams("objects", objectsParam(
		"objectName: db-password\nobjectType: secret",
		"objectName: db-password\nobjectType: secret\nobjectAlias: second/db-password\nkeyvaultName: "+second)))
	e.createClassOf(t, ns, "bad-name", "", badParams("objects", objectsParam(
		"objectName: db-password\nobjectType: secret\nkeyvaultName: no_such")))
	e.waitForClasses(t, ns)

	pod := e.createPod(t, ns, "app", "app")
	req := e.publishRequest(pod, "secrets", "two", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, req.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, req)
	require.NoError(t, err)
	assertFiles(t, req.TargetPath, map[string]string{"db-password": dbPassword1, "second/db-password": "from the second vault"}, nil)
	assert.Equal(t, 1, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Vault: second, Status: 200}))

	p := e.createPod(t, ns, "bad", "app")
	r := e.publishRequest(p, "secrets", "bad-name", spCredentials(spClientID, spSecret), "")
	mkTargetParent(t, r.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, r)
	requireCode(t, err, "InvalidArgument", "objects[0].keyvaultName")
	e.assertNothingPublished(t, p, r.TargetPath, false)
}

// TestKVDriverThrottledVault: a vault that answers 429 with a Retry-After
// is left alone for that long: the next mounts from it are answered
// ResourceExhausted at once, naming the vault and the wait, without a
// request reaching it, while mounts from another vault go on.
func TestKVDriverThrottledVault(t *testing.T) {
	e := startDriverEnvArgs(t, "--object-cache-ttl", "0")
	seedBadInput(t, e)
	ctx := callCtx(t)
	const ns = "throttle"
	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))
	e.createClassOf(t, ns, "storm", "", badParams("keyvaultName", throttledVault, "objects", objectsParam("objectName: s1\nobjectType: secret")))
	e.createClassOf(t, ns, "calm", "", badParams("objects", objectsParam("objectName: db-password\nobjectType: secret")))
	e.waitForClasses(t, ns)
	// The storm: the throttled vault's one request per ten minutes is spent.
	require.NoError(t, e.emu.SetThrottle(throttledVault, 1, 10*time.Minute))
	stormed := func() int {
		return e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Vault: throttledVault})
	}

	for i := range 4 {
		pod := e.createPod(t, ns, fmt.Sprintf("storm-%d", i), "app")
		req := e.publishRequest(pod, "secrets", "storm", spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, req.TargetPath)
		before := stormed()
		_, err := e.node.NodePublishVolume(ctx, req)
		if i == 0 {
			require.NoError(t, err, "the window's one request") // then the storm
			continue
		}
		requireCode(t, err, "ResourceExhausted", "Key Vault answered 429 (Throttled)")
		e.assertNothingPublished(t, pod, req.TargetPath, false)
		if i > 1 {
			assert.Contains(t, err.Error(), "vault "+throttledVault+" is sent no request for another")
			assert.Equal(t, before, stormed(), "a paused vault is sent nothing")
		}

		calm := e.createPod(t, ns, fmt.Sprintf("calm-%d", i), "app")
		creq := e.publishRequest(calm, "secrets", "calm", spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, creq.TargetPath)
		_, err = e.node.NodePublishVolume(ctx, creq)
		require.NoError(t, err, "another vault's mounts go on")
		assertFiles(t, creq.TargetPath, map[string]string{"db-password": dbPassword1}, nil)
	}
}
