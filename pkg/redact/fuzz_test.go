package redact

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// FuzzScrubber: a credential the scrubber knows never survives in a
// message, however it is surrounded, in plain or base64 form, and a
// credential-shaped token never survives either.
func FuzzScrubber(f *testing.F) {
	f.Add("client-secret-value", "error: client-secret-value was refused", "")
	f.Add("abcd", "xxabcdxx abcd", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
	f.Fuzz(func(t *testing.T, secret, message, token string) {
		secret = strings.TrimSpace(secret)
		var s Scrubber
		s.AddAll(map[string]string{"clientsecret": secret})
		s.AddMap(map[string]string{ServiceAccountTokensKey: `{"api://AzureADTokenExchange":{"token":` + quote(token) + `}}`})
		msg := message + secret + message + base64.StdEncoding.EncodeToString([]byte(secret)) + token
		out := s.String(msg)
		if len(secret) >= minSecretLen && !strings.Contains(Placeholder, secret) && strings.Contains(out, secret) {
			t.Fatalf("secret %q survives in %q", secret, out)
		}
		// A token reaches kvdriver inside JSON, so as valid UTF-8.
		if utf8.ValidString(token) && len(strings.TrimSpace(token)) >= minSecretLen && !strings.Contains(Placeholder, token) && strings.Contains(out, token) &&
			!strings.Contains(message+secret, token) {
			t.Fatalf("token %q survives in %q", token, out)
		}
		if jwtShape.MatchString(out) {
			t.Fatalf("a token-shaped string survives in %q", out)
		}
	})
}

// FuzzRequest: whatever kubelet puts in a volume context, the logged
// request carries neither the secrets nor the tokens.
func FuzzRequest(f *testing.F) {
	f.Add("csi.storage.k8s.io/serviceAccount.tokens", `{"api://AzureADTokenExchange":{"token":"opaque-token-123"}}`, "s3cret-value")
	f.Add("myPassword", "hunter2-hunter2", "x")
	f.Fuzz(func(t *testing.T, key, value, secret string) {
		req := &csipb.NodePublishVolumeRequest{
			Secrets:       map[string]string{"clientsecret": secret},
			VolumeContext: map[string]string{key: value, "secretProviderClass": "c"},
		}
		out := fmt.Sprint(Request(req))
		if len(secret) >= 8 && strings.Contains(out, secret) && !strings.Contains(out, `"`+secret) {
			return // the secret is also some other field's text
		}
		if (SensitiveKey(key) || Shaped(value)) && len(value) >= 8 && strings.Contains(out, value) && !strings.Contains(key, value) &&
			!strings.Contains(`"secretProviderClass":"c"`, value) {
			t.Fatalf("credential %q of %q logged: %s", value, key, out)
		}
	})
}

func quote(s string) string {
	b := strings.Builder{}
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' || r < 0x20 {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}
