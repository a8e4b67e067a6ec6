package imds

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/pkg/tokencache"
)

// appendToken appends IMDS's token answer, built afresh, expires_in counted
// from now.
func appendToken(b []byte, tok tokencache.Token, resource, clientID string, now time.Time) []byte {
	return newTokenAnswer(tok, resource, clientID, false).appendTo(b, tok.ExpiresOn, now)
}

// wantAnswer is the token answer as encoding/json writes it: the bytes the
// server must send.
func wantAnswer(t testing.TB, tok tokencache.Token, resource, clientID string, host bool, now time.Time) string {
	t.Helper()
	expiresIn := int64(tok.ExpiresOn.Sub(now) / time.Second)
	if expiresIn < 0 {
		expiresIn = 0
	}
	nbf := tok.NotBefore
	if nbf.IsZero() {
		nbf = now
	}
	type imdsAnswer struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		ExpiresIn    string `json:"expires_in"`
		ExpiresOn    string `json:"expires_on"`
		NotBefore    string `json:"not_before"`
		Resource     string `json:"resource"`
		TokenType    string `json:"token_type"`
		ClientID     string `json:"client_id"`
	}
	var v any = imdsAnswer{
		AccessToken: tok.AccessToken, ExpiresIn: fmt.Sprint(expiresIn), ExpiresOn: fmt.Sprint(tok.ExpiresOn.Unix()),
		NotBefore: fmt.Sprint(nbf.Unix()), Resource: resource, TokenType: "Bearer", ClientID: clientID,
	}
	if host {
		v = struct {
			Token    any    `json:"token"`
			ClientID string `json:"clientid"`
		}{v, clientID}
	}
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// memoAnswer is the answer from m for tok as of now.
func memoAnswer(m *answerMemo, tok tokencache.Token, resource, clientID string, host bool, now time.Time) string {
	return string(m.answer(tok, resource, clientID, host, now).appendTo(nil, tok.ExpiresOn, now))
}

// TestTokenAnswerBytes: answers from the memo, first built and then reused,
// are byte for byte what encoding/json writes, for either endpoint, with
// and without a NotBefore, escaped or not, expired or not.
func TestTokenAnswerBytes(t *testing.T) {
	now := time.Unix(1_800_000_000, 500_000_000)
	var memo answerMemo
	for _, tok := range []tokencache.Token{
		{AccessToken: "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.sig-_", ExpiresOn: now.Add(time.Hour), NotBefore: now.Add(-5 * time.Minute)},
		{AccessToken: "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.sig-_", ExpiresOn: now.Add(90 * time.Minute)},
		{AccessToken: `quote " backslash \ <tag> & ctl ` + "\x00\x1f bad \xff line\u2028", ExpiresOn: now.Add(1500 * time.Millisecond)},
		{AccessToken: "expired", ExpiresOn: now.Add(-time.Minute), NotBefore: now.Add(-time.Hour)},
		{AccessToken: "", ExpiresOn: now.Add(time.Hour)},
	} {
		for _, resource := range []string{"https://vault.azure.net", `api://app<&>"x"/é`, ""} {
			for _, host := range []bool{false, true} {
				want := wantAnswer(t, tok, resource, idA.ClientID, host, now)
				for i := range 2 {
					require.Equal(t, want, memoAnswer(&memo, tok, resource, idA.ClientID, host, now), "token %q resource %q host %v, use %d", tok.AccessToken, resource, host, i)
				}
				// Later, only the clock's fields change.
				later := now.Add(61 * time.Second)
				require.Equal(t, wantAnswer(t, tok, resource, idA.ClientID, host, later), memoAnswer(&memo, tok, resource, idA.ClientID, host, later))
			}
		}
	}
	tok := tokencache.Token{AccessToken: "t", ExpiresOn: now.Add(time.Hour)}
	assert.Equal(t, wantAnswer(t, tok, "r", "c", false, now), string(appendToken(nil, tok, "r", "c", now)))
}

// TestAnswerMemoRefreshedToken: a token that differs from the one an answer
// was built from in any field the answer carries gets an answer of its own,
// whichever part of it differs: a refreshed token is never answered with
// the old one's bytes, nor the old one (another service account's, say)
// with the new one's.
func TestAnswerMemoRefreshedToken(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	end := strings.Repeat("s", tokenEndLen)
	old := tokencache.Token{AccessToken: "header.claims-1." + end, ExpiresOn: now.Add(time.Hour), NotBefore: now.Add(-time.Minute)}
	for _, tc := range []struct {
		name  string
		fresh func(tokencache.Token) tokencache.Token
	}{
		{"another token", func(t tokencache.Token) tokencache.Token { t.AccessToken = "header.claims-2.other-signature"; return t }},
		{"same end", func(t tokencache.Token) tokencache.Token { t.AccessToken = "header.claims-2." + end; return t }},
		{"longer, same end", func(t tokencache.Token) tokencache.Token { t.AccessToken = "header.claims-22." + end; return t }},
		{"new expiry", func(t tokencache.Token) tokencache.Token { t.ExpiresOn = t.ExpiresOn.Add(time.Hour); return t }},
		{"new not before", func(t tokencache.Token) tokencache.Token { t.NotBefore = t.NotBefore.Add(time.Second); return t }},
		{"no not before", func(t tokencache.Token) tokencache.Token { t.NotBefore = time.Time{}; return t }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var memo answerMemo
			fresh := tc.fresh(old)
			for _, host := range []bool{false, true} {
				for range 2 {
					for _, tok := range []tokencache.Token{old, fresh, fresh, old} {
						require.Equal(t, wantAnswer(t, tok, "r", "c", host, now), memoAnswer(&memo, tok, "r", "c", host, now))
					}
				}
			}
		})
	}
}

// swappableTokens is a TokenSource whose token can be replaced, standing in
// for a cache whose entry is refreshed. Every identity and resource gets
// the same token, the worst case for telling answers apart.
type swappableTokens struct {
	mu  sync.Mutex
	tok tokencache.Token
}

func (s *swappableTokens) Token(context.Context, podauth.Pod, podauth.Identity, string) (tokencache.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tok, nil
}

func (s *swappableTokens) set(tok tokencache.Token) {
	s.mu.Lock()
	s.tok = tok
	s.mu.Unlock()
}

// swappableWorld is the handler tests' world with a swappableTokens.
func swappableWorld(t *testing.T) (*testWorld, *swappableTokens) {
	t.Helper()
	w := newTestWorld(t, nil)
	tokens := &swappableTokens{tok: tokencache.Token{AccessToken: "first." + strings.Repeat("x", 2000), ExpiresOn: fixedNow.Add(time.Hour)}}
	srv, err := New(Config{Pods: w.srv.pods, Bindings: w.srv.bindings, Tokens: tokens, Now: w.srv.now})
	require.NoError(t, err)
	w.srv = srv
	return w, tokens
}

// serveDirect serves one request and returns its status and body.
func serveDirect(srv *Server, remote, target string, hdr http.Header) (int, string) {
	rec := &recordingWriter{h: http.Header{}}
	srv.ServeHTTP(rec, &http.Request{
		Method: http.MethodGet, RequestURI: target, Header: hdr, RemoteAddr: remote + ":40000",
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	})
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.status, rec.body.String()
}

type recordingWriter struct {
	h      http.Header
	status int
	body   strings.Builder
}

func (r *recordingWriter) Header() http.Header         { return r.h }
func (r *recordingWriter) WriteHeader(status int)      { r.status = status }
func (r *recordingWriter) Write(b []byte) (int, error) { return r.body.Write(b) }

// TestRefreshedTokenServed: once the token source hands out a new token,
// the next answer carries it.
func TestRefreshedTokenServed(t *testing.T) {
	w, tokens := swappableWorld(t)
	target := TokenPath + "?" + goodQuery
	md := http.Header{"Metadata": {"true"}}
	for _, tok := range []tokencache.Token{
		tokens.tok,
		{AccessToken: "second." + strings.Repeat("x", 2000), ExpiresOn: fixedNow.Add(2 * time.Hour)},
		{AccessToken: "third." + strings.Repeat("x", 2000), ExpiresOn: fixedNow.Add(2 * time.Hour)},
	} {
		tokens.set(tok)
		for range 2 {
			status, body := serveDirect(w.srv, podIP, target, md)
			require.Equal(t, http.StatusOK, status, body)
			require.Equal(t, wantAnswer(t, tok, "https://vault.azure.net", idA.ClientID, false, fixedNow), body)
		}
	}
}

// TestAnswersKeptApart: with one token for every identity and resource,
// each answer still names the identity and resource it was asked for, on
// either endpoint, however the requests interleave.
func TestAnswersKeptApart(t *testing.T) {
	w, tokens := swappableWorld(t)
	md := http.Header{"Metadata": {"true"}}
	type req struct {
		remote, target string
		hdr            http.Header
		resource       string
		clientID       string
		host           bool
	}
	var reqs []req
	for _, resource := range []string{"https://vault.azure.net", "https://storage.azure.com/"} {
		q := "api-version=2018-02-01&resource=" + strings.NewReplacer(":", "%3A", "/", "%2F").Replace(resource)
		for _, id := range []podauth.Identity{idA, idC} {
			reqs = append(reqs, req{multiIP, TokenPath + "?" + q + "&client_id=" + id.ClientID, md, resource, id.ClientID, false})
		}
		reqs = append(reqs,
			req{podIP, TokenPath + "?" + q, md, resource, idA.ClientID, false},
			req{otherIP, TokenPath + "?" + q, md, resource, idB.ClientID, false},
			req{"127.0.0.1", HostTokenPath + "?" + q, http.Header{podNamespaceHeader: {"default"}, podNameHeader: {"other"}}, resource, idB.ClientID, true},
			req{"127.0.0.1", HostTokenPath + "?" + q, http.Header{podNamespaceHeader: {"default"}, podNameHeader: {"app"}}, resource, idA.ClientID, true},
		)
	}
	for round := range 3 {
		for i := range reqs {
			r := reqs[(i*7+round)%len(reqs)]
			status, body := serveDirect(w.srv, r.remote, r.target, r.hdr)
			require.Equal(t, http.StatusOK, status, body)
			require.Equal(t, wantAnswer(t, tokens.tok, r.resource, r.clientID, r.host, fixedNow), body, "%s from %s", r.target, r.remote)
		}
	}
	distinct := map[answerKey]bool{}
	for _, r := range reqs {
		distinct[answerKey{resource: r.resource, clientID: r.clientID, host: r.host}] = true
	}
	assert.Equal(t, len(distinct), w.srv.answers.len(), "one answer per identity, resource and endpoint")
}

// TestAnswerMemoBounded: the memo holds at most maxAnswers answers. Full,
// it drops the answers of expired tokens and keeps the others; full of live
// tokens, it starts over.
func TestAnswerMemoBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok := func(name string, i int, exp time.Time) tokencache.Token {
		return tokencache.Token{AccessToken: fmt.Sprintf("%s-%06d", name, i), ExpiresOn: exp}
	}
	var memo answerMemo
	for i := range maxAnswers + 100 {
		memoAnswer(&memo, tok("live", i, now.Add(time.Hour)), "r", "c", false, now)
		require.LessOrEqual(t, memo.len(), maxAnswers)
	}
	assert.Equal(t, 100, memo.len(), "full of live tokens, the memo started over")

	memo = answerMemo{}
	for i := range maxAnswers / 2 {
		memoAnswer(&memo, tok("short", i, now.Add(time.Hour)), "r", "c", false, now)
		memoAnswer(&memo, tok("long", i, now.Add(3*time.Hour)), "r", "c", false, now)
	}
	require.Equal(t, maxAnswers, memo.len())
	later := now.Add(2 * time.Hour)
	long := tok("long", 7, now.Add(3*time.Hour))
	kept := memo.answer(long, "r", "c", false, later)
	memoAnswer(&memo, tok("new", 0, later.Add(time.Hour)), "r", "c", false, later)
	assert.Equal(t, maxAnswers/2+1, memo.len(), "the expired tokens' answers went, the others stayed")
	assert.Same(t, kept, memo.answer(long, "r", "c", false, later))
}

// TestAnswerMemoDropsExpired: once a token has expired, its answer goes
// when the memo next adds one, full or not.
func TestAnswerMemoDropsExpired(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var memo answerMemo
	old := tokencache.Token{AccessToken: "old", ExpiresOn: now.Add(time.Hour)}
	memoAnswer(&memo, old, "r", "c", false, now)
	memoAnswer(&memo, old, "r", "c", true, now)
	// The refresh, ahead of expiry: both tokens are live.
	refresh := now.Add(50 * time.Minute)
	fresh := tokencache.Token{AccessToken: "fresh", ExpiresOn: refresh.Add(time.Hour)}
	memoAnswer(&memo, fresh, "r", "c", false, refresh)
	assert.Equal(t, 3, memo.len())
	// Another token, once the old one has expired.
	next := now.Add(90 * time.Minute)
	memoAnswer(&memo, tokencache.Token{AccessToken: "next", ExpiresOn: next.Add(time.Hour)}, "r2", "c", false, next)
	assert.Equal(t, 2, memo.len())
	assert.Equal(t, wantAnswer(t, fresh, "r", "c", false, next), memoAnswer(&memo, fresh, "r", "c", false, next))
}

// TestAnswerMemoConcurrent: concurrent answers for tokens that share a slot
// and for other keys are each the right bytes (run with -race).
func TestAnswerMemoConcurrent(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	end := strings.Repeat("e", tokenEndLen)
	toks := []tokencache.Token{
		{AccessToken: "one." + end, ExpiresOn: now.Add(time.Hour)},
		{AccessToken: "two." + end, ExpiresOn: now.Add(time.Hour)},
		{AccessToken: "three." + end, ExpiresOn: now.Add(2 * time.Hour), NotBefore: now},
	}
	var memo answerMemo
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				tok := toks[(g+i)%len(toks)]
				resource := []string{"r1", "r2"}[i%2]
				want := wantAnswer(t, tok, resource, "c", g%2 == 0, now)
				if got := memoAnswer(&memo, tok, resource, "c", g%2 == 0, now); got != want {
					errs <- got + " != " + want
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestValueMemo: the memo decodes as net/url does, never keeps what did
// not decode, and stays within its bounds.
func TestValueMemo(t *testing.T) {
	var values valueMemo
	for range 2 {
		v, err := values.unescape("https%3A%2F%2Fvault.azure.net")
		require.NoError(t, err)
		assert.Equal(t, "https://vault.azure.net", v)
		_, err = values.unescape("bad%zz")
		require.Error(t, err)
	}
	assert.Len(t, values.values, 1)
	long := strings.Repeat("%41", maxMemoValueLen/3+1)
	v, err := values.unescape(long)
	require.NoError(t, err)
	assert.Equal(t, strings.Repeat("A", maxMemoValueLen/3+1), v)
	assert.Len(t, values.values, 1, "a long value is not kept")
	for i := range 3 * maxMemoValues {
		v, err := values.unescape(fmt.Sprintf("v%%2F%d", i))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("v/%d", i), v)
		require.LessOrEqual(t, len(values.values), maxMemoValues)
	}
}

// FuzzTokenAnswerBytes: whatever the token, resource, client ID, times and
// endpoint, an answer from a memo that has seen other answers is what
// encoding/json writes.
func FuzzTokenAnswerBytes(f *testing.F) {
	f.Add("eyJ0eXAiOiJKV1QifQ.e30.sig", "https://vault.azure.net", "11111111-2222-4333-8444-555555555555", int64(3_600_000), int64(-300_000), false, false)
	f.Add("\"}", "<x>&", "\xff", int64(-5), int64(0), true, true)
	var memo answerMemo
	f.Fuzz(func(t *testing.T, token, resource, clientID string, expiresInMs, notBeforeMs int64, noNotBefore, host bool) {
		now := time.Unix(1_800_000_000, 123_456_789)
		tok := tokencache.Token{AccessToken: token, ExpiresOn: now.Add(time.Duration(expiresInMs) * time.Millisecond)}
		if !noNotBefore {
			tok.NotBefore = now.Add(time.Duration(notBeforeMs) * time.Millisecond)
		}
		want := wantAnswer(t, tok, resource, clientID, host, now)
		for range 2 {
			if got := memoAnswer(&memo, tok, resource, clientID, host, now); got != want {
				t.Fatalf("memo answer %s, encoding/json %s", got, want)
			}
		}
	})
}
