package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

// vaultToken is the nodePublishSecretRef content of the forwarded mounts:
// handed to the plugin, never printed by kvdriver.
const vaultToken = "hvs.kvnode-planted-vault-token"

// providerPlugin is test/provider serving as the plugin of one provider.
type providerPlugin struct {
	cmd    *exec.Cmd
	socket string
}

// startProvider runs test/provider as provider name's plugin in kvdriver's
// providers directory, serving the trees under root.
func startProvider(t *testing.T, e *driverEnv, name, root string) *providerPlugin {
	t.Helper()
	p := &providerPlugin{socket: filepath.Join(e.providers, name+".sock")}
	logs := &syncBuffer{}
	p.cmd = exec.Command(testenv.Binary(t, "provider"), "--socket", p.socket, "--root", root)
	p.cmd.Stdout, p.cmd.Stderr = logs, logs
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, p.cmd.Start())
	cmd := p.cmd
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("provider %s output:\n%s", name, logs)
		}
	})
	require.Eventually(t, func() bool { _, err := os.Stat(p.socket); return err == nil },
		10*time.Second, 20*time.Millisecond, "provider never listened:\n%s", logs)
	return p
}

// kill stops the plugin the hard way: its socket stays behind.
func (p *providerPlugin) kill(t *testing.T) {
	require.NoError(t, p.cmd.Process.Kill())
	_ = p.cmd.Wait()
}

// writeTree creates files (path -> content) with their modes under dir.
func writeTree(t *testing.T, dir string, files map[string]string, modes map[string]os.FileMode) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		require.NoError(t, os.Chmod(p, modes[name]))
	}
}

func TestKVDriverForwardsToOtherProviders(t *testing.T) {
	e := startDriverEnv(t)
	ctx := callCtx(t)
	const ns = "mixed"
	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))

	// An Azure class, served by kvdriver itself in the same run.
	sp, err := e.emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: spClientID, Secret: spSecret})
	require.NoError(t, err)
	require.NoError(t, e.emu.CreateVault(e2eVault, emulator.VaultOptions{TenantID: e2eTenant}))
	require.NoError(t, e.emu.Grant(e2eVault, sp.ObjectID))
	_, err = e.emu.SetSecret(e2eVault, "db-password", dbPassword1, emulator.SecretOptions{})
	require.NoError(t, err)
	e.createClass(t, ns, "azure-db", map[string]string{"keyvaultName": e2eVault, "tenantId": e2eTenant,
		"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"})

	// The plugin of provider "vault", and what its store holds.
	root := t.TempDir()
	binary := string([]byte{0, 1, 2, 0xfe, 0xff, '\n', 0})
	writeTree(t, filepath.Join(root, "app"),
		map[string]string{"config/app.yaml": "listen: :8080\n", "token": "s.vault-object-1", "blob.bin": binary},
		map[string]os.FileMode{"config/app.yaml": 0o640, "token": 0o600, "blob.bin": 0o644})
	plugin := startProvider(t, e, "vault", root)

	hostile := func(files string) map[string]string { return map[string]string{"files": files} }
	classes := map[string]struct {
		provider string
		params   map[string]string
	}{
		"vault-app":      {"vault", map[string]string{"path": "app", "echo": "true", "roleName": "web"}},
		"vault-rotating": {"vault", map[string]string{"path": "app"}},
		"vault-error":    {"vault", map[string]string{"errorCode": "AccessDenied"}},
		"vault-denied":   {"vault", map[string]string{"grpcCode": "PermissionDenied", "grpcMessage": "role web may not read secret/app"}},
		"vault-failing":  {"vault", map[string]string{"grpcCode": "Unknown", "grpcMessage": "vault sealed"}},
		"vault-dotdot":   {"vault", hostile(`[{"path":"ok","mode":420,"contents":"a"},{"path":"../escaped","mode":420,"contents":"b"}]`)},
		"vault-absolute": {"vault", hostile(`[{"path":"/etc/kvnode-escaped","mode":420,"contents":"b"}]`)},
		"vault-setuid":   {"vault", hostile(`[{"path":"run.sh","mode":2541,"contents":"#!/bin/sh"}]`)},
		"vault-conflict": {"vault", hostile(`[{"path":"a","mode":420},{"path":"a/b","mode":420}]`)},
		"vault-many":     {"vault", map[string]string{"fileCount": "100000"}},
		"gcp-missing":    {"gcp", map[string]string{"secrets": "- resourceName: projects/p/secrets/s/versions/latest"}},
	}
	for name, c := range classes {
		e.createClassOf(t, ns, name, c.provider, c.params)
	}
	e.waitForClasses(t, ns)
	secrets := map[string]string{"token": vaultToken}

	var app *csipb.NodePublishVolumeRequest
	t.Run("mounts the plugin's files", func(t *testing.T) {
		pod := e.createPod(t, ns, "web-0", "web")
		app = e.publishRequest(pod, "vault", "vault-app", secrets, plantedToken)
		mkTargetParent(t, app.TargetPath)
		for run := range 2 {
			_, err := e.node.NodePublishVolume(ctx, app)
			require.NoError(t, err, "publish %d", run)
		}
		dir := app.TargetPath
		assertTmpfs(t, dir)
		for name, want := range map[string]struct {
			content string
			mode    os.FileMode
		}{"config/app.yaml": {"listen: :8080\n", 0o640}, "token": {"s.vault-object-1", 0o600}, "blob.bin": {binary, 0o644}} {
			b, mode := readFile(t, dir, name)
			assert.Equal(t, []byte(want.content), b, name)
			assert.Equal(t, want.mode, mode, name)
		}
		link, err := os.Readlink(filepath.Join(dir, "config"))
		require.NoError(t, err)
		assert.Equal(t, filepath.Join("..data", "config"), link, "kvdriver's atomic writer wrote them")

		// What the plugin received: the upstream driver's request.
		b, _ := readFile(t, dir, "request.json")
		var got struct {
			Attributes, Secrets, TargetPath, Permission string
			Serial                                      int
		}
		require.NoError(t, json.Unmarshal(b, &got))
		var attrs, sent map[string]string
		require.NoError(t, json.Unmarshal([]byte(got.Attributes), &attrs))
		for k, v := range map[string]string{"path": "app", "roleName": "web", "echo": "true", "secretProviderClass": "vault-app",
			"csi.storage.k8s.io/pod.name": "web-0", "csi.storage.k8s.io/pod.namespace": ns,
			"csi.storage.k8s.io/pod.uid": string(pod.UID), "csi.storage.k8s.io/serviceAccount.name": "web",
			"csi.storage.k8s.io/ephemeral":             "true",
			"csi.storage.k8s.io/serviceAccount.tokens": app.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"]} {
			assert.Equal(t, v, attrs[k], "attributes[%s]", k)
		}
		require.NoError(t, json.Unmarshal([]byte(got.Secrets), &sent))
		assert.Equal(t, secrets, sent)
		assert.Equal(t, dir, got.TargetPath)
		assert.Equal(t, "420", got.Permission)
		assert.Equal(t, 2, got.Serial, "the republish called the plugin again")

		st := e.podStatus(t, ns, "web-0-"+ns+"-vault-app")
		ids := map[string]bool{}
		for _, o := range st {
			ids[o["id"].(string)] = o["version"] != ""
		}
		assert.Equal(t, map[string]bool{"file/config/app.yaml": true, "file/token": true, "file/blob.bin": true}, ids)
	})

	t.Run("rotates at republish", func(t *testing.T) {
		pod := e.createPod(t, ns, "rot-0", "web")
		req := e.publishRequest(pod, "vault", "vault-rotating", secrets, "")
		mkTargetParent(t, req.TargetPath)
		_, err := e.node.NodePublishVolume(ctx, req)
		require.NoError(t, err)
		before := e.podStatus(t, ns, "rot-0-"+ns+"-vault-rotating")
		writeTree(t, filepath.Join(root, "app"), map[string]string{"token": "s.vault-object-2"}, map[string]os.FileMode{"token": 0o600})
		_, err = e.node.NodePublishVolume(ctx, req)
		require.NoError(t, err)
		b, mode := readFile(t, req.TargetPath, "token")
		assert.Equal(t, "s.vault-object-2", string(b))
		assert.Equal(t, os.FileMode(0o600), mode)
		require.Eventually(t, func() bool {
			return !assert.ObjectsAreEqual(before, e.podStatus(t, ns, "rot-0-"+ns+"-vault-rotating"))
		}, 10*time.Second, 50*time.Millisecond, "the new version was not recorded")

		// A hostile answer at a republish changes nothing: kubelet hears
		// success, as from upstream, and the pod is told with a Warning.
		e.setParams(t, ns, "vault-rotating", hostile(`[{"path":"../escaped","mode":420,"contents":"b"}]`))
		require.Eventually(t, func() bool {
			_, err := e.node.NodePublishVolume(ctx, req)
			require.NoError(t, err)
			for _, ev := range warningEvents(t, e, pod) {
				if ev.Reason == "MountRotationFailed" && strings.Contains(ev.Message, `"../escaped" must be a relative path inside the mount`) {
					return true
				}
			}
			return false
		}, 10*time.Second, 100*time.Millisecond, "the class update never reached kvdriver")
		b, _ = readFile(t, req.TargetPath, "token")
		assert.Equal(t, "s.vault-object-2", string(b))
		assertTmpfs(t, req.TargetPath)
		assert.NoFileExists(t, filepath.Join(filepath.Dir(req.TargetPath), "escaped"))
	})

	t.Run("refusals leave nothing", func(t *testing.T) {
		for i, tc := range []struct {
			class   string
			code    codes.Code
			message []string
		}{
			{"vault-error", codes.Internal, []string{`provider "vault" at ` + plugin.socket, `provider error code "AccessDenied"`}},
			{"vault-denied", codes.PermissionDenied, []string{`provider "vault" at ` + plugin.socket, "role web may not read secret/app"}},
			{"vault-failing", codes.Internal, []string{"vault sealed"}},
			{"vault-dotdot", codes.Internal, []string{`files[1].path: "../escaped" must be a relative path inside the mount`, "nothing written"}},
			{"vault-absolute", codes.Internal, []string{`"/etc/kvnode-escaped" must be a relative path inside the mount`}},
			{"vault-setuid", codes.Internal, []string{"mode 2541 is not a permission"}},
			{"vault-conflict", codes.Internal, []string{`returned files that cannot be written`, `"a" is both a file and a directory`}},
			{"vault-many", codes.Internal, []string{"100000 files, more than the 4096"}},
			{"gcp-missing", codes.FailedPrecondition, []string{`provider "gcp": not installed on this node: no plugin socket at ` + filepath.Join(e.providers, "gcp.sock")}},
		} {
			t.Run(tc.class, func(t *testing.T) {
				pod := e.createPod(t, ns, tc.class+"-0", "web")
				req := e.publishRequest(pod, "vault", tc.class, secrets, plantedToken)
				mkTargetParent(t, req.TargetPath)
				existed := i%2 == 1
				if existed {
					require.NoError(t, os.Mkdir(req.TargetPath, 0o750))
				}
				for run := range 2 {
					_, err := e.node.NodePublishVolume(ctx, req)
					st := status.Convert(err)
					require.Error(t, err, "run %d", run)
					assert.Equal(t, tc.code, st.Code(), "run %d: %s", run, st.Message())
					for _, want := range tc.message {
						assert.Contains(t, st.Message(), want, "run %d", run)
					}
					assert.NotContains(t, st.Message(), vaultToken)
					e.assertNothingPublished(t, pod, req.TargetPath, existed)
				}
				assert.NoFileExists(t, filepath.Join(filepath.Dir(req.TargetPath), "escaped"))
				assert.NoFileExists(t, "/etc/kvnode-escaped")
			})
		}
	})

	t.Run("azure classes keep working", func(t *testing.T) {
		pod := e.createPod(t, ns, "db-0", "web")
		req := e.publishRequest(pod, "kv", "azure-db", spCredentials(spClientID, spSecret), "")
		mkTargetParent(t, req.TargetPath)
		_, err := e.node.NodePublishVolume(ctx, req)
		require.NoError(t, err)
		b, _ := readFile(t, req.TargetPath, "db-password")
		assert.Equal(t, dbPassword1, string(b))
	})

	t.Run("a plugin that is down", func(t *testing.T) {
		plugin.kill(t)
		_, err := os.Stat(plugin.socket)
		require.NoError(t, err, "a killed plugin leaves its socket")
		pod := e.createPod(t, ns, "down-0", "web")
		req := e.publishRequest(pod, "vault", "vault-app", secrets, "")
		mkTargetParent(t, req.TargetPath)
		start := time.Now()
		_, err = e.node.NodePublishVolume(ctx, req)
		st := status.Convert(err)
		assert.Equal(t, codes.Unavailable, st.Code(), st.Message())
		assert.Contains(t, st.Message(), `provider "vault" at `+plugin.socket+": does not answer")
		assert.Less(t, time.Since(start), 15*time.Second)
		e.assertNothingPublished(t, pod, req.TargetPath, false)

		// Back up: the next publish reaches it.
		startProvider(t, e, "vault", root)
		_, err = e.node.NodePublishVolume(ctx, req)
		require.NoError(t, err)
		b, _ := readFile(t, req.TargetPath, "token")
		assert.Equal(t, "s.vault-object-2", string(b))
	})

	t.Run("unpublish", func(t *testing.T) {
		require.NotNil(t, app)
		for run := range 2 {
			_, err := e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: app.VolumeId, TargetPath: app.TargetPath})
			require.NoError(t, err, "unpublish %d", run)
		}
		assert.NoDirExists(t, app.TargetPath)
	})

	assert.NotContains(t, e.logs.String(), vaultToken, "the nodePublishSecretRef reached kvdriver's log")
	assert.NotContains(t, e.logs.String(), "s.vault-object", "a file's content reached kvdriver's log")
}

// podStatus returns the objects of a SecretProviderClassPodStatus once it
// is written.
func (e *driverEnv) podStatus(t *testing.T, namespace, name string) []map[string]any {
	t.Helper()
	var objects []map[string]any
	require.Eventually(t, func() bool {
		st, err := e.dyn.Resource(spc.SecretProviderClassPodStatusesResource).Namespace(namespace).
			Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		list, _, _ := unstructured.NestedSlice(st.Object, "status", "objects")
		objects = nil
		for _, o := range list {
			objects = append(objects, o.(map[string]any))
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "SecretProviderClassPodStatus %s/%s not recorded", namespace, name)
	return objects
}

// setParams replaces a class's spec.parameters.
func (e *driverEnv) setParams(t *testing.T, namespace, name string, params map[string]string) {
	t.Helper()
	res := e.dyn.Resource(spc.SecretProviderClassesResource).Namespace(namespace)
	obj, err := res.Get(context.Background(), name, metav1.GetOptions{})
	require.NoError(t, err)
	p := map[string]any{}
	for k, v := range params {
		p[k] = v
	}
	require.NoError(t, unstructured.SetNestedMap(obj.Object, p, "spec", "parameters"))
	_, err = res.Update(context.Background(), obj, metav1.UpdateOptions{})
	require.NoError(t, err)
}
