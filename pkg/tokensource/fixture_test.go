package tokensource

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

// TestMain runs the emulator tests in a network namespace of their own.
func TestMain(m *testing.M) { testenv.Main(m) }

const (
	tenant   = "3d6a1c2b-8e4f-4a7b-9c0d-1e2f3a4b5c6d"
	wiClient = "bbbbbbbb-1111-4222-8333-444444444444"
)

// fixture is an emulator whose Entra ID trusts a cluster issuer, with an
// application federated to apps/web.
type fixture struct {
	emu    *emulator.Emulator
	issuer *emulator.Issuer
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.RequireNetns(t)
	emu := emulator.StartT(t)
	iss, err := emulator.NewIssuer("https://oidc.kvnode.test/cluster-1")
	require.NoError(t, err)
	require.NoError(t, emu.TrustIssuer(iss.URL, iss.JWKS()))
	_, err = emu.AddApplication(emulator.Principal{TenantID: tenant, ClientID: wiClient, Federated: []emulator.FederatedCredential{
		{Issuer: iss.URL, Subject: "system:serviceaccount:apps:web"},
	}})
	require.NoError(t, err)
	return &fixture{emu: emu, issuer: iss}
}

// saToken signs a service-account token the way kube-apiserver would.
func (f *fixture) saToken(t *testing.T, ns, sa string) string {
	t.Helper()
	s, err := f.issuer.ServiceAccountToken(ns, sa, identity.WorkloadAudience)
	require.NoError(t, err)
	return s
}

func (f *fixture) tokenRequests(clientID string) int {
	return f.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: http.MethodPost, Identity: clientID})
}
