package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

const (
	smokeTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	smokeClient = "5b7a3c2e-0d1f-4e6a-9b8c-1a2b3c4d5e6f"
	smokeVault  = "kvnode-smoke"
	smokeValue  = "s3cr3t-from-the-smoke-vault"
)

// TestSmokeWorkloadIdentity proves the foundation's pieces fit: a real
// service-account token from TokenRequest is accepted by the emulator's
// Entra ID as a federated credential, the unmodified Azure SDK reads a Key
// Vault secret with the resulting access token, and a service account
// without a federated credential is refused.
func TestSmokeWorkloadIdentity(t *testing.T) {
	testenv.RequireNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cp := controlplane.Start(t, controlplane.Options{})
	emu := emulator.StartT(t)

	// Entra ID trusts the cluster's service-account issuer.
	jwks, err := cp.JWKS(ctx)
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(cp.Issuer, jwks))

	app, err := emu.AddApplication(emulator.Principal{TenantID: smokeTenant, ClientID: smokeClient})
	require.NoError(t, err)
	require.NoError(t, emu.AddFederatedCredential(smokeClient, emulator.FederatedCredential{
		Issuer: cp.Issuer, Subject: "system:serviceaccount:demo:workload",
	}))
	require.NoError(t, emu.CreateVault(smokeVault, emulator.VaultOptions{TenantID: smokeTenant}))
	_, err = emu.SetSecret(smokeVault, "db-password", smokeValue, emulator.SecretOptions{})
	require.NoError(t, err)
	require.NoError(t, emu.Grant(smokeVault, app.ObjectID, "secrets/get"))

	// The cluster side: a namespace, two service accounts, a pod.
	annotations := map[string]string{
		"azure.workload.identity/client-id": smokeClient,
		"azure.workload.identity/tenant-id": smokeTenant,
	}
	_, err = cp.CreateServiceAccount(ctx, "demo", "workload", annotations)
	require.NoError(t, err)
	_, err = cp.CreateServiceAccount(ctx, "demo", "intruder", annotations)
	require.NoError(t, err)
	pods := map[string]*corev1.Pod{}
	for _, sa := range []string{"workload", "intruder"} {
		pods[sa], err = cp.Client.CoreV1().Pods("demo").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: sa + "-app", Namespace: "demo"},
			Spec: corev1.PodSpec{
				ServiceAccountName: sa,
				Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
			},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
	}

	// The pod's token, as kubelet would project it for workload identity,
	// handed to the unmodified SDK through AZURE_FEDERATED_TOKEN_FILE.
	vaultURL := "https://" + smokeVault + ".vault.azure.net/"
	run := func(t *testing.T, sa string) testenv.SDKResult {
		t.Helper()
		st, err := cp.ServiceAccountToken(ctx, "demo", sa, []string{emulator.DefaultFederatedAudience}, time.Hour, pods[sa])
		require.NoError(t, err)
		tokenFile := filepath.Join(t.TempDir(), "token")
		require.NoError(t, os.WriteFile(tokenFile, []byte(st.Token), 0o600))
		env := append(emu.Env(),
			"AZURE_CLIENT_ID="+smokeClient,
			"AZURE_TENANT_ID="+smokeTenant,
			"AZURE_FEDERATED_TOKEN_FILE="+tokenFile,
			"AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/",
		)
		return testenv.SDKClient(t, env, "-cred", "workload-identity", "-timeout", "30s",
			"secret-get", "-vault", vaultURL, "-name", "db-password")
	}

	t.Run("bound service account reads the secret", func(t *testing.T) {
		var out struct {
			Secret struct {
				Value string `json:"value"`
			} `json:"secret"`
		}
		run(t, "workload").Decode(t, &out)
		assert.Equal(t, smokeValue, out.Secret.Value)

		tokens := emu.Requests(emulator.RequestFilter{Service: emulator.ServiceEntra, Identity: smokeClient, Method: "POST"})
		require.Len(t, tokens, 1, "one token request")
		assert.Equal(t, 200, tokens[0].Status)
		assert.Equal(t, "client_assertion", tokens[0].Grant)
		assert.Equal(t, 1, emu.CountRequests(emulator.RequestFilter{
			Service: emulator.ServiceKeyVault, Vault: smokeVault, Identity: smokeClient, Status: 200,
		}), "one authorised Key Vault GET")
	})

	t.Run("service account without a federated credential is refused", func(t *testing.T) {
		emu.ResetRequests()
		res := run(t, "intruder")
		require.NotNil(t, res.Err, "intruder must not get a token")
		assert.Equal(t, "auth", res.Err.Kind)
		assert.Contains(t, res.Err.Message, "AADSTS700213: No matching federated identity record found for presented assertion subject 'system:serviceaccount:demo:intruder'")
		assert.Zero(t, emu.CountRequests(emulator.RequestFilter{
			Service: emulator.ServiceKeyVault, Status: 200,
		}), "no Key Vault read")
	})
}
