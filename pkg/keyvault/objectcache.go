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
//
// The cache is bounded twice. maxBytes bounds what it holds by entrySize,
// which is what matters on a node: a Key Vault object is up to 25 KB and
// a converted one more (a PFX as PEM, a certificate chain), so the count
// alone let 10,000 large certificates pin a quarter of a gigabyte, the
// container's whole memory limit. maxEntries stays as a cap on the bookkeeping itself: the
// per-entry overhead in entrySize is an estimate, so the byte bound alone
// would trust it for tens of thousands of tiny entries (versions listings,
// short secrets).
//
// Every store first drops the expired entries, then, while the new entry
// does not fit, the least recently used one. Both are O(1) per entry
// dropped: all entries share one TTL and are stamped under mu from a
// monotonic clock, so the order they were stored in (byAge) is the order
// they expire in, and the expired ones are a prefix of it; byUse is the
// recency order, touched on every hit. (Were the clock to step back, the
// sweep would stop early and leave expired entries to the LRU order; it
// never drops a fresh entry as expired.) An object larger than maxBytes is returned to its callers but
// not kept.
type objectCache struct {
	ttl        time.Duration
	maxEntries int
	maxBytes   int64
	now        func() time.Time
	group      singleflight.Group

	mu      sync.Mutex
	entries map[objectKey]*keptObject
	lists   keptObject // the sentinel of byAge and byUse
	bytes   int64      // sum of the entries' size

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

// cachedObject is what one fetch produced; it is not changed once fetched,
// so callers may read it without the cache's lock.
type cachedObject struct {
	content  []byte
	version  string
	warning  string
	versions []string
}

// entryOverhead is what entrySize adds to each entry for what its strings
// and content leave out: the map slot, the key's and the object's headers
// (a dozen strings and slices), the entry's links and stamps. They come to
// a little over 400 bytes on 64-bit platforms; 512 leaves room for the
// map's own slack (TestObjectCacheEntryOverhead keeps it above the
// structs' sizes).
const entryOverhead = 512

// entrySize is what an entry counts against maxBytes: the bytes of its
// content, strings and key, plus entryOverhead. The key's vault URL and
// identity are counted in every entry although entries of one identity
// may share them: an overestimate, on the safe side.
func entrySize(k objectKey, o *cachedObject) int64 {
	n := len(o.content) + len(o.version) + len(o.warning)
	for _, v := range o.versions {
		n += len(v) + 16 // and its string header in the slice
	}
	n += len(k.client.vaultURL) + len(k.client.identity) + len(k.typ) + len(k.name) + len(k.version) + len(k.format) + len(k.encoding)
	return int64(n) + entryOverhead
}

// keptObject is an entry of the object cache, linked into byAge and byUse.
type keptObject struct {
	key     objectKey
	obj     *cachedObject
	size    int64
	expires time.Time
	links   [2]struct{ prev, next *keptObject }
}

// The two lists of keptObject.links, each oldest first.
const (
	byAge = iota // by time stored, hence by expiry
	byUse        // by last read: least recently used first
)

func newObjectCache(ttl time.Duration, maxEntries int, maxBytes int64) *objectCache {
	c := &objectCache{ttl: ttl, maxEntries: maxEntries, maxBytes: maxBytes, now: time.Now, entries: map[objectKey]*keptObject{}}
	for l := range c.lists.links {
		c.lists.links[l].prev, c.lists.links[l].next = &c.lists, &c.lists
	}
	return c
}

// pushBack makes e the newest of list l.
func (c *objectCache) pushBack(l int, e *keptObject) {
	last := c.lists.links[l].prev
	e.links[l].prev, e.links[l].next = last, &c.lists
	last.links[l].next = e
	c.lists.links[l].prev = e
}

func unlink(l int, e *keptObject) {
	e.links[l].prev.links[l].next = e.links[l].next
	e.links[l].next.links[l].prev = e.links[l].prev
	e.links[l].prev, e.links[l].next = nil, nil
}

// oldest returns the first entry of list l, nil when the cache is empty.
func (c *objectCache) oldest(l int) *keptObject {
	if e := c.lists.links[l].next; e != &c.lists {
		return e
	}
	return nil
}

// remove drops e; c.mu is held.
func (c *objectCache) remove(e *keptObject) {
	unlink(byAge, e)
	unlink(byUse, e)
	delete(c.entries, e.key)
	c.bytes -= e.size
}

// detachedFetchTimeout bounds a shared fetch, which no single caller's
// context may cancel.
const detachedFetchTimeout = 45 * time.Second

// lookup returns key's entry if it has not expired at now, as its most
// recent use.
func (c *objectCache) lookup(key objectKey, now time.Time) (*cachedObject, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || !now.Before(e.expires) {
		return nil, false
	}
	unlink(byUse, e)
	c.pushBack(byUse, e)
	return e.obj, true
}

// get returns the cached result for key or runs fetch once for all callers
// waiting on key. fetch runs with a context detached from any one caller;
// a caller whose ctx ends stops waiting.
func (c *objectCache) get(ctx context.Context, key objectKey, fetch func(context.Context) (*cachedObject, error)) (*cachedObject, error) {
	if o, ok := c.lookup(key, c.now()); ok {
		c.hits.Add(1)
		c.metrics.cacheRead(true)
		return o, nil
	}
	c.misses.Add(1)
	c.metrics.cacheRead(false)
	ch := c.group.DoChan(key.String(), func() (any, error) {
		// A fetch of key that finished between the look-up above and
		// DoChan has stored a fresh entry: take it rather than send the
		// same GET again.
		if o, ok := c.lookup(key, c.now()); ok {
			return o, nil
		}
		c.metrics.cacheFetched()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), detachedFetchTimeout)
		defer cancel()
		o, err := fetch(fctx)
		if err != nil {
			return nil, err
		}
		c.store(key, o)
		return o, nil
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

// store keeps o under key for the TTL, replacing key's previous entry. It
// drops the expired entries, then as many of the least recently used as
// o needs room; an o larger than the whole bound is not kept, and the
// entries stay.
func (c *objectCache) store(key objectKey, o *cachedObject) {
	size := entrySize(key, o)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if old, ok := c.entries[key]; ok {
		c.remove(old)
	}
	for e := c.oldest(byAge); e != nil && !now.Before(e.expires); e = c.oldest(byAge) {
		c.remove(e)
	}
	if size <= c.maxBytes {
		for e := c.oldest(byUse); e != nil && (c.bytes+size > c.maxBytes || len(c.entries) >= c.maxEntries); e = c.oldest(byUse) {
			c.remove(e)
		}
		e := &keptObject{key: key, obj: o, size: size, expires: now.Add(c.ttl)}
		c.entries[key] = e
		c.pushBack(byAge, e)
		c.pushBack(byUse, e)
		c.bytes += size
	}
	c.metrics.cacheHeld(len(c.entries), c.bytes)
}
