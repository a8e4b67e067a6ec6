package keyvault

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

func TestObjectCacheIsBounded(t *testing.T) {
	c := newObjectCache(time.Minute, 2)
	ctx := context.Background()
	for i, name := range []string{"a", "b", "c"} {
		_, err := c.get(ctx, objectKey{name: name}, func(context.Context) (*cachedObject, error) {
			return &cachedObject{version: name}, nil
		})
		require.NoError(t, err, i)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	assert.Len(t, c.entries, 2)
}

// A caller that found the entry expired, and reaches the fetch only after
// another caller's fetch of the same key has finished and stored a fresh
// entry, takes that entry: one fetch per key per expiry however the
// callers are scheduled. (Under load, on a node republishing many volumes
// at once, the second fetch was a second Key Vault GET.)
func TestObjectCacheFetchesOncePerExpiry(t *testing.T) {
	c := newObjectCache(time.Minute, 10)
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
