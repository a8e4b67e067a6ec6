package imds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/pkg/tokensource"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

const vault = "https://vault.azure.net"

// startEmulator starts the Azure emulator with one managed identity assigned
// to the node and returns it with a node-IMDS token source that reaches its
// IMDS through the emulator's forward proxy (the way nmi reaches the real
// one, at http://169.254.169.254, minus the proxy).
func startEmulator(t *testing.T) (*emulator.Emulator, emulator.Principal, *tokensource.NodeIMDS) {
	t.Helper()
	testenv.RequireNetns(t)
	e := emulator.StartT(t)
	p, err := e.AddManagedIdentity(emulator.Principal{TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47"})
	require.NoError(t, err)
	return e, p, tokensource.NewNodeIMDS("http://"+emulator.IMDSHost, e.HTTPClient())
}

func TestConcurrentColdRequestsOneUpstreamCall(t *testing.T) {
	e, p, up := startEmulator(t)
	cache := tokencache.New(up, tokencache.Options{})
	tokens := tokensource.Cached{IMDS: cache}
	pods := newFakePods()
	pods.add(podIP, podauth.Pod{Namespace: "default", Name: "app", ServiceAccount: "app"})
	srv, err := New(Config{
		Pods:       pods,
		Bindings:   fakeBindings{"default/app": {{ClientID: p.ClientID, ResourceID: p.ResourceID, Source: podauth.SourceIMDS}}},
		Tokens:     tokens,
		CacheStats: tokens.Stats,
	})
	require.NoError(t, err)
	w := &testWorld{srv: srv}
	addr := w.serve(t, podIP)[podIP]

	const n = 1000
	client := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: n}, Timeout: 60 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	var (
		start   = make(chan struct{})
		wg      sync.WaitGroup
		mu      sync.Mutex
		results = map[string]int{}
		fails   []string
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+TokenPath+"?"+goodQuery+"&client_id="+p.ClientID, nil)
			req.Header.Set("Metadata", "true")
			<-start
			resp, err := client.Do(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails = append(fails, err.Error())
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var m map[string]string
			if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &m) != nil {
				fails = append(fails, resp.Status+" "+string(body))
				return
			}
			results[m["access_token"]]++
		}()
	}
	close(start)
	wg.Wait()
	require.Empty(t, fails)
	require.Len(t, results, 1, "every caller gets the same token")
	for _, count := range results {
		assert.Equal(t, n, count)
	}
	assert.Equal(t, 1, e.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS}), "exactly one upstream call")
	st := cache.Stats()
	assert.Equal(t, uint64(1), st.UpstreamCalls)
	assert.Equal(t, uint64(n), st.Hits+st.Misses)
}

// TestEmulatorErrorsThroughServer: IMDS's refusal of an identity the node
// lacks reaches the pod as IMDS's own 400, and a failing IMDS as a 502.
func TestEmulatorErrorsThroughServer(t *testing.T) {
	e, p, up := startEmulator(t)
	tokens := tokensource.Cached{IMDS: tokencache.New(up, tokencache.Options{})}
	pods := newFakePods()
	pods.add(podIP, podauth.Pod{Namespace: "default", Name: "app"})
	ghost := podauth.Identity{ClientID: "00000000-0000-0000-0000-00000000dead"}
	srv, err := New(Config{Pods: pods, Tokens: tokens,
		Bindings: fakeBindings{"default/app": {{ClientID: p.ClientID, Source: podauth.SourceIMDS}, ghost}}})
	require.NoError(t, err)
	addr := (&testWorld{srv: srv}).serve(t, podIP)[podIP]

	status, _, body := rawRequest(t, addr, get(TokenPath+"?"+goodQuery+"&client_id="+ghost.ClientID, md))
	assert.Equal(t, http.StatusBadRequest, status)
	assert.Equal(t, `{"error":"invalid_request","error_description":"Identity not found"}`, body)

	require.NoError(t, e.InjectIMDSFault(emulator.Fault{Status: http.StatusInternalServerError, Count: 1}))
	status, _, body = rawRequest(t, addr, get(TokenPath+"?"+goodQuery+"&client_id="+p.ClientID, md))
	assert.Equal(t, http.StatusBadGateway, status)
	assert.Equal(t, `{"error":"unknown_error","error_description":"The node's identity endpoint answered 500"}`, body)

	status, _, body = rawRequest(t, addr, get(TokenPath+"?"+goodQuery+"&client_id="+p.ClientID, md))
	assert.Equal(t, http.StatusOK, status, body)
}

// Entra ID refusing a workload-identity exchange reaches the pod as 403
// with Entra's error code, not as a 502 that says nothing.
func TestEntraRefusalIsForbidden(t *testing.T) {
	testenv.RequireNetns(t)
	e := emulator.StartT(t)
	const tenant = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	app, err := e.AddApplication(emulator.Principal{TenantID: tenant, ClientID: "f0e1d2c3-b4a5-4968-8776-a5b4c3d2e1f0"})
	require.NoError(t, err)
	cred, err := azidentity.NewClientAssertionCredential(tenant, app.ClientID,
		func(context.Context) (string, error) { return "not-a-service-account-token", nil },
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: azcore.ClientOptions{Transport: e.HTTPClient()}})
	require.NoError(t, err)
	_, err = cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{vault + "/.default"}})
	require.Error(t, err)

	re := upstreamFailure(fmt.Errorf("workload identity %s for apps/web: %w", app.ClientID, err))
	assert.Equal(t, http.StatusForbidden, re.status)
	assert.Equal(t, "invalid_request", re.code)
	assert.Regexp(t, `^Entra ID refused the token exchange for this pod's service account \(AADSTS\d+\)$`, re.desc)

	assert.Equal(t, "AADSTS700213", aadstsCode("x: AADSTS700213: No matching"))
	assert.Empty(t, aadstsCode("AADSTS: nothing"))
}
