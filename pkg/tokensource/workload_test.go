package tokensource

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/test/emulator"
)

// tokenRequests records the TokenRequests a fake clientset answered.
type tokenRequests struct {
	mu   sync.Mutex
	reqs []tokenRequestCall
}

type tokenRequestCall struct {
	namespace, name string
	spec            authenticationv1.TokenRequestSpec
}

// fakeTokenAPI returns a clientset whose TokenRequest API signs tokens with
// f's issuer key, as kube-apiserver would, and records each request.
func (f *fixture) fakeTokenAPI(t *testing.T) (*fake.Clientset, *tokenRequests) {
	t.Helper()
	rec := &tokenRequests{}
	client := fake.NewClientset()
	client.PrependReactor("create", "serviceaccounts", func(action k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := action.(k8stesting.CreateActionImpl)
		if !ok || ca.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, tokenRequestCall{namespace: ca.GetNamespace(), name: ca.Name, spec: tr.Spec})
		rec.mu.Unlock()
		tr.Status.Token = f.saToken(t, ca.GetNamespace(), ca.Name)
		return true, tr, nil
	})
	return client, rec
}

func TestWorkloadTokensExchange(t *testing.T) {
	f := newFixture(t)
	client, rec := f.fakeTokenAPI(t)
	src := NewWorkloadTokens(clientsetTokens{client}, WorkloadTokenOptions{ClientOptions: azcore.ClientOptions{Transport: f.emu.HTTPClient()}})
	cache := tokencache.New(src, tokencache.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	web := tokencache.Key{Identity: wiClient, Tenant: tenant, Resource: "https://vault.azure.net", ServiceAccount: types.NamespacedName{Namespace: "apps", Name: "web"}}

	tok, err := cache.Get(ctx, web)
	require.NoError(t, err)
	c := jwt.MapClaims{}
	_, _, err = jwt.NewParser().ParseUnverified(tok.AccessToken, c)
	require.NoError(t, err)
	assert.Equal(t, wiClient, c["appid"])
	assert.Equal(t, tenant, c["tid"])
	assert.WithinDuration(t, time.Now().Add(time.Hour), tok.ExpiresOn, 5*time.Minute)
	// Two round trips to Entra ID per exchange: the tenant's OpenID
	// configuration and the token; no instance discovery for the public
	// cloud's authority.
	var entra []string
	for _, r := range f.emu.Requests(emulator.RequestFilter{Service: emulator.ServiceEntra}) {
		entra = append(entra, r.Method+" "+r.Path)
	}
	assert.Equal(t, []string{"GET /" + tenant + "/v2.0/.well-known/openid-configuration", "POST /" + tenant + "/oauth2/v2.0/token"}, entra)

	// The service-account token asked for: the right account, Entra ID's
	// audience, ten minutes.
	rec.mu.Lock()
	require.Len(t, rec.reqs, 1)
	call := rec.reqs[0]
	rec.mu.Unlock()
	assert.Equal(t, "apps", call.namespace)
	assert.Equal(t, "web", call.name)
	assert.Equal(t, []string{identity.WorkloadAudience}, call.spec.Audiences)
	require.NotNil(t, call.spec.ExpirationSeconds)
	assert.EqualValues(t, 600, *call.spec.ExpirationSeconds)

	// A second request is a cache hit: no exchange.
	again, err := cache.Get(ctx, web)
	require.NoError(t, err)
	assert.Equal(t, tok.AccessToken, again.AccessToken)
	assert.Equal(t, 1, f.tokenRequests(wiClient))

	// Another service account naming the same application does not get the
	// cached token: it makes its own exchange, which Entra ID refuses
	// because no federated credential trusts that account.
	other := web
	other.ServiceAccount.Name = "batch"
	_, err = cache.Get(ctx, other)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "apps/batch")
	assert.NotContains(t, err.Error(), tok.AccessToken)
}

func TestWorkloadTokensNeedATenant(t *testing.T) {
	src := NewWorkloadTokens(clientsetTokens{fake.NewClientset()}, WorkloadTokenOptions{})
	_, err := src.Token(context.Background(), tokencache.Key{Identity: wiClient, Resource: "r", ServiceAccount: types.NamespacedName{Namespace: "apps", Name: "web"}})
	assert.ErrorIs(t, err, errNoTenant)
}

func TestScopeFor(t *testing.T) {
	assert.Equal(t, "https://vault.azure.net/.default", ScopeFor("https://vault.azure.net"))
	assert.Equal(t, "https://management.azure.com//.default", ScopeFor("https://management.azure.com/"))
	assert.Equal(t, "api://x/.default", ScopeFor("api://x/.default"))
}
