package tokensource

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/pkg/tokencache"
)

// TestWorkloadTokensPerServiceAccount: workload-identity tokens are cached
// per service account. Two pods of one account share a token; a pod of
// another account naming the same client ID gets its own exchange.
func TestWorkloadTokensPerServiceAccount(t *testing.T) {
	var (
		mu   sync.Mutex
		keys []tokencache.Key
	)
	cache := tokencache.New(tokencache.SourceFunc(func(_ context.Context, k tokencache.Key) (tokencache.Token, error) {
		mu.Lock()
		keys = append(keys, k)
		mu.Unlock()
		return tokencache.Token{AccessToken: "tok-" + k.ServiceAccount.Name, ExpiresOn: time.Now().Add(time.Hour)}, nil
	}), tokencache.Options{})
	tokens := Cached{WorkloadIdentity: cache}
	wi := podauth.Identity{ClientID: wiClient, TenantID: "t1", Source: podauth.SourceWorkloadIdentity}
	ctx := context.Background()
	const vault = "https://vault.azure.net"

	web1 := podauth.Pod{Namespace: "apps", Name: "web-1", ServiceAccount: "web"}
	web2 := podauth.Pod{Namespace: "apps", Name: "web-2", ServiceAccount: "web"}
	batch := podauth.Pod{Namespace: "apps", Name: "batch-1", ServiceAccount: "batch"}
	for _, tc := range []struct {
		pod  podauth.Pod
		want string
	}{{web1, "tok-web"}, {web2, "tok-web"}, {batch, "tok-batch"}} {
		tok, err := tokens.Token(ctx, tc.pod, wi, vault)
		require.NoError(t, err)
		assert.Equal(t, tc.want, tok.AccessToken, tc.pod.Name)
	}
	assert.Equal(t, []tokencache.Key{
		{Identity: wiClient, Tenant: "t1", Resource: vault, ServiceAccount: types.NamespacedName{Namespace: "apps", Name: "web"}},
		{Identity: wiClient, Tenant: "t1", Resource: vault, ServiceAccount: types.NamespacedName{Namespace: "apps", Name: "batch"}},
	}, keys)

	_, err := Cached{}.Token(ctx, web1, wi, vault)
	assert.ErrorIs(t, err, ErrNoSource)
}
