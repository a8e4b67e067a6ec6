package tokencache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clock is a manual clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// countingSource issues numbered tokens living for life from clk's now.
type countingSource struct {
	clk   *clock
	life  time.Duration
	calls atomic.Int64
	// hook, when set, runs before each issue and may fail it.
	hook func(ctx context.Context, n int64, key Key) error
}

func (s *countingSource) Token(ctx context.Context, key Key) (Token, error) {
	n := s.calls.Add(1)
	if s.hook != nil {
		if err := s.hook(ctx, n, key); err != nil {
			return Token{}, err
		}
	}
	now := s.clk.Now()
	return Token{AccessToken: fmt.Sprintf("%s/%s#%d", key.Identity, key.Resource, n), ExpiresOn: now.Add(s.life), NotBefore: now}, nil
}

var key1 = Key{Identity: "id-1", Resource: "https://vault.azure.net"}

func TestGetCachesAfterOneUpstreamCall(t *testing.T) {
	clk := newClock()
	src := &countingSource{clk: clk, life: time.Hour}
	c := New(src, Options{Now: clk.Now})
	ctx := context.Background()

	first, err := c.Get(ctx, key1)
	require.NoError(t, err)
	second, err := c.Get(ctx, key1)
	require.NoError(t, err)
	assert.Equal(t, first, second)
	assert.EqualValues(t, 1, src.calls.Load())

	other, err := c.Get(ctx, Key{Identity: "id-1", Resource: "https://management.azure.com"})
	require.NoError(t, err)
	assert.NotEqual(t, first.AccessToken, other.AccessToken, "resource is part of the key")
	st := c.Stats()
	assert.Equal(t, Stats{Hits: 1, Misses: 2, UpstreamCalls: 2, Entries: 2}, st)
}

// 1,000 concurrent callers for one cold key make exactly one upstream call.
func TestConcurrentMissesShareOneUpstreamCall(t *testing.T) {
	const callers = 1000
	clk := newClock()
	var c *Cache
	src := &countingSource{clk: clk, life: time.Hour, hook: func(ctx context.Context, _ int64, _ Key) error {
		// Hold the call until every caller has missed and is waiting.
		for c.Stats().Misses < callers {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		return nil
	}}
	c = New(src, Options{Now: clk.Now})

	var wg sync.WaitGroup
	tokens := make([]Token, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tokens[i], errs[i] = c.Get(context.Background(), key1)
		}()
	}
	wg.Wait()
	for i := range callers {
		require.NoError(t, errs[i])
		require.Equal(t, tokens[0], tokens[i])
	}
	assert.EqualValues(t, 1, src.calls.Load())
	assert.EqualValues(t, 1, c.Stats().UpstreamCalls)
}

func TestNeverServesATokenCloseToExpiry(t *testing.T) {
	clk := newClock()
	src := &countingSource{clk: clk, life: 10 * time.Minute}
	c := New(src, Options{Now: clk.Now, MinRemaining: time.Minute})
	ctx := context.Background()

	first, err := c.Get(ctx, key1)
	require.NoError(t, err)
	clk.Advance(9*time.Minute + 30*time.Second) // 30 s left: less than MinRemaining
	second, err := c.Get(ctx, key1)
	require.NoError(t, err)
	assert.NotEqual(t, first.AccessToken, second.AccessToken)
	assert.True(t, second.ExpiresOn.After(clk.Now().Add(time.Minute)))
	assert.EqualValues(t, 2, src.calls.Load())

	clk.Advance(time.Hour) // long expired
	third, err := c.Get(ctx, key1)
	require.NoError(t, err)
	assert.True(t, third.ExpiresOn.After(clk.Now()))
}

func TestRefreshesAheadOfExpiryInTheBackground(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	src := &countingSource{clk: clk, life: time.Hour}
	src.hook = func(ctx context.Context, n int64, _ Key) error {
		if n == 2 {
			<-release // the refresh is slow; callers must not wait for it
		}
		return nil
	}
	c := New(src, Options{Now: clk.Now, RefreshBefore: 10 * time.Minute})
	ctx := context.Background()

	first, err := c.Get(ctx, key1)
	require.NoError(t, err)
	clk.Advance(49 * time.Minute)
	got, err := c.Get(ctx, key1)
	require.NoError(t, err)
	assert.Equal(t, first, got, "before the refresh point")
	assert.EqualValues(t, 1, src.calls.Load())

	clk.Advance(2 * time.Minute) // 9 minutes left: refresh starts
	for range 100 {
		got, err = c.Get(ctx, key1)
		require.NoError(t, err)
		assert.Equal(t, first, got, "the old token is served while the refresh runs")
	}
	close(release)
	require.Eventually(t, func() bool {
		got, err = c.Get(ctx, key1)
		return err == nil && got != first
	}, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 2, src.calls.Load(), "one refresh for all those callers")
	assert.EqualValues(t, 1, c.Stats().Refreshes)
}

func TestShortLivedTokensRefreshAtHalfLife(t *testing.T) {
	now := time.Unix(1000, 0)
	assert.Equal(t, now.Add(50*time.Minute), refreshAt(now.Add(time.Hour), now, 10*time.Minute))
	assert.Equal(t, now.Add(4*time.Minute), refreshAt(now.Add(8*time.Minute), now, 10*time.Minute))
}

func TestCallerWhoseContextEndsLeavesWithoutCancellingTheCall(t *testing.T) {
	clk := newClock()
	release := make(chan struct{})
	src := &countingSource{clk: clk, life: time.Hour, hook: func(ctx context.Context, _ int64, _ Key) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	c := New(src, Options{Now: clk.Now})

	patient := make(chan error, 1)
	go func() {
		_, err := c.Get(context.Background(), key1)
		patient <- err
	}()
	require.Eventually(t, func() bool { return src.calls.Load() == 1 }, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithCancel(context.Background())
	impatient := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, key1)
		impatient <- err
	}()
	require.Eventually(t, func() bool { return c.Stats().Misses == 2 }, 5*time.Second, time.Millisecond)
	cancel()
	assert.ErrorIs(t, <-impatient, context.Canceled)

	close(release)
	require.NoError(t, <-patient)
	_, err := c.Get(context.Background(), key1)
	require.NoError(t, err)
	assert.EqualValues(t, 1, src.calls.Load(), "the leaving caller did not cancel or repeat the upstream call")
}

func TestUpstreamFailureIsNotCached(t *testing.T) {
	clk := newClock()
	upstreamErr := errors.New("imds: 500")
	src := &countingSource{clk: clk, life: time.Hour, hook: func(_ context.Context, n int64, _ Key) error {
		if n == 1 {
			return upstreamErr
		}
		return nil
	}}
	c := New(src, Options{Now: clk.Now})

	_, err := c.Get(context.Background(), key1)
	assert.ErrorIs(t, err, upstreamErr)
	assert.Zero(t, c.Stats().Entries)
	tok, err := c.Get(context.Background(), key1)
	require.NoError(t, err)
	assert.NotEmpty(t, tok.AccessToken)
	assert.EqualValues(t, 2, src.calls.Load())
	assert.EqualValues(t, 1, c.Stats().UpstreamErrors)
}

func TestFailedRefreshKeepsServingAndBacksOff(t *testing.T) {
	clk := newClock()
	var failing atomic.Bool
	src := &countingSource{clk: clk, life: time.Hour, hook: func(context.Context, int64, Key) error {
		if failing.Load() {
			return errors.New("imds: 410 updating")
		}
		return nil
	}}
	c := New(src, Options{Now: clk.Now, RefreshBefore: 10 * time.Minute, RetryBackoff: 30 * time.Second})
	first, err := c.Get(context.Background(), key1)
	require.NoError(t, err)

	failing.Store(true)
	clk.Advance(55 * time.Minute)
	for range 1000 {
		got, err := c.Get(context.Background(), key1)
		require.NoError(t, err)
		require.Equal(t, first, got)
	}
	require.Eventually(t, func() bool { return c.Stats().UpstreamErrors == 1 }, 5*time.Second, time.Millisecond)
	for range 1000 {
		_, _ = c.Get(context.Background(), key1)
	}
	assert.EqualValues(t, 2, src.calls.Load(), "one failed refresh, then back-off")

	failing.Store(false)
	clk.Advance(31 * time.Second)
	_, _ = c.Get(context.Background(), key1)
	require.Eventually(t, func() bool {
		got, err := c.Get(context.Background(), key1)
		return err == nil && got != first
	}, 5*time.Second, time.Millisecond)
}

func TestShortLivedTokenFromSourceIsAnError(t *testing.T) {
	clk := newClock()
	src := &countingSource{clk: clk, life: 30 * time.Second}
	c := New(src, Options{Now: clk.Now, MinRemaining: time.Minute})
	_, err := c.Get(context.Background(), key1)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "less than 1m0s from now")
	assert.Zero(t, c.Stats().Entries)
}

func TestBoundedEvictsExpiredThenLeastRecentlyUsed(t *testing.T) {
	clk := newClock()
	src := &countingSource{clk: clk, life: time.Hour}
	c := New(src, Options{Now: clk.Now, MaxEntries: 3})
	ctx := context.Background()
	k := func(i int) Key { return Key{Identity: fmt.Sprintf("id-%d", i), Resource: "r"} }

	for i := range 3 {
		_, err := c.Get(ctx, k(i))
		require.NoError(t, err)
		clk.Advance(time.Second)
	}
	_, err := c.Get(ctx, k(0)) // k(1) is now the least recently used
	require.NoError(t, err)
	_, err = c.Get(ctx, k(3))
	require.NoError(t, err)
	assert.Equal(t, 3, c.Stats().Entries)
	assert.EqualValues(t, 1, c.Stats().Evictions)

	calls := src.calls.Load()
	for _, i := range []int{0, 2, 3} {
		_, err := c.Get(ctx, k(i))
		require.NoError(t, err)
	}
	assert.Equal(t, calls, src.calls.Load(), "k0, k2, k3 stayed")
	_, err = c.Get(ctx, k(1))
	require.NoError(t, err)
	assert.Equal(t, calls+1, src.calls.Load(), "k1 was evicted")
}

func TestUpstreamConcurrencyIsLimited(t *testing.T) {
	clk := newClock()
	var inFlight, peak atomic.Int64
	release := make(chan struct{})
	src := &countingSource{clk: clk, life: time.Hour, hook: func(context.Context, int64, Key) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		return nil
	}}
	c := New(src, Options{Now: clk.Now, UpstreamConcurrency: 5, UpstreamRate: 1000, UpstreamBurst: 1000})

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Get(context.Background(), Key{Identity: fmt.Sprint(i), Resource: "r"})
			assert.NoError(t, err)
		}()
	}
	require.Eventually(t, func() bool { return inFlight.Load() == 5 }, 5*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	assert.EqualValues(t, 5, peak.Load())
	assert.EqualValues(t, 20, src.calls.Load())
}

func TestUpstreamRateLimitAnswersBusy(t *testing.T) {
	clk := newClock()
	src := &countingSource{clk: clk, life: time.Hour}
	// A burst of two and a rate so low that a third call cannot fit within
	// the upstream timeout.
	c := New(src, Options{Now: clk.Now, UpstreamRate: 0.001, UpstreamBurst: 2, UpstreamTimeout: 100 * time.Millisecond})
	for i := range 2 {
		_, err := c.Get(context.Background(), Key{Identity: fmt.Sprint(i)})
		require.NoError(t, err)
	}
	_, err := c.Get(context.Background(), Key{Identity: "third"})
	assert.ErrorIs(t, err, ErrUpstreamBusy)
	assert.EqualValues(t, 2, src.calls.Load())
}
