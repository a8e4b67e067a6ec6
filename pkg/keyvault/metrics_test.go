package keyvault

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
)

func TestOperation(t *testing.T) {
	tests := []struct{ method, path, want string }{
		{"GET", "/secrets/db", "get_secret"},
		{"GET", "/secrets/db/0123abcd", "get_secret"},
		{"GET", "/secrets/db/versions", "list_secret_versions"},
		{"GET", "/keys/k1/", "get_key"},
		{"GET", "/keys/k1/versions", "list_key_versions"},
		{"GET", "/certificates/web/abc", "get_certificate"},
		{"GET", "/certificates/web/versions", "list_certificate_versions"},
		{"PUT", "/secrets/db", "other"},
		{"GET", "/secrets", "other"},
		{"GET", "/secrets/db/v/extra", "other"},
		{"GET", "/deletedsecrets/db", "other"},
		{"GET", "/", "other"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, operation(tt.method, tt.path), "%s %s", tt.method, tt.path)
	}
}

// The request counter agrees with what the vault saw, request for request
// and status for status (401 challenges included); the cache counters say
// how many reads the cache answered, and how few GETs it sent.
func TestFetchMetricsMatchWhatTheVaultSaw(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	objs := fiveObjects(t, env)
	objs = append(objs, Object{Name: "s1", Type: TypeSecret, Alias: "s1-previous", Version: "", VersionHistory: 2})
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	f := env.fetcher(Options{CacheTTL: time.Minute, Metrics: m})
	env.e.ResetRequests()

	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.Fetch(ctx, env.request(t, objs...))
			assert.NoError(t, err)
		}()
	}
	wg.Wait()

	seen := map[string]int{}
	for _, r := range env.e.Requests(emulator.RequestFilter{Service: emulator.ServiceKeyVault}) {
		seen[strconv.Itoa(r.Status)]++
	}
	counted := map[string]int{}
	ops := map[string]int{}
	for _, s := range collect(t, reg, "kvnode_keyvault_http_requests_total") {
		l := labels(s)
		assert.Equal(t, strings.ToLower(testVault)+".vault.azure.net", l["vault"])
		counted[l["code"]] += int(s.GetCounter().GetValue())
		ops[l["operation"]] += int(s.GetCounter().GetValue())
	}
	t.Logf("sent: %v by operation: %v", counted, ops)
	assert.Equal(t, seen, counted, "requests by status: the vault's log against the counter")
	assert.NotZero(t, counted["401"], "the challenge round trips are counted")
	assert.Equal(t, 1, ops["list_secret_versions"]-countStatus(t, reg, "list_secret_versions", "401"), "one versions listing for ten mounts")

	// Ten mounts of six objects: sixty reads, one fetch per distinct GET.
	hits := testutil.ToFloat64(m.cacheHits)
	misses := testutil.ToFloat64(m.cacheMiss)
	fetches := testutil.ToFloat64(m.cacheFetch)
	sent200 := float64(env.kvCount(http.StatusOK))
	assert.Equal(t, sent200, fetches, "each cache fetch is one successful GET")
	assert.GreaterOrEqual(t, misses, fetches)
	assert.Positive(t, hits+misses-fetches, "the other mounts shared the fetches")
	assert.Equal(t, fetches, testutil.ToFloat64(m.cacheSize))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.clientSets), "one (vault, identity) client set")

	// Upstream's keyvault_request: one observation per object GET, named
	// by object, no error.
	var observed uint64
	for _, s := range collect(t, reg, "keyvault_request") {
		l := labels(s)
		assert.Equal(t, "azure", l["provider"])
		assert.Empty(t, l["error"])
		observed += s.GetHistogram().GetSampleCount()
	}
	listed := countStatus(t, reg, "list_secret_versions", "200")
	assert.Equal(t, 1, listed)
	assert.Equal(t, uint64(sent200)-uint64(listed), observed, "every object GET, the listing aside")

	// A failed object is observed with its error kind.
	_, err := f.Fetch(ctx, env.request(t, Object{Name: "absent", Type: TypeSecret}))
	require.Error(t, err)
	var failed bool
	for _, s := range collect(t, reg, "keyvault_request") {
		if l := labels(s); l["object_name"] == "absent" {
			failed = true
			assert.Equal(t, KindNotFound.String(), l["error"])
			assert.Equal(t, "secret", l["object_type"])
		}
	}
	assert.True(t, failed, "the failed GET is observed")
	assert.Equal(t, 1, countStatus(t, reg, "get_secret", "404"))

	// Nothing the metrics carry is a secret value.
	text, err := testutil.CollectAndFormat(m.object, expfmt.TypeTextPlain)
	require.NoError(t, err)
	assert.NotContains(t, string(text), "value-of-")
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// A vault that answered 429 is spared the requests its pause covers; the
// counter says how many.
func TestFetchMetricsCountThrottledRequests(t *testing.T) {
	env := newFetchEnv(t)
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	env.setSecret(t, "s1", "v1", emulator.SecretOptions{})
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	f := env.fetcher(Options{Metrics: m})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := env.request(t, Object{Name: "s1", Type: TypeSecret})
	_, err := f.Fetch(ctx, req)
	require.NoError(t, err)
	require.NoError(t, env.e.SetThrottle(testVault, 1, time.Minute))
	_, err = f.Fetch(ctx, req)
	require.NoError(t, err, "the one request the window allows")
	for range 3 {
		_, err := f.Fetch(ctx, req)
		require.Error(t, err)
		assert.Equal(t, KindThrottled, Classify(err))
	}
	assert.Equal(t, 1, countStatus(t, reg, "get_secret", "429"), "one 429 sent over the wire")
	assert.Equal(t, 2.0, testutil.ToFloat64(m.throttled.WithLabelValues(strings.ToLower(testVault)+".vault.azure.net")),
		"the later fetches were answered from the vault's pause")
}

func collect(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func countStatus(t *testing.T, reg *prometheus.Registry, op, code string) int {
	t.Helper()
	n := 0
	for _, s := range collect(t, reg, "kvnode_keyvault_http_requests_total") {
		if l := labels(s); l["operation"] == op && l["code"] == code {
			n += int(s.GetCounter().GetValue())
		}
	}
	return n
}
