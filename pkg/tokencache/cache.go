// Package tokencache is a keyed cache of access tokens that sits in front of
// an upstream token source (a node's IMDS, Entra ID): hits are served from
// memory, concurrent misses for one key make one upstream call, tokens are
// refreshed ahead of expiry in the background, an expired token is never
// returned, and upstream calls are rate- and concurrency-limited.
package tokencache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
)

// Key identifies a cached token.
type Key struct {
	// Identity is the client ID (or another stable identifier) of the identity
	// the token is for.
	Identity string
	// Resource is the audience the token is for, e.g. https://vault.azure.net.
	Resource string
	// Tenant is the tenant that issued the token; empty when the source
	// implies it (a node's IMDS).
	Tenant string
	// ServiceAccount is the Kubernetes service account the token was
	// obtained through, for a workload identity: two service accounts
	// whose federated credentials name the same application get a token
	// each. Empty for a node's managed identities, which are the node's
	// whichever pod asks.
	ServiceAccount types.NamespacedName
}

// flightKey is the singleflight key for k; NUL cannot occur in the fields.
func (k Key) flightKey() string {
	return k.Identity + "\x00" + k.Resource + "\x00" + k.Tenant + "\x00" + k.ServiceAccount.Namespace + "\x00" + k.ServiceAccount.Name
}

// Token is an access token and its lifetime.
type Token struct {
	AccessToken string
	ExpiresOn   time.Time
	// NotBefore is when the token became valid, as the issuer reported it.
	NotBefore time.Time
}

// Source fetches a token from upstream. The context carries the upstream
// call's own deadline, independent of any one caller of Get.
type Source interface {
	Token(ctx context.Context, key Key) (Token, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, key Key) (Token, error)

// Token calls f.
func (f SourceFunc) Token(ctx context.Context, key Key) (Token, error) { return f(ctx, key) }

// ErrUpstreamBusy is returned when the upstream rate or concurrency limit
// leaves no room for a call within the upstream timeout.
var ErrUpstreamBusy = errors.New("token source busy: upstream rate or concurrency limit reached")

// Options tune a Cache. The zero value gives the defaults.
type Options struct {
	// MaxEntries bounds the number of cached tokens; default 10,000. When full,
	// expired entries go first, then the least recently used.
	MaxEntries int
	// RefreshBefore is how long before expiry a token is refreshed in the
	// background; default 10 minutes. Short-lived tokens are refreshed at half
	// their life at the latest.
	RefreshBefore time.Duration
	// MinRemaining is the least life a token must have left to be served;
	// default one minute. A token closer to expiry counts as expired.
	MinRemaining time.Duration
	// UpstreamRate and UpstreamBurst limit calls to the source; default 20 per
	// second with a burst of 20 (IMDS's per-VM limit).
	UpstreamRate  rate.Limit
	UpstreamBurst int
	// UpstreamConcurrency limits calls in flight; default 5 (IMDS's limit).
	UpstreamConcurrency int
	// UpstreamTimeout bounds one upstream call, including the wait for the
	// limits; default 30 seconds.
	UpstreamTimeout time.Duration
	// RetryBackoff is the pause after a failed background refresh before the
	// next one; default 5 seconds.
	RetryBackoff time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.MaxEntries <= 0 {
		o.MaxEntries = 10000
	}
	if o.RefreshBefore <= 0 {
		o.RefreshBefore = 10 * time.Minute
	}
	if o.MinRemaining <= 0 {
		o.MinRemaining = time.Minute
	}
	if o.UpstreamRate <= 0 {
		o.UpstreamRate = 20
	}
	if o.UpstreamBurst <= 0 {
		o.UpstreamBurst = 20
	}
	if o.UpstreamConcurrency <= 0 {
		o.UpstreamConcurrency = 5
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = 30 * time.Second
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Stats are the cache's counters since it was created.
type Stats struct {
	Hits, Misses                  uint64
	UpstreamCalls, UpstreamErrors uint64
	Refreshes, Evictions          uint64
	Entries                       int
}

// entry is one cached token. tok and refreshAt never change after the entry
// is stored; a refresh stores a new entry.
type entry struct {
	tok       Token
	refreshAt time.Time
	lastUsed  atomic.Int64 // UnixNano
	// refreshing is set while a background refresh runs; nextAttempt holds
	// back the next one after a failure (UnixNano).
	refreshing  atomic.Bool
	nextAttempt atomic.Int64
}

// Cache is a token cache. Its methods are safe for concurrent use.
type Cache struct {
	src     Source
	opts    Options
	limiter *rate.Limiter
	sem     *semaphore.Weighted
	group   singleflight.Group

	mu      sync.RWMutex
	entries map[Key]*entry

	hits, misses, upstreamCalls, upstreamErrors, refreshes, evictions atomic.Uint64
}

// New returns a cache in front of src.
func New(src Source, opts Options) *Cache {
	opts.setDefaults()
	return &Cache{
		src:     src,
		opts:    opts,
		limiter: rate.NewLimiter(opts.UpstreamRate, opts.UpstreamBurst),
		sem:     semaphore.NewWeighted(int64(opts.UpstreamConcurrency)),
		entries: map[Key]*entry{},
	}
}

// Get returns a token for key that has at least MinRemaining of life left,
// from the cache or from one upstream call shared by every concurrent caller
// for the same key. A caller whose ctx ends stops waiting; the upstream call
// goes on for the others and fills the cache.
func (c *Cache) Get(ctx context.Context, key Key) (Token, error) {
	now := c.opts.Now()
	c.mu.RLock()
	e := c.entries[key]
	c.mu.RUnlock()
	if e != nil && c.usable(e, now) {
		e.lastUsed.Store(now.UnixNano())
		c.hits.Add(1)
		if !now.Before(e.refreshAt) {
			c.refreshInBackground(key, e, now)
		}
		return e.tok, nil
	}
	c.misses.Add(1)
	ch := c.group.DoChan(key.flightKey(), func() (any, error) { return c.fetch(key) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return Token{}, r.Err
		}
		return r.Val.(Token), nil
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	c.mu.RLock()
	n := len(c.entries)
	c.mu.RUnlock()
	return Stats{
		Hits: c.hits.Load(), Misses: c.misses.Load(),
		UpstreamCalls: c.upstreamCalls.Load(), UpstreamErrors: c.upstreamErrors.Load(),
		Refreshes: c.refreshes.Load(), Evictions: c.evictions.Load(),
		Entries: n,
	}
}

func (c *Cache) usable(e *entry, now time.Time) bool {
	return now.Add(c.opts.MinRemaining).Before(e.tok.ExpiresOn)
}

// refreshInBackground starts one refresh of key unless one is running or a
// failed one asked to wait. The current token is served meanwhile.
func (c *Cache) refreshInBackground(key Key, e *entry, now time.Time) {
	if now.UnixNano() < e.nextAttempt.Load() || !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	c.refreshes.Add(1)
	go func() {
		defer e.refreshing.Store(false)
		r := <-c.group.DoChan(key.flightKey(), func() (any, error) { return c.fetch(key) })
		if r.Err != nil {
			e.nextAttempt.Store(c.opts.Now().Add(c.opts.RetryBackoff).UnixNano())
		}
	}()
}

// fetch runs inside the singleflight group: it looks the key up once more
// (a flight that just finished may have filled it), then calls upstream
// within the limits and stores the result. Failures are not cached.
func (c *Cache) fetch(key Key) (Token, error) {
	now := c.opts.Now()
	c.mu.RLock()
	e := c.entries[key]
	c.mu.RUnlock()
	if e != nil && c.usable(e, now) && now.Before(e.refreshAt) {
		return e.tok, nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), c.opts.UpstreamTimeout)
	defer cancel()
	if err := c.limiter.Wait(ctx); err != nil {
		c.upstreamErrors.Add(1)
		return Token{}, ErrUpstreamBusy
	}
	if err := c.sem.Acquire(ctx, 1); err != nil {
		c.upstreamErrors.Add(1)
		return Token{}, ErrUpstreamBusy
	}
	defer c.sem.Release(1)

	c.upstreamCalls.Add(1)
	tok, err := c.src.Token(ctx, key)
	if err != nil {
		c.upstreamErrors.Add(1)
		return Token{}, err
	}
	now = c.opts.Now()
	fresh := &entry{tok: tok, refreshAt: refreshAt(tok.ExpiresOn, now, c.opts.RefreshBefore)}
	if !c.usable(fresh, now) {
		c.upstreamErrors.Add(1)
		return Token{}, fmt.Errorf("token source returned a token that expires at %s, less than %s from now",
			tok.ExpiresOn.UTC().Format(time.RFC3339), c.opts.MinRemaining)
	}
	fresh.lastUsed.Store(now.UnixNano())
	c.store(key, fresh, now)
	return tok, nil
}

// refreshAt is when a token expiring at exp, fetched at now, should be
// refreshed: RefreshBefore ahead of expiry, or at half its remaining life if
// that comes first.
func refreshAt(exp, now time.Time, before time.Duration) time.Time {
	if half := exp.Sub(now) / 2; half < before {
		before = half
	}
	return exp.Add(-before)
}

// store inserts e, evicting to stay within MaxEntries.
func (c *Cache) store(key Key, e *entry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.opts.MaxEntries {
		c.evictLocked(now)
	}
	c.entries[key] = e
}

// evictLocked removes every unusable entry; if none was, it removes the least
// recently used one. It scans the map, which only happens when the cache is
// full.
func (c *Cache) evictLocked(now time.Time) {
	var (
		lru     Key
		lruUsed int64
		found   bool
		removed int
	)
	for k, e := range c.entries {
		if !c.usable(e, now) {
			delete(c.entries, k)
			removed++
			continue
		}
		if used := e.lastUsed.Load(); !found || used < lruUsed {
			lru, lruUsed, found = k, used, true
		}
	}
	if removed == 0 && found {
		delete(c.entries, lru)
		removed = 1
	}
	c.evictions.Add(uint64(removed))
}
