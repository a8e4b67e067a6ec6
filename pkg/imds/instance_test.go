package imds

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kvnode/kvnode/pkg/podauth"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIsInstancePath(t *testing.T) {
	for p, want := range map[string]bool{
		"/metadata/instance":                          true,
		"/metadata/instance/compute":                  true,
		"/metadata/instance/compute/vmId":             true,
		"/metadata/instance/":                         false,
		"/metadata/instance//compute":                 false,
		"/metadata/instance/../identity/oauth2/token": false,
		"/metadata/instance/compute%2FvmId":           false,
		"/metadata/instance/compute/vm-id":            false,
		"/metadata/instancex":                         false,
		"/metadata/instance\\compute":                 false,
		"/Metadata/instance":                          false,
		"/metadata/identity/oauth2/token":             false,
	} {
		assert.Equal(t, want, isInstancePath(p), p)
	}
}

// With Config.Instance set, instance metadata is forwarded to the node's
// IMDS after the same checks IMDS makes; without it, it is refused as any
// unknown path (the default, fail closed).
func TestInstanceMetadataProxy(t *testing.T) {
	var upstreamCalls atomic.Int32
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamCalls.Add(1)
		assert.Equal(t, "true", r.Header.Get("Metadata"))
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if r.URL.Query().Get("format") == "text" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.WriteString(w, "vm-0")
			return
		}
		_, _ = io.WriteString(w, `{"path":"`+r.URL.Path+`","api":"`+r.URL.Query().Get("api-version")+`"}`)
	}))
	t.Cleanup(upstream.Close)

	newServer := func(instance *InstanceProxy) http.Handler {
		pods := newFakePods()
		pods.add(podIP, podauth.Pod{Namespace: "default", Name: "app", ServiceAccount: "app"})
		srv, err := New(Config{Pods: pods, Bindings: fakeBindings{}, Tokens: &countingTokens{}, Registry: prometheus.NewRegistry(), Instance: instance})
		require.NoError(t, err)
		return srv.Restrict(TokenPath, InstancePath)
	}
	do := func(h http.Handler, method, target string, headers map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, nil)
		req.RequestURI = target
		req.RemoteAddr = podIP + ":40000"
		for k, v := range headers {
			req.Header[k] = []string{v}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	md := map[string]string{"Metadata": "true"}

	off := newServer(nil)
	rec := do(off, http.MethodGet, "/metadata/instance?api-version=2021-02-01", md)
	assert.Equal(t, http.StatusNotFound, rec.Code)
	assert.Zero(t, upstreamCalls.Load())

	on := newServer(&InstanceProxy{BaseURL: upstream.URL, Client: upstream.Client()})
	rec = do(on, http.MethodGet, "/metadata/instance/compute?api-version=2021-02-01", md)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	assert.JSONEq(t, `{"path":"/metadata/instance/compute","api":"2021-02-01"}`, rec.Body.String())
	rec = do(on, http.MethodGet, "/metadata/instance/compute/name?api-version=2021-02-01&format=text", md)
	assert.Equal(t, "vm-0", rec.Body.String())
	assert.Equal(t, "text/plain; charset=utf-8", rec.Header().Get("Content-Type"))
	calls := upstreamCalls.Load()

	for _, tc := range []struct {
		name, method, target string
		headers              map[string]string
		status               int
		body                 string
	}{
		{"no Metadata header", http.MethodGet, "/metadata/instance?api-version=2021-02-01", nil, 400, "Required metadata header not specified"},
		{"forwarded", http.MethodGet, "/metadata/instance?api-version=2021-02-01", map[string]string{"Metadata": "true", "X-Forwarded-For": "1.2.3.4"}, 400, ""},
		{"POST", http.MethodPost, "/metadata/instance?api-version=2021-02-01", md, 405, ""},
		{"no api-version", http.MethodGet, "/metadata/instance", md, 400, "api-version"},
		{"duplicate parameter", http.MethodGet, "/metadata/instance?api-version=1&api-version=2", md, 400, "Duplicate query parameter"},
		{"dot segment", http.MethodGet, "/metadata/instance/../identity/oauth2/token?api-version=2021-02-01", md, 404, ""},
		{"escaped slash", http.MethodGet, "/metadata/instance%2Fcompute?api-version=2021-02-01", md, 404, ""},
		{"trailing slash", http.MethodGet, "/metadata/instance/?api-version=2021-02-01", md, 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(on, tc.method, tc.target, tc.headers)
			assert.Equal(t, tc.status, rec.Code, rec.Body.String())
			assert.True(t, strings.HasPrefix(rec.Body.String(), `{"error":`), rec.Body.String())
			assert.Contains(t, rec.Body.String(), tc.body)
		})
	}
	assert.Equal(t, calls, upstreamCalls.Load(), "refused requests never reach the node's IMDS")
}
