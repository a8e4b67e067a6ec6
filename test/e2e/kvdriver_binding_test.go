package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/kubelet"
	"github.com/kvnode/kvnode/test/testenv"
)

const (
	// ibClientID is the managed identity of the identity-binding tests.
	ibClientID = "44444444-5555-4666-8777-888888888888"
	// ibClusterID is the AKS cluster ID the tests' token proxy belongs to.
	ibClusterID = "kvnode-e2e-cluster"
	// ibProxyURL is where the upstream provider finds the token proxy: the
	// API server's service name.
	ibProxyURL = "https://kubernetes.default.svc.cluster.local"
)

// TestKVDriverIdentityBinding mounts a useAzureTokenProxy class through the
// real kvdriver, configured as a user configures it on AKS (token proxy URL,
// its SNI name, its CA), against the emulator's token proxy, and checks the
// refusals: no token for the binding audience, a service account the
// identity is not bound to, and a node without the proxy configuration.
func TestKVDriverIdentityBinding(t *testing.T) {
	testenv.RequireNetns(t)
	cp, emu := startNode(t)
	sni := identity.SNIName(ibClusterID)
	require.NoError(t, emu.EnableTokenProxy(emulator.TokenProxyOptions{Host: "kubernetes.default.svc.cluster.local", SNIName: sni}))
	e := startKVDriver(t, cp, emu, "--object-cache-ttl", driverCacheTTL.String(),
		"--token-proxy-url", ibProxyURL, "--token-proxy-sni-name", sni, "--token-proxy-ca-file", emu.CAFile())
	seedVault(t, e)
	mi, err := emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: ibClientID})
	require.NoError(t, err)
	require.NoError(t, emu.Grant(e2eVault, mi.ObjectID))
	require.NoError(t, emu.AddIdentityBinding(emulator.IdentityBinding{ClientID: ibClientID, Issuer: cp.Issuer, Subject: "system:serviceaccount:apps:web"}))

	ctx := callCtx(t)
	require.NoError(t, cp.EnsureNamespace(ctx, "apps"))
	e.createClass(t, "apps", "ib", map[string]string{
		"keyvaultName": e2eVault, "tenantId": e2eTenant, "useAzureTokenProxy": "true", "clientID": ibClientID,
		"objects": "array:\n  - |\n    objectName: db-password\n    objectType: secret\n",
	})
	web := e.createPod(t, "apps", "web-0", "web")
	intruder := e.createPod(t, "apps", "intruder-0", "intruder")
	token := func(pod, sa, audience string) string {
		p, err := cp.Client.CoreV1().Pods("apps").Get(ctx, pod, metav1.GetOptions{})
		require.NoError(t, err)
		st, err := cp.ServiceAccountToken(ctx, "apps", sa, []string{audience}, time.Hour, p)
		require.NoError(t, err)
		return st.Token
	}
	webBinding := token("web-0", "web", identity.BindingAudience)
	e.planted = append(e.planted, webBinding)

	// kubelet passes both audiences' tokens; the binding one is used.
	req := e.publishRequest(web, "secrets", "ib", nil, "")
	kubelet.SetTokens(req, kubelet.Tokens{emulator.DefaultFederatedAudience: token("web-0", "web", emulator.DefaultFederatedAudience),
		identity.BindingAudience: webBinding})
	mkTargetParent(t, req.TargetPath)
	for range 2 { // idempotent
		_, err = e.node.NodePublishVolume(ctx, req)
		require.NoError(t, err)
	}
	b, _ := readFile(t, req.TargetPath, "db-password")
	assert.Equal(t, dbPassword2, string(b))
	assert.Equal(t, 1, emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceTokenProxy, Method: "POST", Identity: ibClientID, Status: 200}),
		"one exchange at the token proxy, then the credential's cached token")
	assert.Zero(t, emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Identity: ibClientID}), "never Entra ID directly")

	// Without the binding audience's token the mount is refused, not
	// treated as workload identity.
	noBinding := e.publishRequest(web, "nobinding", "ib", nil, token("web-0", "web", emulator.DefaultFederatedAudience))
	mkTargetParent(t, noBinding.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, noBinding)
	requireCode(t, err, "InvalidArgument", "has no token for audience api://AKSIdentityBinding")
	assert.NoDirExists(t, noBinding.TargetPath)

	// A service account the identity is not bound to is refused by the proxy.
	bad := e.publishRequest(intruder, "secrets", "ib", nil, "")
	kubelet.SetTokens(bad, kubelet.Tokens{identity.BindingAudience: token("intruder-0", "intruder", identity.BindingAudience)})
	mkTargetParent(t, bad.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, bad)
	requireCode(t, err, "PermissionDenied", "AADSTS700213")
	assert.NoDirExists(t, bad.TargetPath)

	// A node whose kvdriver has no token proxy refuses, naming the setting;
	// one whose proxy SNI name cannot be derived (this API server is not
	// AKS's) says so.
	for _, tc := range []struct {
		name    string
		args    []string
		message string
	}{
		{name: "no proxy", message: "--token-proxy-url or $AZURE_KUBERNETES_TOKEN_PROXY"},
		{name: "no SNI name", args: []string{"--token-proxy-url", ibProxyURL, "--token-proxy-ca-file", emu.CAFile()},
			message: "no SAN hcp-kubernetes.<cluster-id>.svc.cluster.local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := startKVDriver(t, cp, emu, tc.args...)
			req := other.publishRequest(web, "secrets", "ib", nil, "")
			kubelet.SetTokens(req, kubelet.Tokens{identity.BindingAudience: webBinding})
			mkTargetParent(t, req.TargetPath)
			_, err := other.node.NodePublishVolume(callCtx(t), req)
			requireCode(t, err, "FailedPrecondition", tc.message)
			assert.NoDirExists(t, req.TargetPath)
			assert.NotContains(t, other.logs.String(), webBinding)
		})
	}

	logs := e.logs.String()
	for _, secret := range e.planted {
		if i := strings.Index(logs, secret); i >= 0 {
			t.Fatalf("a token reached kvdriver's log: ...%s...", logs[max(0, i-200):i])
		}
	}
}
