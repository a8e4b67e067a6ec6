package imds

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kvnode/kvnode/pkg/tokencache"
)

// FuzzAppendJSONString checks nmi's hand-written JSON string encoder
// against encoding/json: the same bytes for any input, valid UTF-8 or not.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.sig", `quote " backslash \ <tag> & amp`,
		"ctl \x00\x01\x1f\x7f", "line\u2028sep\u2029", "bad \xff\xfe utf8 \xc3", "émoji 😀", "https://vault.azure.net"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendJSONString(%q) = %s, encoding/json: %s", s, got, want)
		}
	})
}

// FuzzTokenAnswer: a whole token answer, whatever the token, resource and
// client ID, is valid JSON that decodes to exactly those values.
func FuzzTokenAnswer(f *testing.F) {
	f.Add("eyJ0eXAiOiJKV1QifQ.e30.sig", "https://vault.azure.net", "11111111-2222-4333-8444-555555555555")
	f.Add("\"}", "<x>&", "\xff")
	f.Fuzz(func(t *testing.T, token, resource, clientID string) {
		now := time.Unix(1_800_000_000, 0)
		tok := tokencache.Token{AccessToken: token, ExpiresOn: now.Add(time.Hour)}
		var answer map[string]string
		if err := json.Unmarshal(appendToken(nil, tok, resource, clientID, now), &answer); err != nil {
			t.Fatalf("not JSON: %v", err)
		}
		valid := func(s string) string {
			b, _ := json.Marshal(s)
			var out string
			_ = json.Unmarshal(b, &out)
			return out
		}
		if answer["access_token"] != valid(token) || answer["resource"] != valid(resource) {
			t.Fatalf("answer %v does not carry the token and resource", answer)
		}
		if answer["token_type"] != "Bearer" || answer["expires_in"] == "" {
			t.Fatalf("answer %v", answer)
		}
	})
}

// FuzzParseQuery: nmi's strict query parser never accepts what the
// standard parser reads differently: an accepted query has unique
// parameters, and the api-version and resource it reports are what
// net/url reads. With a valueMemo that has seen other queries, it reads
// every query as it does without one.
func FuzzParseQuery(f *testing.F) {
	for _, q := range []string{"api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
		"api-version=2018-02-01&resource=x&resourc%65=y", "resource=a;b", "client_id=1&object_id=2", "%zz=1", "a=1&&b=2&resource=%2B+",
		"resource=https%3A%2F%2Fvault.azure.net&resource=https%3A%2F%2Fvault.azure.net", "resource=%2", "msi_res_id=%2Fsubscriptions%2Fs&mi_res_id=%2Fx"} {
		f.Add(q)
	}
	var values valueMemo
	f.Fuzz(func(t *testing.T, raw string) {
		q, rerr := parseQuery(raw, nil)
		for range 2 {
			mq, mrerr := parseQuery(raw, &values)
			if mq != q || (mrerr == nil) != (rerr == nil) || (rerr != nil && *mrerr != *rerr) {
				t.Fatalf("%q: with a memo %+v %+v, without %+v %+v", raw, mq, mrerr, q, rerr)
			}
		}
		if rerr != nil {
			if rerr.status != 400 || rerr.code == "" || rerr.desc == "" {
				t.Fatalf("refusal %+v", rerr)
			}
			return
		}
		std, err := url.ParseQuery(raw)
		if err != nil {
			t.Fatalf("accepted %q that net/url refuses: %v", raw, err)
		}
		for k, vs := range std {
			if len(vs) > 1 && k != "" {
				t.Fatalf("accepted %q with %q given %d times", raw, k, len(vs))
			}
		}
		if q.apiVersion != first(std["api-version"]) || q.resource != first(std["resource"]) {
			t.Fatalf("%q: read api-version %q resource %q, net/url %v", raw, q.apiVersion, q.resource, std)
		}
		if strings.Contains(raw, ";") {
			t.Fatalf("accepted %q with a ';'", raw)
		}
	})
}

func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}
