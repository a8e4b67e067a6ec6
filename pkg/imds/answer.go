package imds

import (
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvnode/kvnode/pkg/tokencache"
)

// A token answer is almost entirely the same from one request to the next:
// only expires_in (and not_before, for a token without one) depends on the
// clock. Escaping a 2 KB access token was most of a cache hit's cost, so
// the rest of the answer is encoded once per token and kept in an
// answerMemo.

// tokenAnswer is a token answer with everything but the clock-dependent
// fields encoded. It never changes once built.
type tokenAnswer struct {
	// What buf was built from besides the key: encodes compares these with
	// the token of every request before the bytes are used.
	accessToken string
	expiresOn   int64 // Unix seconds
	notBefore   int64 // Unix seconds, when !nbNow
	nbNow       bool  // the token has no NotBefore: not_before is the answer's time

	// buf is the answer without the value of expires_in, which goes at
	// expiresInAt, nor, when nbNow, that of not_before, at notBeforeAt.
	buf                      []byte
	expiresInAt, notBeforeAt int
}

// newTokenAnswer encodes IMDS's token answer (host false) or /host/token/'s
// (aad-pod-identity's {"token":{...},"clientid":"..."}): every value a JSON
// string, in the order IMDS documents, plus client_id (which IMDS adds and
// clients tolerate).
func newTokenAnswer(tok tokencache.Token, resource, clientID string, host bool) *tokenAnswer {
	a := &tokenAnswer{
		accessToken: tok.AccessToken,
		expiresOn:   tok.ExpiresOn.Unix(),
		nbNow:       tok.NotBefore.IsZero(),
	}
	if !a.nbNow {
		a.notBefore = tok.NotBefore.Unix()
	}
	// Room for the fields, unescaped, and the numbers; escaping grows it.
	b := make([]byte, 0, len(tok.AccessToken)+len(resource)+2*len(clientID)+192)
	if host {
		b = append(b, `{"token":`...)
	}
	b = append(b, `{"access_token":`...)
	b = appendJSONString(b, tok.AccessToken)
	b = append(b, `,"refresh_token":"","expires_in":"`...)
	a.expiresInAt = len(b)
	b = append(b, `","expires_on":"`...)
	b = strconv.AppendInt(b, a.expiresOn, 10)
	b = append(b, `","not_before":"`...)
	if a.nbNow {
		a.notBeforeAt = len(b)
	} else {
		b = strconv.AppendInt(b, a.notBefore, 10)
	}
	b = append(b, `","resource":`...)
	b = appendJSONString(b, resource)
	b = append(b, `,"token_type":"Bearer","client_id":`...)
	b = appendJSONString(b, clientID)
	b = append(b, '}')
	if host {
		b = append(b, `,"clientid":`...)
		b = appendJSONString(b, clientID)
		b = append(b, '}')
	}
	a.buf = b
	return a
}

// encodes reports whether a was built from tok. Comparing the access token
// is cheap when it is the very string a was built from (the cache hands out
// the one it holds): string comparison returns early on the same pointer.
func (a *tokenAnswer) encodes(tok tokencache.Token) bool {
	return a.accessToken == tok.AccessToken && a.expiresOn == tok.ExpiresOn.Unix() &&
		a.nbNow == tok.NotBefore.IsZero() && (a.nbNow || a.notBefore == tok.NotBefore.Unix())
}

// appendTo appends the answer as of now for a token that a encodes.
// expiresOn is that token's own rather than a's whole seconds: expires_in
// counts to its exact instant (by the monotonic clock when both times have
// a reading).
func (a *tokenAnswer) appendTo(b []byte, expiresOn, now time.Time) []byte {
	expiresIn := int64(expiresOn.Sub(now) / time.Second)
	if expiresIn < 0 {
		expiresIn = 0
	}
	b = append(b, a.buf[:a.expiresInAt]...)
	b = strconv.AppendInt(b, expiresIn, 10)
	if !a.nbNow {
		return append(b, a.buf[a.expiresInAt:]...)
	}
	b = append(b, a.buf[a.expiresInAt:a.notBeforeAt]...)
	b = strconv.AppendInt(b, now.Unix(), 10)
	return append(b, a.buf[a.notBeforeAt:]...)
}

// answerKey says where an answer is kept. The access token is part of it
// (two service accounts federated to one application get different tokens
// for the same client ID and resource), but only by its end: a JWT ends in
// its signature, unique to the token, so hashing its last bytes tells
// tokens apart as well as hashing the whole 2 KB would. Answers whose
// tokens share an end and the rest of the key just take turns in one slot;
// a hit always compares the whole token (tokenAnswer.encodes).
type answerKey struct {
	resource, clientID string
	host               bool
	tokenEnd           string
}

// tokenEndLen is how many bytes of an access token answerKey holds.
const tokenEndLen = 32

func keyFor(tok tokencache.Token, resource, clientID string, host bool) answerKey {
	end := tok.AccessToken
	if len(end) > tokenEndLen {
		end = end[len(end)-tokenEndLen:]
	}
	return answerKey{resource: resource, clientID: clientID, host: host, tokenEnd: end}
}

// Bounds of an answerMemo. An answer holds about 4 KB (its bytes and the
// token, once the cache has let go of it), so maxAnswers is 4 MB at most,
// well above a node's identities times resources times two (a token and
// the one that replaced it).
const (
	maxAnswers = 1024
	// sweepEvery is how often, at most, adding an answer also drops those
	// of expired tokens (seconds). A refreshed token's answer usually takes
	// a new slot; the old one goes this way rather than when the memo
	// fills up.
	sweepEvery = 60
)

// answerMemo keeps the encoded answer of each token being served. An
// answer is only ever used for a request whose resource, client ID and
// endpoint are the ones it was built for, with the very token it was built
// from. An answer goes once its token has expired (the cache never serves
// it again), when another token takes its slot, or when the memo is full.
// It is safe for concurrent use; the zero value is ready.
type answerMemo struct {
	mu        sync.RWMutex
	answers   map[answerKey]*tokenAnswer
	nextSweep int64 // Unix seconds
}

// answer returns the encoded answer for tok, building it on first use.
func (m *answerMemo) answer(tok tokencache.Token, resource, clientID string, host bool, now time.Time) *tokenAnswer {
	k := keyFor(tok, resource, clientID, host)
	m.mu.RLock()
	a := m.answers[k]
	m.mu.RUnlock()
	if a != nil && a.encodes(tok) {
		return a
	}
	a = newTokenAnswer(tok, resource, clientID, host)
	// The key kept must not hold on to the request's memory (resource may
	// be a piece of its target); its tokenEnd is a piece of the token,
	// which a holds anyway.
	k = keyFor(tok, strings.Clone(resource), strings.Clone(clientID), host)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.makeRoomLocked(k, now.Unix())
	if m.answers == nil {
		m.answers = make(map[answerKey]*tokenAnswer)
	}
	m.answers[k] = a
	return a
}

// makeRoomLocked drops the answers of expired tokens, at most every
// sweepEvery or when the memo is full and k is new. When that frees less
// than a quarter of a full memo it drops every answer, so that a memo kept
// full by live tokens costs one scan per quarter of its size in new
// answers, not one per answer; rebuilding an answer costs what every
// answer cost before there was a memo.
func (m *answerMemo) makeRoomLocked(k answerKey, now int64) {
	_, replaces := m.answers[k]
	full := !replaces && len(m.answers) >= maxAnswers
	if !full && now < m.nextSweep {
		return
	}
	m.nextSweep = now + sweepEvery
	for k, a := range m.answers {
		if a.expiresOn <= now {
			delete(m.answers, k)
		}
	}
	if full && len(m.answers) > maxAnswers*3/4 {
		clear(m.answers)
	}
}

// len returns the number of answers held.
func (m *answerMemo) len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.answers)
}
