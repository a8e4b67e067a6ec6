package imds

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/tokencache"
)

// TestWorkloadTokensPerServiceAccount: workload-identity tokens are cached
// per service account. Two pods of one account share a token; a pod of
// another account naming the same client ID gets its own exchange.
func TestWorkloadTokensPerServiceAccount(t *testing.T) {
	var (
		mu   sync.Mutex
		keys []identity.WorkloadKey
	)
	cache := tokencache.New(tokencache.SourceFunc(func(_ context.Context, k tokencache.Key) (tokencache.Token, error) {
		wk, err := identity.ParseWorkloadKey(k)
		if err != nil {
			return tokencache.Token{}, err
		}
		mu.Lock()
		keys = append(keys, wk)
		mu.Unlock()
		return tokencache.Token{AccessToken: "tok-" + wk.ServiceAccount, ExpiresOn: time.Now().Add(time.Hour)}, nil
	}), tokencache.Options{})
	tokens := CacheTokens{WorkloadIdentity: cache}
	wi := Identity{ClientID: idA.ClientID, TenantID: "t1", Source: SourceWorkloadIdentity}
	ctx := context.Background()
	const vault = "https://vault.azure.net"

	web1 := Pod{Namespace: "apps", Name: "web-1", ServiceAccount: "web"}
	web2 := Pod{Namespace: "apps", Name: "web-2", ServiceAccount: "web"}
	batch := Pod{Namespace: "apps", Name: "batch-1", ServiceAccount: "batch"}
	for _, tc := range []struct {
		pod  Pod
		want string
	}{{web1, "tok-web"}, {web2, "tok-web"}, {batch, "tok-batch"}} {
		tok, err := tokens.Token(ctx, tc.pod, wi, vault)
		require.NoError(t, err)
		assert.Equal(t, tc.want, tok.AccessToken, tc.pod.Name)
	}
	assert.Equal(t, []identity.WorkloadKey{
		{Namespace: "apps", ServiceAccount: "web", ClientID: idA.ClientID, TenantID: "t1", Resource: vault},
		{Namespace: "apps", ServiceAccount: "batch", ClientID: idA.ClientID, TenantID: "t1", Resource: vault},
	}, keys)

	_, err := CacheTokens{}.Token(ctx, web1, wi, vault)
	assert.ErrorIs(t, err, ErrNoSource)
}

// TestRestrict: a restricted handler serves its routes and answers the
// others exactly as an unknown path.
func TestRestrict(t *testing.T) {
	w := newTestWorld(t, nil)
	pods := w.srv.Restrict(TokenPath)
	node := w.srv.Restrict(HostTokenPath, HealthzPath, ReadyzPath, MetricsPath)
	serve := func(h http.Handler, target string) (int, string) {
		r := httptest.NewRequest(http.MethodGet, target, nil)
		r.RequestURI = target
		r.RemoteAddr = podIP + ":40000"
		r.Header.Set("Metadata", "true")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec.Code, rec.Body.String()
	}
	_, unknown := serve(w.srv, "/nope")
	for _, tc := range []struct {
		name   string
		h      http.Handler
		target string
		status int
	}{
		{"pods: token", pods, TokenPath + "?" + goodQuery, http.StatusOK},
		{"pods: host token", pods, HostTokenPath + "?" + goodQuery, http.StatusNotFound},
		{"pods: metrics", pods, MetricsPath, http.StatusNotFound},
		{"pods: healthz", pods, HealthzPath, http.StatusNotFound},
		{"node: healthz", node, HealthzPath, http.StatusOK},
		{"node: metrics", node, MetricsPath, http.StatusOK},
		{"node: token", node, TokenPath + "?" + goodQuery, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := serve(tc.h, tc.target)
			assert.Equal(t, tc.status, status, body)
			if status == http.StatusNotFound {
				assert.Equal(t, unknown, body)
			}
		})
	}
}
