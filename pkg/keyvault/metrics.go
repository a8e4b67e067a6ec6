package keyvault

import (
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are a Fetcher's Prometheus metrics: the upstream Azure
// provider's keyvault_request histogram, with its name and labels, so that
// its dashboards keep working, and kvnode's own under kvnode_keyvault_:
// every HTTP request sent to Key Vault by vault, operation and status, the
// requests a throttled vault was spared, and the object cache's hits,
// misses and size in entries and bytes.
type Metrics struct {
	object     *prometheus.HistogramVec
	requests   *prometheus.CounterVec
	throttled  *prometheus.CounterVec
	cacheHits  prometheus.Counter
	cacheMiss  prometheus.Counter
	cacheFetch prometheus.Counter
	cacheSize  prometheus.Gauge
	cacheBytes prometheus.Gauge
	clientSets prometheus.Gauge
}

// NewMetrics registers a Fetcher's metrics with reg; pass the result in
// Options.Metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvnode", Subsystem: "keyvault", Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvnode", Subsystem: "keyvault", Name: name, Help: help})
		reg.MustRegister(g)
		return g
	}
	m := &Metrics{
		object: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyvault_request", Help: "Distribution of how long it took to get from keyvault",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"os_type", "provider", "object_name", "object_type", "error"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kvnode", Subsystem: "keyvault", Name: "http_requests_total",
			Help: "HTTP requests sent to Key Vault, retries and 401 challenges included, by vault, operation and status code (\"error\": no response)",
		}, []string{"vault", "operation", "code"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kvnode", Subsystem: "keyvault", Name: "throttled_requests_total",
			Help: "Requests answered ResourceExhausted without being sent, because their vault answered 429 and its pause has not ended",
		}, []string{"vault"}),
		cacheHits:  counter("object_cache_hits_total", "Object reads served from the object cache"),
		cacheMiss:  counter("object_cache_misses_total", "Object reads the object cache could not serve (each fetched, or waited for a fetch already running)"),
		cacheFetch: counter("object_cache_fetches_total", "Fetches the object cache ran for its misses; misses minus fetches waited for a fetch already running"),
		cacheSize:  gauge("object_cache_entries", "Objects held by the object cache, expired ones not yet dropped included"),
		cacheBytes: gauge("object_cache_bytes", "Bytes held by the object cache as it counts them against --object-cache-max-bytes: content, names and a fixed estimate per entry"),
		clientSets: gauge("client_sets", "SDK client sets kept, one per (vault, identity)"),
	}
	reg.MustRegister(m.object, m.requests, m.throttled)
	return m
}

// objectFetched observes one object GET or versions listing (upstream's
// keyvault_request; error is the failure's Kind, empty on success).
func (m *Metrics) objectFetched(obj *Object, err error, d time.Duration) {
	if m == nil {
		return
	}
	kind := ""
	if err != nil {
		kind = Classify(err).String()
	}
	m.object.WithLabelValues(runtime.GOOS, "azure", obj.Name, string(obj.Type), kind).Observe(d.Seconds())
}

func (m *Metrics) throttledRequest(vault string) {
	if m != nil {
		m.throttled.WithLabelValues(vault).Inc()
	}
}

func (m *Metrics) cacheRead(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.cacheHits.Inc()
	} else {
		m.cacheMiss.Inc()
	}
}

func (m *Metrics) cacheFetched() {
	if m != nil {
		m.cacheFetch.Inc()
	}
}

func (m *Metrics) cacheHeld(entries int, bytes int64) {
	if m != nil {
		m.cacheSize.Set(float64(entries))
		m.cacheBytes.Set(float64(bytes))
	}
}

func (m *Metrics) clients(n int) {
	if m != nil {
		m.clientSets.Set(float64(n))
	}
}

// requestCounter is the per-try policy that counts what is sent: it sits
// after the vault gate, so a request the gate answers is not counted here
// (throttled_requests_total counts those).
type requestCounter struct{ m *Metrics }

func (c requestCounter) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	u := req.Raw().URL
	c.m.requests.WithLabelValues(strings.ToLower(u.Hostname()), operation(req.Raw().Method, u.Path), code).Inc()
	return resp, err
}

// operation names a Key Vault data-plane call from its method and path
// (/secrets/{name}[/{version}], /keys/{name}/versions, ...) without the
// object's name: get_secret, list_key_versions. A path kvnode never sends
// is "other", so a stray request cannot grow the label set.
func operation(method, path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	var kind string
	switch parts[0] {
	case "secrets":
		kind = "secret"
	case "keys":
		kind = "key"
	case "certificates":
		kind = "certificate"
	default:
		return "other"
	}
	switch {
	case method != http.MethodGet:
		return "other"
	case len(parts) == 3 && parts[2] == "versions":
		return "list_" + kind + "_versions"
	case len(parts) == 2 || len(parts) == 3:
		return "get_" + kind
	}
	return "other"
}
