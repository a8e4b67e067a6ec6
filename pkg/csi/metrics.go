package csi

import (
	"runtime"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// Metrics are the node service's Prometheus metrics, named and labelled as
// the upstream secrets-store CSI driver exports them (os_type, provider,
// error_type), so existing dashboards and alerts keep working, plus
// kvnode's own under kvnode_.
type Metrics struct {
	publish, publishError         *prometheus.CounterVec
	unpublish, unpublishError     *prometheus.CounterVec
	syncSecret                    *prometheus.CounterVec
	syncSecretDuration            *prometheus.HistogramVec
	toleratedMistakes, syncFailed *prometheus.CounterVec
	rotation, rotationError       *prometheus.CounterVec
	rotationDuration              *prometheus.HistogramVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		reg.MustRegister(c)
		return c
	}
	m := &Metrics{
		publish:        counter("node_publish_total", "Total number of node publish calls", "os_type", "provider"),
		publishError:   counter("node_publish_error_total", "Total number of node publish calls with error", "os_type", "provider", "error_type"),
		unpublish:      counter("node_unpublish_total", "Total number of node unpublish calls", "os_type"),
		unpublishError: counter("node_unpublish_error_total", "Total number of node unpublish calls with error", "os_type", "error_type"),
		syncSecret:     counter("sync_k8s_secret_total", "Total number of k8s secrets synced", "os_type", "provider"),
		syncSecretDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sync_k8s_secret_duration_sec", Help: "Distribution of how long it took to sync k8s secret",
			Buckets: prometheus.ExponentialBucketsRange(0.1, 2, 11),
		}, []string{"os_type"}),
		toleratedMistakes: counter("kvnode_parameter_warnings_total",
			"Volumes whose SecretProviderClass holds mistakes the upstream provider tolerates, once per volume and class version (each also a Warning event on the pod)", "provider"),
		syncFailed: counter("kvnode_sync_k8s_secret_error_total", "Secrets of secretObjects that could not be synced", "os_type", "provider"),
		rotation:   counter("rotation_reconcile_total", "Total number of rotation reconciles", "os_type", "provider", "rotated"),
		rotationError: counter("rotation_reconcile_error_total", "Total number of rotation reconciles with error",
			"os_type", "provider", "rotated", "error_type"),
		rotationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rotation_reconcile_duration_sec", Help: "Distribution of how long it took to rotate secrets-store content for pods",
			Buckets: prometheus.ExponentialBucketsRange(0.01, 10, 11),
		}, []string{"os_type"}),
	}
	reg.MustRegister(m.syncSecretDuration, m.rotationDuration)
	return m
}

func (m *Metrics) published(provider string, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.publishError.WithLabelValues(runtime.GOOS, provider, errorType(err)).Inc()
		return
	}
	m.publish.WithLabelValues(runtime.GOOS, provider).Inc()
}

func (m *Metrics) unpublished(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.unpublishError.WithLabelValues(runtime.GOOS, errorType(err)).Inc()
		return
	}
	m.unpublish.WithLabelValues(runtime.GOOS).Inc()
}

func (m *Metrics) synced(provider string, secrets, failed int, seconds float64) {
	if m == nil {
		return
	}
	m.syncSecret.WithLabelValues(runtime.GOOS, provider).Add(float64(secrets))
	m.syncFailed.WithLabelValues(runtime.GOOS, provider).Add(float64(failed))
	m.syncSecretDuration.WithLabelValues(runtime.GOOS).Observe(seconds)
}

// rotated counts a republish that fetched a written volume's objects
// again; rotated says whether its files changed.
func (m *Metrics) rotated(provider string, rotated bool, err error, seconds float64) {
	if m == nil {
		return
	}
	r := strconv.FormatBool(rotated)
	if err != nil {
		m.rotationError.WithLabelValues(runtime.GOOS, provider, r, errorType(err)).Inc()
		return
	}
	m.rotation.WithLabelValues(runtime.GOOS, provider, r).Inc()
	m.rotationDuration.WithLabelValues(runtime.GOOS).Observe(seconds)
}

func (m *Metrics) tolerated(provider string) {
	if m != nil {
		m.toleratedMistakes.WithLabelValues(provider).Inc()
	}
}

// errorType is the gRPC code a failed call answers with (upstream's
// error_type values are its own error names; kvnode's are the codes).
func errorType(err error) string { return status.Code(err).String() }
