package emulator

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/testenv"
)

// These tests run the real, unmodified Azure SDK for Go (azidentity, through
// test/sdkclient) against the emulator in a network namespace that has only
// loopback. They prove that the emulator's Entra ID and IMDS are what the SDK
// expects on the wire.

type sdkToken struct {
	Token struct {
		ExpiresOn string         `json:"expires_on"`
		Claims    map[string]any `json:"claims"`
	} `json:"token"`
}

func sdkTokenFor(t *testing.T, e *Emulator, env []string, args ...string) sdkToken {
	t.Helper()
	res := testenv.SDKClient(t, append(e.Env(), env...), append(args, "token", "-scope", "https://vault.azure.net/.default")...)
	var out sdkToken
	res.Decode(t, &out)
	return out
}

func TestSDKClientSecretCredential(t *testing.T) {
	testenv.RequireNetns(t)
	e := idEmulator(t)
	p, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)

	tok := sdkTokenFor(t, e, nil, "-cred", "client-secret", "-tenant", idTenant, "-client-id", idAppClient, "-secret", idAppSecret)
	assert.Equal(t, p.ObjectID, tok.Token.Claims["oid"])
	assert.Equal(t, idAppClient, tok.Token.Claims["appid"])
	assert.Equal(t, "https://vault.azure.net", tok.Token.Claims["aud"])
	exp, err := time.Parse(time.RFC3339, tok.Token.ExpiresOn)
	require.NoError(t, err)
	assert.WithinDuration(t, time.Now().Add(time.Hour), exp, time.Minute)
	assert.Equal(t, 1, e.CountRequests(RequestFilter{Service: ServiceEntra, Method: "POST", Status: 200, Identity: idAppClient}))

	res := testenv.SDKClient(t, e.Env(), "-cred", "client-secret", "-tenant", idTenant, "-client-id", idAppClient, "-secret", "wrong",
		"token", "-scope", "https://vault.azure.net/.default")
	require.NotNil(t, res.Err)
	assert.Equal(t, "auth", res.Err.Kind)
	assert.Equal(t, 401, res.Err.Status)
	assert.Contains(t, res.Err.Message, "AADSTS7000215")
	assert.Less(t, res.Duration, 30*time.Second, "an invalid secret fails fast")
}

func TestSDKClientSecretCredentialSovereignClouds(t *testing.T) {
	testenv.RequireNetns(t)
	e := idEmulator(t)
	_, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)
	for _, cl := range Clouds[1:] {
		t.Run(cl.Name, func(t *testing.T) {
			res := testenv.SDKClient(t, e.Env(), "-cloud", cl.Name, "-cred", "client-secret", "-tenant", idTenant, "-client-id", idAppClient,
				"-secret", idAppSecret, "token", "-scope", cl.VaultResource()+"/.default")
			var out sdkToken
			res.Decode(t, &out)
			assert.Equal(t, cl.VaultResource(), out.Token.Claims["aud"])
			assert.Positive(t, e.CountRequests(RequestFilter{Service: ServiceEntra, Status: 200}))
		})
	}
	for _, r := range e.Requests(RequestFilter{Service: ServiceEntra}) {
		assert.NotEqual(t, "login.microsoftonline.com", r.Host, "sovereign clouds use their own authority")
	}
}

func TestSDKFederatedCredentials(t *testing.T) {
	testenv.RequireNetns(t)
	e := idEmulator(t)
	key := newIssuerKeyRSA(t, "sa-key")
	require.NoError(t, e.TrustIssuer(idIssuer, key.jwks))
	p, err := e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient,
		Federated: []FederatedCredential{{Issuer: idIssuer, Subject: idSubject}}})
	require.NoError(t, err)
	dir := t.TempDir()
	write := func(name, sub string) string {
		path := filepath.Join(dir, name)
		tok := key.sign(t, saClaims(idIssuer, sub, []string{DefaultFederatedAudience}, time.Now(), time.Now().Add(time.Hour)))
		require.NoError(t, os.WriteFile(path, []byte(tok), 0o600))
		return path
	}
	good := write("good", idSubject)
	wrong := write("wrong", "system:serviceaccount:default:other")

	t.Run("ClientAssertionCredential", func(t *testing.T) {
		tok := sdkTokenFor(t, e, nil, "-cred", "client-assertion", "-tenant", idTenant, "-client-id", idAppClient, "-assertion-file", good)
		assert.Equal(t, p.ObjectID, tok.Token.Claims["oid"])
	})
	t.Run("WorkloadIdentityCredential", func(t *testing.T) {
		tok := sdkTokenFor(t, e, []string{"AZURE_CLIENT_ID=" + idAppClient, "AZURE_TENANT_ID=" + idTenant, "AZURE_FEDERATED_TOKEN_FILE=" + good},
			"-cred", "workload-identity")
		assert.Equal(t, p.ObjectID, tok.Token.Claims["oid"])
		assert.Equal(t, idTenant, tok.Token.Claims["tid"])
	})
	t.Run("WorkloadIdentityCredential with another service account", func(t *testing.T) {
		res := testenv.SDKClient(t, append(e.Env(), "AZURE_CLIENT_ID="+idAppClient, "AZURE_TENANT_ID="+idTenant, "AZURE_FEDERATED_TOKEN_FILE="+wrong),
			"-cred", "workload-identity", "token", "-scope", "https://vault.azure.net/.default")
		require.NotNil(t, res.Err)
		assert.Equal(t, "auth", res.Err.Kind)
		assert.Contains(t, res.Err.Message, "AADSTS700213")
	})
	assert.Equal(t, 2, e.CountRequests(RequestFilter{Service: ServiceEntra, Status: 200, Identity: idAppClient}))
}

func TestSDKManagedIdentityCredential(t *testing.T) {
	testenv.RequireNetns(t)
	e := idEmulator(t)
	a, err := e.AddManagedIdentity(Principal{TenantID: idTenant, ClientID: "aaaaaaaa-0000-4000-8000-00000000000a"})
	require.NoError(t, err)

	t.Run("the single assigned identity", func(t *testing.T) {
		tok := sdkTokenFor(t, e, nil, "-cred", "managed-identity")
		assert.Equal(t, a.ObjectID, tok.Token.Claims["oid"])
		assert.Equal(t, a.ResourceID, tok.Token.Claims["xms_mirid"])
		exp, err := time.Parse(time.RFC3339, tok.Token.ExpiresOn)
		require.NoError(t, err)
		assert.WithinDuration(t, time.Now().Add(time.Hour), exp, time.Minute, "expires_on as a string is understood")
	})

	b, err := e.AddManagedIdentity(Principal{TenantID: idTenant, ClientID: "bbbbbbbb-0000-4000-8000-00000000000b"})
	require.NoError(t, err)
	tests := []struct {
		name string
		args []string
		want Principal
	}{
		{"by client ID", []string{"-mi-client-id", b.ClientID}, b},
		{"by object ID", []string{"-mi-object-id", a.ObjectID}, a},
		{"by resource ID", []string{"-mi-resource-id", b.ResourceID}, b},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.ResetRequests()
			tok := sdkTokenFor(t, e, nil, append([]string{"-cred", "managed-identity"}, tc.args...)...)
			assert.Equal(t, tc.want.ObjectID, tok.Token.Claims["oid"])
			assert.Equal(t, tc.want.ClientID, tok.Token.Claims["appid"])
			reqs := e.Requests(RequestFilter{Service: ServiceIMDS})
			require.Len(t, reqs, 1, "one IMDS request, no probe, no retry")
			assert.Equal(t, tc.want.ClientID, reqs[0].Identity)
		})
	}

	t.Run("several identities and none named", func(t *testing.T) {
		res := testenv.SDKClient(t, e.Env(), "-cred", "managed-identity", "token", "-scope", "https://vault.azure.net/.default")
		require.NotNil(t, res.Err)
		assert.Contains(t, res.Err.Message, "Multiple user assigned identities exist")
	})

	t.Run("an identity not assigned", func(t *testing.T) {
		res := testenv.SDKClient(t, e.Env(), "-cred", "managed-identity", "-mi-client-id", "cccccccc-0000-4000-8000-00000000000c",
			"token", "-scope", "https://vault.azure.net/.default")
		require.NotNil(t, res.Err)
		assert.Equal(t, "auth", res.Err.Kind)
		assert.Equal(t, 400, res.Err.Status)
		assert.Less(t, res.Duration, 30*time.Second, "400 is not retried")
	})

	t.Run("IMDS updating (410) is retried", func(t *testing.T) {
		e.ResetRequests()
		require.NoError(t, e.InjectIMDSFault(Fault{Status: 410, Count: 1}))
		tok := sdkTokenFor(t, e, nil, "-cred", "managed-identity", "-mi-client-id", a.ClientID)
		assert.Equal(t, a.ObjectID, tok.Token.Claims["oid"])
		assert.Equal(t, 1, e.CountRequests(RequestFilter{Service: ServiceIMDS, Status: 410}))
		assert.Equal(t, 1, e.CountRequests(RequestFilter{Service: ServiceIMDS, Status: 200}))
	})
}
