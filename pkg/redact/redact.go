// Package redact keeps credentials out of what kvnode logs and returns.
//
// Two things carry credentials into kvdriver: the CSI request (kubelet puts
// the nodePublishSecretRef Secret in its secrets and, with tokenRequests, the
// pod's service-account tokens in its volume context, where csi-lib-utils'
// protosanitizer does not look) and the FlexVolume options (the secretRef
// Secret under kubernetes.io/secret/). Request strips them from a request
// before it is logged; a Scrubber learns a request's credential values and
// removes them, and anything shaped like a JWT or a private key, from any
// text that leaves the process: log lines, gRPC status messages, FlexVolume
// results, events.
package redact

import (
	"encoding/base64"
	"encoding/json"
	"regexp"
	"sort"
	"strings"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Placeholder replaces a stripped value; it is protosanitizer's, so a log
// reader sees one marker for both.
const Placeholder = "***stripped***"

// ServiceAccountTokensKey is the volume context key under which kubelet
// passes the pod's service-account tokens (CSIDriver tokenRequests).
const ServiceAccountTokensKey = "csi.storage.k8s.io/serviceAccount.tokens"

// minSecretLen is the shortest value a Scrubber removes: shorter ones
// ("1", "ab") would mangle every message they occur in by chance and are no
// credential anyone should use.
const minSecretLen = 4

// sensitiveKeyWords mark a key (a volume attribute, an option) whose value
// is a credential; matched case-insensitively as substrings.
var sensitiveKeyWords = []string{"token", "password", "passwd", "credential", "secret", "apikey", "api_key", "privatekey", "private_key"}

// nonSensitiveKeys contain a sensitive word but name no credential.
var nonSensitiveKeys = map[string]bool{
	"secretproviderclass": true, // the class a CSI volume names
}

// SensitiveKey reports whether a volume attribute or option named key holds
// a credential, judged by its name.
func SensitiveKey(key string) bool {
	k := strings.ToLower(key)
	if nonSensitiveKeys[k] {
		return false
	}
	for _, w := range sensitiveKeyWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// Shapes of credentials found by their form wherever they occur: a JWT
// (service-account tokens, Entra ID access tokens: a base64url JSON header
// starting {" and two more segments) and a PEM private key block.
var (
	jwtShape = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*`)
	pemKey   = regexp.MustCompile(`(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)`)
)

// Shaped reports whether s holds something shaped like a credential.
func Shaped(s string) bool { return jwtShape.MatchString(s) || pemKey.MatchString(s) }

// volumeContextField is the CSI field kubelet fills from the pod's volume
// attributes and its own pod-info and token keys.
const volumeContextField = "volume_context"

// Request returns a request that prints without credentials: fields the CSI
// spec marks secret (protosanitizer), and in the volume context every value
// whose key names a credential or whose content is shaped like one. req is
// not changed. Use it where a request is logged.
func Request(req any) any {
	msg, ok := req.(proto.Message)
	if !ok {
		return protosanitizer.StripSecrets(req)
	}
	fd := msg.ProtoReflect().Descriptor().Fields().ByName(volumeContextField)
	if fd == nil || !fd.IsMap() || msg.ProtoReflect().Get(fd).Map().Len() == 0 {
		return protosanitizer.StripSecrets(req)
	}
	clone := proto.Clone(msg)
	m := clone.ProtoReflect().Mutable(fd).Map()
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		if SensitiveKey(k.String()) || Shaped(v.String()) {
			m.Set(k, protoreflect.ValueOfString(Placeholder))
		}
		return true
	})
	return protosanitizer.StripSecrets(clone)
}

// Map returns a copy of m with credential values replaced, for logging a
// map of attributes or options.
func Map(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if SensitiveKey(k) || Shaped(v) {
			v = Placeholder
		}
		out[k] = v
	}
	return out
}

// Scrubber removes known credential values, and credential-shaped text,
// from messages. The zero value removes only shaped text.
type Scrubber struct {
	values []string // longest first, so a value containing another goes whole
}

// Add makes s scrub value, and its standard and URL base64 forms (a
// message may carry either). Values shorter than four bytes are ignored.
func (s *Scrubber) Add(values ...string) {
	for _, v := range values {
		v = strings.TrimSpace(v)
		if len(v) < minSecretLen {
			continue
		}
		s.values = append(s.values, v,
			base64.StdEncoding.EncodeToString([]byte(v)),
			base64.RawURLEncoding.EncodeToString([]byte(v)))
	}
	sort.SliceStable(s.values, func(i, j int) bool { return len(s.values[i]) > len(s.values[j]) })
}

// AddMap adds every value of m whose key names a credential or that is
// shaped like one, and the tokens inside a service-account tokens value.
func (s *Scrubber) AddMap(m map[string]string) {
	for k, v := range m {
		if k == ServiceAccountTokensKey {
			s.Add(tokensIn(v)...)
		}
		if (SensitiveKey(k) && !IdentifierKey(k)) || Shaped(v) {
			s.Add(v)
		}
	}
}

// AddAll adds every value of m but the client ID, an identifier that error
// messages name usefully: for maps that hold credentials, such as a CSI
// request's secrets or a FlexVolume secretRef's keys.
func (s *Scrubber) AddAll(m map[string]string) {
	for k, v := range m {
		if k == ServiceAccountTokensKey {
			s.Add(tokensIn(v)...)
		}
		if IdentifierKey(k) {
			continue
		}
		s.Add(v)
	}
}

// IdentifierKey reports whether a Secret key names an identifier rather
// than a credential: clientid (any case, after any prefix such as
// kubernetes.io/secret/).
func IdentifierKey(key string) bool {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		key = key[i+1:]
	}
	return strings.EqualFold(key, "clientid")
}

// String returns msg with every known value and every credential-shaped
// substring replaced by Placeholder.
func (s *Scrubber) String(msg string) string {
	if s != nil {
		for _, v := range s.values {
			msg = strings.ReplaceAll(msg, v, Placeholder)
		}
	}
	msg = jwtShape.ReplaceAllString(msg, Placeholder)
	return pemKey.ReplaceAllString(msg, Placeholder)
}

// tokensIn returns the tokens of a service-account tokens value,
// {"<audience>":{"token":"...","expirationTimestamp":"..."}}, or nothing
// when it is not that shape.
func tokensIn(raw string) []string {
	var tokens map[string]struct {
		Token string `json:"token"`
	}
	if json.Unmarshal([]byte(raw), &tokens) != nil {
		return nil
	}
	out := make([]string, 0, len(tokens))
	for _, t := range tokens {
		out = append(out, t.Token)
	}
	return out
}
