package imds

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
)

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
