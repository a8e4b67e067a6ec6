package keyvault

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
)

// The object cache turns "every pod fetches every object at every
// republish" into one GET per object per TTL per identity.
func TestFetchCacheSharesGETsPerIdentityWithinTheTTL(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	objs := fiveObjects(t, env)
	f := env.fetcher(Options{CacheTTL: time.Minute})
	now := time.Now()
	var mu sync.Mutex
	f.objects.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	req := env.request(t, objs...)

	// Ten pods mount at once: five GETs between them.
	var wg sync.WaitGroup
	results := make([]*Result, 10)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			results[i], err = f.Fetch(ctx, req)
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, 5, env.kvCount(http.StatusOK), "one GET per object for ten concurrent mounts")
	for _, r := range results {
		assert.Equal(t, results[0], r)
	}

	// Republishes within the TTL: no request at all.
	env.e.ResetRequests()
	for range 5 {
		_, err := f.Fetch(ctx, req)
		require.NoError(t, err)
	}
	assert.Zero(t, env.e.CountRequests(emulator.RequestFilter{}))

	// Another identity never reads through the first one's entries.
	other, err := env.e.AddApplication(emulator.Principal{TenantID: testTenant, ClientID: "33333333-2222-4333-8444-555555555555", Secret: "s"})
	require.NoError(t, err)
	_, err = f.Fetch(ctx, Request{VaultURL: env.vaultURL, Credential: env.credential(t, other), IdentityKey: "sp/" + other.ClientID, Objects: objs})
	require.Error(t, err, "no grant: the cache must not serve it")
	assert.Equal(t, KindPermissionDenied, Classify(err))

	// After the TTL a rotated secret shows.
	env.setSecret(t, "s1", "rotated", emulator.SecretOptions{})
	res, err := f.Fetch(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, "value-of-s1", string(files(t, res)["s1"].Content), "still cached")
	advance(time.Minute + time.Second)
	env.e.ResetRequests()
	res, err = f.Fetch(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, "rotated", string(files(t, res)["s1"].Content))
	assert.Equal(t, 5, env.kvCount(http.StatusOK))
	hits, misses := f.CacheStats()
	assert.Positive(t, hits)
	assert.Positive(t, misses)
}

func TestFetchCacheDoesNotKeepFailures(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	f := env.fetcher(Options{CacheTTL: time.Minute})
	env.setSecret(t, "late", "v", emulator.SecretOptions{})
	req := env.request(t, Object{Name: "late", Type: TypeSecret})
	_, err := f.Fetch(ctx, req)
	require.Error(t, err)
	assert.Equal(t, KindPermissionDenied, Classify(err))
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	res, err := f.Fetch(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, "v", string(res.Files[0].Content))
}

// A caller that found the entry expired, and reaches the fetch only after
// another caller's fetch of the same key has finished and stored a fresh
// entry, takes that entry: one fetch per key per expiry however the
// callers are scheduled. (Under load, on a node republishing many volumes
// at once, the second fetch was a second Key Vault GET.)
func TestObjectCacheFetchesOncePerExpiry(t *testing.T) {
	c := newObjectCache(time.Minute, 10, 1<<20)
	now := time.Now()
	var mu sync.Mutex
	c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ctx := context.Background()
	for round := range 300 {
		mu.Lock()
		now = now.Add(time.Minute + time.Second) // every entry expires
		mu.Unlock()
		var fetches atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := c.get(ctx, objectKey{name: "s"}, func(context.Context) (*cachedObject, error) {
					fetches.Add(1)
					return &cachedObject{version: "v"}, nil
				})
				assert.NoError(t, err)
			}()
		}
		close(start)
		wg.Wait()
		require.Equal(t, int32(1), fetches.Load(), "round %d: fetches of one key after it expired", round)
	}
}

// fakeClock is a cache's clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (k *fakeClock) Now() time.Time { k.mu.Lock(); defer k.mu.Unlock(); return k.now }

func (k *fakeClock) Advance(d time.Duration) { k.mu.Lock(); k.now = k.now.Add(d); k.mu.Unlock() }

// testCache returns a cache on a fake clock.
func testCache(maxEntries int, maxBytes int64) (*objectCache, *fakeClock) {
	c := newObjectCache(time.Minute, maxEntries, maxBytes)
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	c.now = clock.Now
	return c, clock
}

func secretKey(name string) objectKey {
	return objectKey{client: clientKey{vaultURL: "https://kv.vault.azure.net/", identity: "sp/app"}, typ: TypeSecret, name: name}
}

// sized is an object whose entry, under key, is exactly size bytes.
func sized(t testing.TB, key objectKey, size int64) *cachedObject {
	t.Helper()
	base := entrySize(key, &cachedObject{})
	require.GreaterOrEqual(t, size, base, "entries of %s are at least %d bytes", key.name, base)
	return &cachedObject{content: []byte(strings.Repeat("x", int(size-base)))}
}

// getObject reads key through c, fetching o on a miss; it returns what get
// returned and whether it fetched.
func getObject(t testing.TB, c *objectCache, key objectKey, o *cachedObject) (*cachedObject, bool) {
	t.Helper()
	fetched := false
	got, err := c.get(context.Background(), key, func(context.Context) (*cachedObject, error) {
		fetched = true
		return o, nil
	})
	require.NoError(t, err)
	return got, fetched
}

// lookupOnly says whether c holds key, fresh or not, without using it.
func (c *objectCache) lookupOnly(key objectKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[key]
	return ok
}

// cached returns the names the cache holds, least recently used first.
func cached(c *objectCache) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for e := c.lists.links[byUse].next; e != &c.lists; e = e.links[byUse].next {
		names = append(names, e.key.name)
	}
	return names
}

// checkCache checks what the cache's bookkeeping must always hold: both
// lists link exactly the map's entries, in order of expiry for byAge; the
// bytes are the sum of the entries' sizes, each its entrySize; and the
// bounds hold.
func checkCache(t testing.TB, c *objectCache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	// Plain comparisons, testify only on failure: this runs after every
	// store of the long tests.
	fail := func(format string, args ...any) {
		t.Helper()
		require.FailNowf(t, "object cache bookkeeping", format, args...)
	}
	for _, l := range []int{byAge, byUse} {
		n := 0
		prev := &c.lists
		for e := c.lists.links[l].next; e != &c.lists; e = e.links[l].next {
			if e.links[l].prev != prev {
				fail("list %d: a broken back link at %s", l, e.key.name)
			}
			if c.entries[e.key] != e {
				fail("list %d: %s, which the map does not hold", l, e.key.name)
			}
			if l == byAge && prev != &c.lists && e.expires.Before(prev.expires) {
				fail("byAge is not in order of expiry at %s", e.key.name)
			}
			if n++; n > len(c.entries) {
				fail("list %d: longer than the map (%d)", l, len(c.entries))
			}
			prev = e
		}
		if c.lists.links[l].prev != prev {
			fail("list %d: the sentinel's back link", l)
		}
		if n != len(c.entries) {
			fail("list %d: %d entries, the map %d", l, n, len(c.entries))
		}
	}
	var sum int64
	for k, e := range c.entries {
		if e.size != entrySize(k, e.obj) {
			fail("%s: size %d, entrySize %d", k.name, e.size, entrySize(k, e.obj))
		}
		sum += e.size
	}
	if sum != c.bytes {
		fail("bytes %d, the entries' sizes %d", c.bytes, sum)
	}
	if c.bytes > c.maxBytes || len(c.entries) > c.maxEntries {
		fail("%d bytes in %d entries, over the bounds %d, %d", c.bytes, len(c.entries), c.maxBytes, c.maxEntries)
	}
}

// An entry counts its content, strings and key, and entryOverhead for the
// rest.
func TestObjectCacheEntrySize(t *testing.T) {
	k := objectKey{client: clientKey{vaultURL: "https://v/", identity: "id"}, typ: TypeSecret, name: "ab", version: "v1", format: "pem", encoding: "utf-8"}
	keyLen := int64(len("https://v/") + len("id") + len("secret") + len("ab") + len("v1") + len("pem") + len("utf-8"))
	assert.Equal(t, 100+3+4+keyLen+entryOverhead,
		entrySize(k, &cachedObject{content: make([]byte, 100), version: "abc", warning: "warn"}))
	assert.Equal(t, 2*(5+16)+keyLen+entryOverhead, entrySize(k, &cachedObject{versions: []string{"aaaaa", "bbbbb"}}))
}

// entryOverhead covers the structs an entry allocates and its map slot
// (key and pointer), with room to spare for the map's own overhead.
func TestObjectCacheEntryOverhead(t *testing.T) {
	fixed := unsafe.Sizeof(keptObject{}) + unsafe.Sizeof(cachedObject{}) + unsafe.Sizeof(objectKey{}) + unsafe.Sizeof(&keptObject{})
	t.Logf("structs and map slot: %d bytes; entryOverhead %d", fixed, entryOverhead)
	assert.Less(t, float64(fixed)*1.05, float64(entryOverhead))
}

// Under many inserts of mixed sizes, small to larger than Key Vault's
// largest object, neither bound is ever exceeded and the bookkeeping stays
// exact, while time passes and entries expire.
func TestObjectCacheStaysWithinItsBounds(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxEntries int
		maxBytes   int64
	}{
		{"bytes bind", 10000, 256 << 10},
		{"entries bind", 40, 16 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, clock := testCache(tc.maxEntries, tc.maxBytes)
			rng := rand.New(rand.NewPCG(1, 2))
			// The largest is over the first case's bound.
			sizes := []int{0, 30, 700, 3000, 25 << 10, 60 << 10, 300 << 10}
			var kept, dropped int
			for i := range 5000 {
				key := secretKey(strconv.Itoa(rng.IntN(400)))
				o := &cachedObject{content: make([]byte, sizes[rng.IntN(len(sizes))]+rng.IntN(100)), version: "v"}
				got, _ := getObject(t, c, key, o)
				require.NotNil(t, got)
				if i%50 == 0 {
					clock.Advance(7 * time.Second)
				}
				checkCache(t, c)
				// What was just read is kept, the newest entry, unless it
				// is larger than the bound.
				fits := entrySize(key, got) <= tc.maxBytes
				require.Equal(t, fits, c.lookupOnly(key), "read %d: %d bytes, kept", i, entrySize(key, got))
				if fits {
					kept++
				} else {
					dropped++
				}
			}
			t.Logf("%d entries, %d bytes at the end; %d reads kept, %d too large", len(c.entries), c.bytes, kept, dropped)
			assert.Positive(t, kept)
		})
	}
}

// Room is made from the expired entries first, even a recently read one,
// then from the least recently read, however recently stored.
func TestObjectCacheEvictsExpiredThenLeastRecentlyUsed(t *testing.T) {
	const size = 1000
	c, clock := testCache(100, 3*size)
	store := func(name string) {
		t.Helper()
		key := secretKey(name)
		_, fetched := getObject(t, c, key, sized(t, key, size))
		require.True(t, fetched, name)
		checkCache(t, c)
	}
	read := func(name string) {
		t.Helper()
		key := secretKey(name)
		_, fetched := getObject(t, c, key, sized(t, key, size))
		require.False(t, fetched, "%s is cached", name)
	}

	store("a") // expires at 60 s
	clock.Advance(30 * time.Second)
	store("b") // 90 s
	clock.Advance(10 * time.Second)
	store("c")                      // 100 s
	clock.Advance(19 * time.Second) // 59 s
	read("a")
	assert.Equal(t, []string{"b", "c", "a"}, cached(c), "least recently used first")

	// At 61 s a has expired: d takes its room, though a was read last
	// and b would be the least recently used.
	clock.Advance(2 * time.Second)
	store("d")
	assert.Equal(t, []string{"b", "c", "d"}, cached(c))

	// Nothing has expired: e takes the room of the least recently used,
	// c, not of the oldest, b, which was read since.
	read("b")
	store("e")
	assert.Equal(t, []string{"d", "b", "e"}, cached(c))

	// A larger entry takes as much room as it needs: two entries.
	key := secretKey("f")
	_, fetched := getObject(t, c, key, sized(t, key, 2*size))
	require.True(t, fetched)
	assert.Equal(t, []string{"e", "f"}, cached(c))
	checkCache(t, c)

	// Expired entries go at the next store even when there is room.
	clock.Advance(time.Minute)
	store("g")
	assert.Equal(t, []string{"g"}, cached(c))
}

// The entry bound, too, drops the least recently used.
func TestObjectCacheBoundsEntries(t *testing.T) {
	c, _ := testCache(2, 1<<20)
	for _, name := range []string{"a", "b", "a", "c"} {
		getObject(t, c, secretKey(name), &cachedObject{version: name})
	}
	assert.Equal(t, []string{"a", "c"}, cached(c))
	checkCache(t, c)
}

// An object larger than the whole bound is returned to every caller
// but kept by none: each read fetches it. It takes no room from the
// entries there are, and the expired entry it replaces is dropped.
func TestObjectCacheDoesNotKeepOversizeObjects(t *testing.T) {
	c, _ := testCache(100, 4000)
	small := secretKey("small")
	getObject(t, c, small, sized(t, small, 1000))
	big := secretKey("big")
	o := &cachedObject{content: make([]byte, 4000)}
	for range 2 {
		got, fetched := getObject(t, c, big, o)
		assert.Same(t, o, got)
		assert.True(t, fetched, "not cached: fetched again")
	}
	assert.Equal(t, []string{"small"}, cached(c))
	assert.Equal(t, int64(1000), c.bytes)

	// One byte over is over; exactly the bound fits, alone.
	c, clock := testCache(100, 4000)
	getObject(t, c, small, sized(t, small, 1000))
	_, fetched := getObject(t, c, big, sized(t, big, 4001))
	assert.True(t, fetched)
	assert.Equal(t, []string{"small"}, cached(c))
	clock.Advance(time.Minute)
	_, fetched = getObject(t, c, big, sized(t, big, 4000))
	assert.True(t, fetched)
	assert.Equal(t, []string{"big"}, cached(c))
	assert.Equal(t, int64(4000), c.bytes)

	// When big's new version no longer fits, its old entry goes.
	clock.Advance(time.Minute)
	_, fetched = getObject(t, c, big, sized(t, big, 5000))
	assert.True(t, fetched)
	assert.Empty(t, cached(c))
	assert.Zero(t, c.bytes)
	checkCache(t, c)
}

// The bytes, and the gauges, follow every change exactly: a store, a
// replacement by a larger or smaller version, expiry, eviction, and a
// failure, which keeps nothing.
func TestObjectCacheAccountsBytesExactly(t *testing.T) {
	c, clock := testCache(100, 10000)
	m := NewMetrics(prometheus.NewRegistry())
	c.metrics = m
	held := func(entries int, bytes int64) {
		t.Helper()
		checkCache(t, c)
		assert.Equal(t, bytes, c.bytes)
		assert.Len(t, c.entries, entries)
		assert.Equal(t, float64(bytes), testutil.ToFloat64(m.cacheBytes), "bytes gauge")
		assert.Equal(t, float64(entries), testutil.ToFloat64(m.cacheSize), "entries gauge")
	}
	a, b, d := secretKey("a"), secretKey("b"), secretKey("d")

	getObject(t, c, a, sized(t, a, 3000))
	held(1, 3000)
	clock.Advance(30 * time.Second)
	getObject(t, c, b, sized(t, b, 2000))
	held(2, 5000)

	// a expires and comes back larger, then smaller.
	clock.Advance(31 * time.Second)
	getObject(t, c, a, sized(t, a, 6000))
	held(2, 8000)
	clock.Advance(time.Minute) // b, and a, expired
	getObject(t, c, a, sized(t, a, 1500))
	held(1, 1500)

	// A failure keeps nothing.
	_, err := c.get(context.Background(), d, func(context.Context) (*cachedObject, error) { return nil, errors.New("denied") })
	require.Error(t, err)
	held(1, 1500)

	// Eviction: b (9000) needs a's room.
	getObject(t, c, b, sized(t, b, 9000))
	held(1, 9000)
	assert.Equal(t, []string{"b"}, cached(c))
}

// Many callers reading, fetching, failing and expiring at once: each gets
// its own key's object, failures are never kept, and the bookkeeping holds.
// Run with -race.
func TestObjectCacheConcurrentUse(t *testing.T) {
	c, clock := testCache(500, 256<<10)
	content := func(name string) []byte {
		n, _ := strconv.Atoi(name)
		return []byte(strings.Repeat(name+",", 1+n*n%2000))
	}
	failing := func(name string) bool { n, _ := strconv.Atoi(name); return n%7 == 0 }
	var fetches atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 0))
			for i := range 2000 {
				name := strconv.Itoa(rng.IntN(300))
				o, err := c.get(context.Background(), secretKey(name), func(context.Context) (*cachedObject, error) {
					fetches.Add(1)
					if failing(name) {
						return nil, errors.New("denied")
					}
					return &cachedObject{content: content(name), version: name}, nil
				})
				if failing(name) {
					assert.Error(t, err)
					continue
				}
				if assert.NoError(t, err) {
					assert.Equal(t, name, o.version)
					assert.Equal(t, content(name), o.content)
				}
				if w == 0 && i%100 == 0 {
					clock.Advance(20 * time.Second)
				}
			}
		}()
	}
	wg.Wait()
	checkCache(t, c)
	for k := range c.entries {
		assert.False(t, failing(k.name), "%s failed, and is cached", k.name)
	}
	hits, misses := c.hits.Load(), c.misses.Load()
	t.Logf("%d hits, %d misses, %d fetches; %d entries, %d bytes", hits, misses, fetches.Load(), len(c.entries), c.bytes)
	assert.Equal(t, uint64(16*2000), hits+misses)
}

// The bound reaches the cache from Options, and an object over it is
// fetched at every read while the others are shared.
func TestFetchCacheMaxBytes(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	assert.Equal(t, DefaultMaxCachedBytes, env.fetcher(Options{CacheTTL: time.Minute}).objects.maxBytes)

	env.setSecret(t, "small", "v", emulator.SecretOptions{})
	env.setSecret(t, "large", strings.Repeat("x", 8<<10), emulator.SecretOptions{})
	f := env.fetcher(Options{CacheTTL: time.Minute, MaxCachedBytes: 4 << 10})
	for _, c := range []struct {
		name string
		gets int
	}{{"small", 1}, {"large", 3}} {
		env.e.ResetRequests()
		req := env.request(t, Object{Name: c.name, Type: TypeSecret})
		for range 3 {
			res, err := f.Fetch(ctx, req)
			require.NoError(t, err)
			require.Len(t, res.Files, 1)
		}
		assert.Equal(t, c.gets, env.kvCount(http.StatusOK), "%s: GETs for three mounts", c.name)
	}
}

func BenchmarkObjectCacheHit(b *testing.B) {
	c := newObjectCache(time.Hour, DefaultMaxCachedObjects, DefaultMaxCachedBytes)
	keys := make([]objectKey, 1000)
	for i := range keys {
		keys[i] = secretKey(strconv.Itoa(i))
		getObject(b, c, keys[i], &cachedObject{content: make([]byte, 2000)})
	}
	ctx := context.Background()
	fetch := func(context.Context) (*cachedObject, error) { return nil, errors.New("not cached") }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := c.get(ctx, keys[i%len(keys)], fetch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkObjectCacheInsertEvicting stores into a full cache: every store
// evicts the least recently used entry. The miss case adds what a miss
// costs around the store (singleflight, the key's string).
func BenchmarkObjectCacheInsertEvicting(b *testing.B) {
	setup := func(b *testing.B) (*objectCache, []objectKey, *cachedObject) {
		o := &cachedObject{content: make([]byte, 2000)}
		keys := make([]objectKey, 4000)
		for i := range keys {
			keys[i] = secretKey(strconv.Itoa(i))
		}
		// Room for 1000 entries: each store of the rotation evicts one.
		c := newObjectCache(time.Hour, DefaultMaxCachedObjects, 1000*entrySize(keys[0], o))
		for _, k := range keys[:1000] {
			c.store(k, o)
		}
		b.ReportAllocs()
		b.ResetTimer()
		return c, keys, o
	}
	b.Run("store", func(b *testing.B) {
		c, keys, o := setup(b)
		for i := 0; b.Loop(); i++ {
			c.store(keys[(i+1000)%len(keys)], o)
		}
		if len(c.entries) > 1000 {
			b.Fatalf("%d entries", len(c.entries))
		}
	})
	b.Run("miss", func(b *testing.B) {
		c, keys, o := setup(b)
		ctx := context.Background()
		fetch := func(context.Context) (*cachedObject, error) { return o, nil }
		for i := 0; b.Loop(); i++ {
			if _, err := c.get(ctx, keys[(i+1000)%len(keys)], fetch); err != nil {
				b.Fatal(err)
			}
		}
	})
}
