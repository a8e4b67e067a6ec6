package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

const (
	podIDVault  = "kvnode-podid"
	podIDSecret = "read-through-nmi-with-the-pods-own-identity"
)

// TestPodIdentityMounts drives the kvdriver binary, over CSI and as the
// azure/kv FlexVolume driver, with usePodIdentity against the nmi binary on
// the same node: each pod's volume is read with the identity nmi binds to
// that pod (workload identity for A, an AzureIdentityBinding for B), and a
// pod with no binding gets PermissionDenied and nothing mounted.
func TestPodIdentityMounts(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	appA, miB := bindABC(ctx, t, cp, emu)
	require.NoError(t, emu.CreateVault(podIDVault, emulator.VaultOptions{TenantID: nmiTenant}))
	for _, oid := range []string{appA.ObjectID, miB.ObjectID} {
		require.NoError(t, emu.Grant(podIDVault, oid, "secrets/get"))
	}
	_, err := emu.SetSecret(podIDVault, "db-password", podIDSecret, emulator.SecretOptions{})
	require.NoError(t, err)
	pods := []*nmiPod{{name: "pod-a", sa: "sa-a", ip: "10.244.2.2"}, {name: "pod-b", sa: "sa-b", ip: "10.244.2.3"}, {name: "pod-c", sa: "sa-c", ip: "10.244.2.4"}}
	for _, p := range pods {
		createNodePod(ctx, t, cp, p)
	}

	nmi := startNMI(t, cp, emu)
	nmi.waitReady(t)
	kv := startKVDriver(t, cp, emu, "--nmi-endpoint", "http://"+nmi.host, "--object-cache-ttl", "0")
	kv.createClass(t, "apps", "podid", map[string]string{
		"keyvaultName": podIDVault, "tenantId": nmiTenant, "usePodIdentity": "true",
		"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n",
	})

	t.Run("CSI", func(t *testing.T) {
		for _, p := range pods {
			pod, err := cp.Client.CoreV1().Pods("apps").Get(ctx, p.name, metav1.GetOptions{})
			require.NoError(t, err)
			req := kv.publishRequest(pod, "secrets", "podid", nil, "")
			mkTargetParent(t, req.TargetPath)
			_, err = kv.node.NodePublishVolume(ctx, req)
			if p.name == "pod-c" {
				requireCode(t, err, "PermissionDenied", "nmi answered 403: No identity is bound to this pod")
				assert.NoDirExists(t, req.TargetPath)
				continue
			}
			require.NoError(t, err, p.name)
			b, _ := readFile(t, req.TargetPath, "db-password")
			assert.Equal(t, podIDSecret, string(b), p.name)
		}
		assert.Equal(t, 1, emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Identity: miB.ClientID, Status: 200}),
			"B's token came from the node's IMDS through nmi")
	})

	t.Run("FlexVolume", func(t *testing.T) {
		for _, p := range pods {
			pod, err := cp.Client.CoreV1().Pods("apps").Get(ctx, p.name, metav1.GetOptions{})
			require.NoError(t, err)
			dir := filepath.Join(kv.kubelet, "pods", string(pod.UID), "volumes", "azure~kv", "flex")
			require.NoError(t, os.MkdirAll(dir, 0o750))
			opts := kubeletOptions(t, flexPod{name: pod.Name, namespace: pod.Namespace, uid: string(pod.UID), serviceAccount: p.sa}, "flex",
				map[string]string{"keyvaultname": podIDVault, "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
					"tenantid": nmiTenant, "usepodidentity": "true"}, nil, -1)
			cmd := exec.Command(testenv.Binary(t, "kvdriver"), "flexvolume", "--nmi-endpoint", "http://"+nmi.host, "mount", dir, opts)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, emu.Env()...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			out, _ := cmd.CombinedOutput()
			var res struct{ Status, Message string }
			require.NoError(t, json.Unmarshal(out, &res), "%s", out)
			if p.name == "pod-c" {
				assert.Equal(t, "Failure", res.Status)
				assert.Contains(t, res.Message, "nmi answered 403: No identity is bound to this pod")
				entries, err := os.ReadDir(dir)
				require.NoError(t, err)
				assert.Empty(t, entries, "nothing written for a refused pod")
				continue
			}
			require.Equal(t, "Success", res.Status, res.Message)
			b, _ := readFile(t, dir, "db-password")
			assert.Equal(t, podIDSecret, string(b), p.name)
		}
	})
}
