package identity

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	tenant    = "3d6a1c2b-8e4f-4a7b-9c0d-1e2f3a4b5c6d"
	spClient  = "aaaaaaaa-1111-4222-8333-444444444444"
	wiClient  = "bbbbbbbb-1111-4222-8333-444444444444"
	miClient  = "cccccccc-1111-4222-8333-444444444444"
	issuer    = "https://oidc.kvnode.test/cluster-1"
	authority = "https://login.microsoftonline.com/"
	kvScope   = "https://vault.azure.net/.default"
)

// fixture is an emulator with one application of each kind and credentials
// that reach it through the proxy, as a node behind a corporate proxy would.
type fixture struct {
	emu   *emulator.Emulator
	creds *Credentials
	iss   *emulator.Issuer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.RequireNetns(t)
	emu := emulator.StartT(t)

	iss, err := emulator.NewIssuer(issuer)
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(issuer, iss.JWKS()))
	_, err = emu.AddApplication(emulator.Principal{TenantID: tenant, ClientID: spClient, Secret: "sp-secret-1"})
	require.NoError(t, err)
	_, err = emu.AddApplication(emulator.Principal{TenantID: tenant, ClientID: wiClient, Federated: []emulator.FederatedCredential{
		{Issuer: issuer, Subject: "system:serviceaccount:apps:web"},
	}})
	require.NoError(t, err)
	_, err = emu.AddManagedIdentity(emulator.Principal{TenantID: tenant, ClientID: miClient})
	require.NoError(t, err)

	creds := NewCredentials(Options{ClientOptions: azcore.ClientOptions{Transport: emu.HTTPClient()}})
	return &fixture{emu: emu, creds: creds, iss: iss}
}

// saToken signs a service-account token the way kube-apiserver would.
func (f *fixture) saToken(t *testing.T, ns, sa string) string {
	t.Helper()
	s, err := f.iss.ServiceAccountToken(ns, sa, WorkloadAudience)
	require.NoError(t, err)
	return s
}

func claims(t *testing.T, cred azcore.TokenCredential) jwt.MapClaims {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{kvScope}})
	require.NoError(t, err)
	c := jwt.MapClaims{}
	_, _, err = jwt.NewParser().ParseUnverified(tok.Token, c)
	require.NoError(t, err)
	return c
}

func (f *fixture) tokenRequests(clientID string) int {
	return f.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: http.MethodPost, Identity: clientID})
}

func TestServicePrincipalCredentialIsReused(t *testing.T) {
	f := newFixture(t)
	req := Request{Mode: ServicePrincipal, AuthorityHost: authority, TenantID: tenant, ClientID: spClient, ClientSecret: "sp-secret-1"}

	cred, id, err := f.creds.Credential(req)
	require.NoError(t, err)
	assert.Equal(t, spClient, claims(t, cred)["appid"])
	assert.NotContains(t, id, "sp-secret-1")

	again, id2, err := f.creds.Credential(req)
	require.NoError(t, err)
	assert.Same(t, cred, again)
	assert.Equal(t, id, id2)
	claims(t, again)
	assert.Equal(t, 1, f.tokenRequests(spClient), "the second mount reuses the cached access token")

	rotated := req
	rotated.ClientSecret = "sp-secret-2"
	other, id3, err := f.creds.Credential(rotated)
	require.NoError(t, err)
	assert.NotSame(t, cred, other, "a different secret is a different credential")
	assert.NotEqual(t, id, id3)
	_, err = other.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{kvScope}})
	var authErr *azidentity.AuthenticationFailedError
	require.ErrorAs(t, err, &authErr)
	assert.Contains(t, err.Error(), "AADSTS7000215")
	assert.NotContains(t, err.Error(), "sp-secret-2")
}

func TestWorkloadIdentityCredentialIsPerServiceAccount(t *testing.T) {
	f := newFixture(t)
	web := Request{Mode: WorkloadIdentity, AuthorityHost: authority, TenantID: tenant, ClientID: wiClient,
		Namespace: "apps", ServiceAccount: "web", ServiceAccountToken: f.saToken(t, "apps", "web")}

	cred, _, err := f.creds.Credential(web)
	require.NoError(t, err)
	assert.Equal(t, wiClient, claims(t, cred)["appid"])

	// The next mount brings a newer token: same credential, no new exchange
	// while the access token is valid.
	web.ServiceAccountToken = f.saToken(t, "apps", "web")
	again, _, err := f.creds.Credential(web)
	require.NoError(t, err)
	assert.Same(t, cred, again)
	claims(t, again)
	assert.Equal(t, 1, f.tokenRequests(wiClient))

	// Another service account naming the same client ID gets its own
	// credential, and Entra ID refuses its token.
	intruder := web
	intruder.ServiceAccount = "intruder"
	intruder.ServiceAccountToken = f.saToken(t, "apps", "intruder")
	other, _, err := f.creds.Credential(intruder)
	require.NoError(t, err)
	assert.NotSame(t, cred, other)
	_, err = other.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{kvScope}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AADSTS700213")
}

func TestVMManagedIdentityCredential(t *testing.T) {
	f := newFixture(t)
	mi, ok := f.emu.Principal(miClient)
	require.True(t, ok)
	for name, id := range map[string]string{"only identity": "", "client ID": miClient, "resource ID": mi.ResourceID} {
		t.Run(name, func(t *testing.T) {
			cred, _, err := f.creds.Credential(Request{Mode: VMManagedIdentity, ManagedIdentityID: id})
			require.NoError(t, err)
			assert.Equal(t, miClient, claims(t, cred)["appid"])
		})
	}
}

func TestCredentialRequestErrorsNameTheField(t *testing.T) {
	creds := NewCredentials(Options{})
	for _, tc := range []struct {
		name  string
		req   Request
		field string
	}{
		{"sp without tenant", Request{Mode: ServicePrincipal, ClientID: "c", ClientSecret: "s"}, "tenantId"},
		{"sp without client id", Request{Mode: ServicePrincipal, TenantID: tenant, ClientSecret: "s"}, "clientid"},
		{"sp without secret", Request{Mode: ServicePrincipal, TenantID: tenant, ClientID: "c"}, "clientsecret"},
		{"wi without client id", Request{Mode: WorkloadIdentity, TenantID: tenant, ServiceAccountToken: "t", Namespace: "n", ServiceAccount: "s"}, "clientID"},
		{"wi without tenant", Request{Mode: WorkloadIdentity, ClientID: "c", ServiceAccountToken: "t", Namespace: "n", ServiceAccount: "s"}, "tenantId"},
		{"wi without token", Request{Mode: WorkloadIdentity, TenantID: tenant, ClientID: "c", Namespace: "n", ServiceAccount: "s"}, "csi.storage.k8s.io/serviceAccount.tokens"},
		{"wi without service account", Request{Mode: WorkloadIdentity, TenantID: tenant, ClientID: "c", ServiceAccountToken: "t"}, "csi.storage.k8s.io/serviceAccount.name"},
		{"unknown mode", Request{Mode: "Kerberos"}, "mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := creds.Credential(tc.req)
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tc.field, fe.Field)
		})
	}
	_, _, err := creds.Credential(Request{Mode: PodIdentity, Namespace: "apps"})
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "csi.storage.k8s.io/pod.name", fe.Field)
}

func TestCredentialsAreBounded(t *testing.T) {
	creds := NewCredentials(Options{MaxEntries: 2})
	for _, c := range []string{"a", "b", "c"} {
		_, _, err := creds.Credential(Request{Mode: ServicePrincipal, TenantID: tenant, ClientID: c, ClientSecret: "s"})
		require.NoError(t, err)
	}
	creds.mu.Lock()
	defer creds.mu.Unlock()
	assert.Len(t, creds.entries, 2)
}
