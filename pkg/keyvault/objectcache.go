package keyvault

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// objectCache keeps fetched and converted objects for a short time, per
// identity, so that the pods of a node share one Key Vault GET per object
// per TTL instead of each pod fetching every object at every republish
// (kubelet republishes every volume about once a minute). A miss for a key
// that is already being fetched waits for that fetch.
//
// Entries are keyed by the identity that fetched them: a pod never gets an
// object through the cache that its own identity could not read. Failures
// are not cached.
type objectCache struct {
	ttl   time.Duration
	max   int
	now   func() time.Time
	group singleflight.Group

	mu      sync.Mutex
	entries map[objectKey]*cachedObject

	hits, misses atomic.Uint64
	metrics      *Metrics // nil: none
}

// objectKey identifies one GET (or versions listing) and the conversion
// applied to its result.
type objectKey struct {
	client   clientKey
	list     bool
	typ      ObjectType
	name     string // lower case: Key Vault names are case-insensitive
	version  string
	format   Format
	encoding Encoding
	history  int
}

func (k objectKey) String() string {
	var b strings.Builder
	for _, s := range []string{k.client.vaultURL, k.client.identity, strconv.FormatBool(k.list), string(k.typ), k.name,
		k.version, string(k.format), string(k.encoding), strconv.Itoa(k.history)} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	return b.String()
}

type cachedObject struct {
	content  []byte
	version  string
	warning  string
	versions []string
	expires  time.Time
}

func newObjectCache(ttl time.Duration, max int) *objectCache {
	return &objectCache{ttl: ttl, max: max, now: time.Now, entries: map[objectKey]*cachedObject{}}
}

// detachedFetchTimeout bounds a shared fetch, which no single caller's
// context may cancel.
const detachedFetchTimeout = 45 * time.Second

// get returns the cached result for key or runs fetch once for all callers
// waiting on key. fetch runs with a context detached from any one caller;
// a caller whose ctx ends stops waiting.
func (c *objectCache) get(ctx context.Context, key objectKey, fetch func(context.Context) (*cachedObject, error)) (*cachedObject, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		c.hits.Add(1)
		c.metrics.cacheRead(true)
		return e, nil
	}
	c.misses.Add(1)
	c.metrics.cacheRead(false)
	ch := c.group.DoChan(key.String(), func() (any, error) {
		// A fetch of key that finished between the look-up above and
		// DoChan has stored a fresh entry: take it rather than send the
		// same GET again.
		c.mu.Lock()
		e, ok := c.entries[key]
		c.mu.Unlock()
		if ok && c.now().Before(e.expires) {
			return e, nil
		}
		c.metrics.cacheFetched()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedFetchTimeout)
		defer cancel()
		e, err := fetch(fctx)
		if err != nil {
			return nil, err
		}
		e.expires = c.now().Add(c.ttl)
		c.store(key, e)
		return e, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*cachedObject), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// store adds e, dropping expired entries, then the soonest to expire, when
// the cache is full.
func (c *objectCache) store(key objectKey, e *cachedObject) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; !ok && len(c.entries) >= c.max {
		now := c.now()
		var (
			soonest    objectKey
			soonestExp time.Time
		)
		for k, v := range c.entries {
			if !now.Before(v.expires) {
				delete(c.entries, k)
				continue
			}
			if soonestExp.IsZero() || v.expires.Before(soonestExp) {
				soonest, soonestExp = k, v.expires
			}
		}
		if len(c.entries) >= c.max {
			delete(c.entries, soonest)
		}
	}
	c.entries[key] = e
	c.metrics.cacheEntries(len(c.entries))
}
