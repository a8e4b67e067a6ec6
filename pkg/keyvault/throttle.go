package keyvault

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"golang.org/x/time/rate"
)

// Key Vault's service limit is 4,000 GETs per 10 s per vault, shared by
// every client of the vault; DefaultVaultBudget is the share one node
// takes at most, DefaultThrottleBackoff how long a vault that answered 429
// without a Retry-After is left alone (doubling, with jitter, while it
// keeps answering 429, up to MaxThrottleBackoff).
const (
	DefaultVaultBudget     = 1000 // requests per 10 s
	DefaultThrottleBackoff = 2 * time.Second
	MaxThrottleBackoff     = 2 * time.Minute
)

// vaultGates holds one gate per vault host: a request budget, and, after a
// 429, the time before which nothing more is sent to that vault. A storm
// on one vault thus costs the others nothing, and a throttled vault is
// answered at once, from memory, instead of with more requests that make
// its throttling last.
type vaultGates struct {
	budget  float64 // requests per second
	burst   int
	now     func() time.Time
	metrics *Metrics // counts the requests a paused vault is spared

	mu    sync.Mutex
	gates map[string]*vaultGate
}

type vaultGate struct {
	limiter *rate.Limiter
	until   time.Time     // nothing is sent before
	backoff time.Duration // the last pause without a Retry-After
}

func newVaultGates(per10s int) *vaultGates {
	if per10s <= 0 {
		per10s = DefaultVaultBudget
	}
	return &vaultGates{budget: float64(per10s) / 10, burst: per10s, now: time.Now, gates: map[string]*vaultGate{}}
}

func (v *vaultGates) gate(host string) *vaultGate {
	v.mu.Lock()
	defer v.mu.Unlock()
	g := v.gates[host]
	if g == nil {
		g = &vaultGate{limiter: rate.NewLimiter(rate.Limit(v.budget), v.burst)}
		v.gates[host] = g
	}
	return g
}

// ThrottledError is the answer for a vault that is being left alone after
// a 429: it names the vault and the wait. The SDK's retry policy does not
// retry it (it would only wait for the same pause).
type ThrottledError struct {
	Vault string
	Wait  time.Duration
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("Key Vault answered 429 (Throttled): vault %s is sent no request for another %s", e.Vault,
		e.Wait.Round(100*time.Millisecond))
}

// NonRetriable tells the SDK's retry policy not to retry.
func (e *ThrottledError) NonRetriable() {}

// Do implements policy.Policy: it holds each request to its vault's budget,
// answers ThrottledError while the vault is paused, and pauses the vault
// for its Retry-After (or a growing backoff) when it answers 429.
func (v *vaultGates) Do(req *policy.Request) (*http.Response, error) {
	host := strings.ToLower(req.Raw().URL.Hostname())
	g := v.gate(host)
	vault, _, _ := strings.Cut(host, ".")
	v.mu.Lock()
	wait := g.until.Sub(v.now())
	v.mu.Unlock()
	if wait > 0 {
		v.metrics.throttledRequest(host)
		return nil, &ThrottledError{Vault: vault, Wait: wait}
	}
	if err := g.limiter.Wait(req.Raw().Context()); err != nil {
		return nil, err
	}
	resp, err := req.Next()
	if err != nil || resp.StatusCode != http.StatusTooManyRequests {
		if err == nil {
			v.mu.Lock()
			g.backoff = 0
			v.mu.Unlock()
		}
		return resp, err
	}
	pause, ok := retryAfter(resp.Header, v.now())
	v.mu.Lock()
	if !ok {
		g.backoff = min(max(2*g.backoff, DefaultThrottleBackoff), MaxThrottleBackoff)
		pause = g.backoff/2 + rand.N(g.backoff/2+1)
	}
	if until := v.now().Add(pause); until.After(g.until) {
		g.until = until
	}
	v.mu.Unlock()
	return resp, nil
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	s := strings.TrimSpace(h.Get("Retry-After"))
	if s == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(s); err == nil && secs >= 0 {
		return min(time.Duration(secs)*time.Second, MaxThrottleBackoff*5), true
	}
	if t, err := http.ParseTime(s); err == nil {
		return min(max(t.Sub(now), 0), MaxThrottleBackoff*5), true
	}
	return 0, false
}
