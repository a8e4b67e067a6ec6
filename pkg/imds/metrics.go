package imds

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvnode/kvnode/pkg/tokencache"
)

// endpoint is a route of the server, a metrics label.
type endpoint uint8

const (
	epToken endpoint = iota
	epHostToken
	epHealthz
	epReadyz
	epMetrics
	epInstance
	epUnknown
	numEndpoints
)

func (e endpoint) String() string {
	switch e {
	case epToken:
		return "token"
	case epHostToken:
		return "host_token"
	case epHealthz:
		return "healthz"
	case epReadyz:
		return "readyz"
	case epMetrics:
		return "metrics"
	case epInstance:
		return "instance"
	}
	return "unknown"
}

// outcome is how a request ended, a metrics label.
type outcome uint8

const (
	outOK outcome = iota
	outBadRequest
	outNotFound
	outForbidden
	outMethodNotAllowed
	outThrottled
	outUpstreamError
	outUnavailable
	numOutcomes
)

func (o outcome) String() string {
	switch o {
	case outOK:
		return "ok"
	case outBadRequest:
		return "bad_request"
	case outNotFound:
		return "not_found"
	case outForbidden:
		return "forbidden"
	case outMethodNotAllowed:
		return "method_not_allowed"
	case outThrottled:
		return "throttled"
	case outUnavailable:
		return "unavailable"
	}
	return "upstream_error"
}

// outcomeFor maps an answer's status to its outcome.
func outcomeFor(status int) outcome {
	switch {
	case status < 300:
		return outOK
	case status == 404:
		return outNotFound
	case status == 403:
		return outForbidden
	case status == 405:
		return outMethodNotAllowed
	case status == 429:
		return outThrottled
	case status == 503:
		return outUnavailable
	case status < 500 && status != 410:
		return outBadRequest
	}
	return outUpstreamError
}

// metrics holds every labelled series resolved up front, so recording a
// request is two atomic adds and no map lookups.
type metrics struct {
	requests [numEndpoints][numOutcomes]prometheus.Counter
	latency  [numEndpoints]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer, stats func() tokencache.Stats) (*metrics, error) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kvnode", Subsystem: "nmi", Name: "requests_total",
		Help: "HTTP requests answered, by endpoint and outcome.",
	}, []string{"endpoint", "outcome"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "kvnode", Subsystem: "nmi", Name: "request_duration_seconds",
		Help:    "Time to answer an HTTP request, by endpoint.",
		Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5, 30},
	}, []string{"endpoint"})
	cs := []prometheus.Collector{requests, latency}
	if stats != nil {
		counter := func(name, help string, get func(tokencache.Stats) uint64) prometheus.Collector {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: "kvnode", Subsystem: "nmi", Name: name, Help: help,
			}, func() float64 { return float64(get(stats())) })
		}
		cs = append(cs,
			counter("token_cache_hits_total", "Token requests served from the cache.",
				func(s tokencache.Stats) uint64 { return s.Hits }),
			counter("token_cache_misses_total", "Token requests that had to wait for upstream.",
				func(s tokencache.Stats) uint64 { return s.Misses }),
			counter("upstream_requests_total", "Token requests sent upstream (IMDS, Entra ID).",
				func(s tokencache.Stats) uint64 { return s.UpstreamCalls }),
			counter("upstream_errors_total", "Upstream token requests that failed or were refused by the rate limits.",
				func(s tokencache.Stats) uint64 { return s.UpstreamErrors }),
		)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	m := &metrics{}
	for e := range numEndpoints {
		for o := range numOutcomes {
			m.requests[e][o] = requests.WithLabelValues(e.String(), o.String())
		}
		m.latency[e] = latency.WithLabelValues(e.String())
	}
	return m, nil
}

func (m *metrics) observe(e endpoint, status int, d time.Duration) {
	m.requests[e][outcomeFor(status)].Inc()
	m.latency[e].Observe(d.Seconds())
}
