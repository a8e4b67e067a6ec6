package keyvault

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/stretchr/testify/require"
)

// BenchmarkFetch5Objects measures a warm Fetch of a typical mount (three
// secrets, a key, a certificate) through the emulator, and reports it against
// one raw GET round trip of a secret over the same proxied connection pool:
// fetch/rawGET near 1 means the five GETs overlap fully and the SDK adds
// little; the upstream provider's serial, cold fetch costs about 21 round
// trips.
func BenchmarkFetch5Objects(b *testing.B) {
	env := newFetchEnv(b)
	require.NoError(b, env.e.Grant(testVault, env.app.ObjectID))
	// Lift the vault's throttle (4,000 per 10 s) out of the way.
	require.NoError(b, env.e.SetThrottle(testVault, 1<<20, time.Millisecond))
	objs := fiveObjects(b, env)
	f := env.fetcher(Options{})
	req := env.request(b, objs...)
	ctx := context.Background()

	// One raw GET, with a token from the same credential, averaged.
	tok, err := req.Credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}, TenantID: testTenant})
	require.NoError(b, err)
	rawGET := func(hc *http.Client) {
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, env.vaultURL+"secrets/s1/?api-version=7.6", nil)
		require.NoError(b, err)
		r.Header.Set("Authorization", "Bearer "+tok.Token)
		resp, err := hc.Do(r)
		require.NoError(b, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(b, http.StatusOK, resp.StatusCode)
	}
	rawTime := func(hc *http.Client, rounds int) time.Duration {
		rawGET(hc)
		start := time.Now()
		for range rounds {
			rawGET(hc)
		}
		return time.Since(start) / time.Duration(rounds)
	}
	raw := rawTime(env.hc, 200)
	// A transport that adds 2 ms to every Key Vault request, a short real
	// network round trip, to show what the parallel GETs save.
	rtt := &http.Client{Transport: &inflight{base: env.hc.Transport, delay: 2 * time.Millisecond}}
	rawRTT := rawTime(rtt, 50)

	run := func(b *testing.B, raw time.Duration, fetch func() error) {
		b.ReportAllocs()
		start := time.Now()
		n := 0
		for b.Loop() {
			if err := fetch(); err != nil {
				b.Fatal(err)
			}
			n++
		}
		perFetch := time.Since(start) / time.Duration(n)
		b.ReportMetric(float64(raw.Nanoseconds()), "rawGET-ns")
		b.ReportMetric(float64(perFetch)/float64(raw), "fetch/rawGET")
	}
	warm := func(f *Fetcher) func() error {
		if _, err := f.Fetch(ctx, req); err != nil {
			b.Fatal(err)
		}
		return func() error { _, err := f.Fetch(ctx, req); return err }
	}
	// warm: the cached clients, requests in parallel (the default).
	b.Run("warm", func(b *testing.B) { run(b, raw, warm(f)) })
	// warm-serial: the same with one request at a time.
	b.Run("warm-serial", func(b *testing.B) { run(b, raw, warm(env.fetcher(Options{MaxParallel: 1}))) })
	// The same two with 2 ms added to each round trip.
	withRTT := func(parallel int) *Fetcher {
		return NewFetcher(Options{ClientOptions: azcore.ClientOptions{Transport: rtt}, MaxParallel: parallel})
	}
	b.Run("warm-rtt2ms", func(b *testing.B) { run(b, rawRTT, warm(withRTT(0))) })
	b.Run("warm-serial-rtt2ms", func(b *testing.B) { run(b, rawRTT, warm(withRTT(1))) })
	// cold: a new Fetcher and credential per fetch, as the upstream provider
	// builds a credential and client per mount: challenges, discovery and a
	// token request every time.
	b.Run("cold", func(b *testing.B) {
		run(b, raw, func() error {
			r := req
			r.Credential = env.credential(b, env.app)
			_, err := env.fetcher(Options{}).Fetch(ctx, r)
			return err
		})
	})
}
