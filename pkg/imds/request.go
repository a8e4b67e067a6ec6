package imds

import (
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/kvnode/kvnode/pkg/podauth"
)

// The error descriptions shared with IMDS (and the emulator's IMDS in
// test/emulator/imds.go, which imitates it).
const (
	descNotFound        = "The requested path is not found on the instance metadata service"
	descNoMetadata      = "Required metadata header not specified"
	descForwarded       = "Request has X-Forwarded-For header; IMDS does not serve requests through a proxy"
	descOnlyGet         = "Only GET is allowed"
	descBadQuery        = "Query string is malformed"
	descNoAPIVersion    = "Required query variable 'api-version' is missing"
	descNoResource      = "Required audience parameter not specified"
	descSeveralSelected = "Only one of client_id, object_id, msi_res_id or mi_res_id may be specified"
	descAmbiguous       = "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
)

// minAPIVersion is the oldest api-version of the identity endpoint.
const minAPIVersion = "2018-02-01"

// maxQueryParams bounds the parameters of one request; real clients send at
// most four.
const maxQueryParams = 16

// selector names which identity a request asks for.
type selector uint8

const (
	selectNone selector = iota
	selectClientID
	selectObjectID
	selectResourceID // msi_res_id or mi_res_id
)

// tokenQuery is a token request's parameters.
type tokenQuery struct {
	apiVersion string
	resource   string
	sel        selector
	want       string // the value of the selecting parameter
}

// requestError is a refusal in IMDS's error shape.
type requestError struct {
	status int
	code   string
	desc   string
}

func badRequest(desc string) *requestError {
	return &requestError{status: http.StatusBadRequest, code: "invalid_request", desc: desc}
}

// parseQuery parses a raw query string as IMDS does, but strictly: a
// parameter may appear once (compared after unescaping, so "resourc%65" is
// "resource"), ';' is not a separator, and every escape must be valid.
// It does not allocate unless a key or value is escaped and not in values
// (which may be nil).
func parseQuery(raw string, values *valueMemo) (tokenQuery, *requestError) {
	var (
		q    tokenQuery
		seen [maxQueryParams]string
		n    int
	)
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		if part == "" {
			continue
		}
		if strings.IndexByte(part, ';') >= 0 {
			return q, badRequest(descBadQuery)
		}
		k, v, _ := strings.Cut(part, "=")
		key, err := values.unescape(k)
		if err != nil || key == "" {
			return q, badRequest(descBadQuery)
		}
		for _, s := range seen[:n] {
			if s == key {
				return q, badRequest("Duplicate query parameter '" + key + "'")
			}
		}
		if n == len(seen) {
			return q, badRequest("Too many query parameters")
		}
		seen[n] = key
		n++
		val, err := values.unescape(v)
		if err != nil {
			return q, badRequest(descBadQuery)
		}
		sel := selectNone
		switch key {
		case "api-version":
			q.apiVersion = val
		case "resource":
			q.resource = val
		case "client_id":
			sel = selectClientID
		case "object_id":
			sel = selectObjectID
		case "msi_res_id", "mi_res_id":
			sel = selectResourceID
		}
		if sel != selectNone && val != "" {
			if q.sel != selectNone {
				return q, badRequest(descSeveralSelected)
			}
			q.sel, q.want = sel, val
		}
	}
	return q, nil
}

// valueMemo remembers what escaped query components decode to. Clients
// send the same few escaped values on every request (azidentity's resource
// is "https%3A%2F%2Fvault.azure.net", an msi_res_id is an escaped ARM path),
// and decoding one was the only allocation of a cache hit. Decoding depends
// on the raw text alone and only components that decoded are kept, so a
// remembered result is exactly what decoding gives, refusals included. It
// is safe for concurrent use; the zero value is ready, and a nil memo
// decodes every time.
type valueMemo struct {
	mu     sync.RWMutex
	values map[string]string
}

// Bounds of a valueMemo: a pod sending ever new values only makes the memo
// start over. Longer components are decoded every time.
const (
	maxMemoValues   = 256
	maxMemoValueLen = 512
)

// unescape decodes a query component; it returns s itself when there is
// nothing to decode.
func (m *valueMemo) unescape(s string) (string, error) {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s, nil
	}
	if m == nil || len(s) > maxMemoValueLen {
		return url.QueryUnescape(s)
	}
	m.mu.RLock()
	v, ok := m.values[s]
	m.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := url.QueryUnescape(s)
	if err != nil {
		return v, err
	}
	m.mu.Lock()
	if len(m.values) >= maxMemoValues {
		clear(m.values)
	}
	if m.values == nil {
		m.values = make(map[string]string)
	}
	// s is a piece of the request's target, which the key must not keep.
	m.values[strings.Clone(s)] = v
	m.mu.Unlock()
	return v, nil
}

// validateTokenQuery checks what the IMDS token endpoint requires.
func validateTokenQuery(q *tokenQuery) *requestError {
	switch {
	case q.apiVersion == "":
		return badRequest(descNoAPIVersion)
	case !validAPIVersion(q.apiVersion):
		return badRequest("Invalid api-version '" + q.apiVersion + "'")
	}
	return validateResource(q.resource)
}

// validateResource checks the audience. Whether Entra ID knows it is for
// upstream to say; here it must be present and printable.
func validateResource(r string) *requestError {
	if r == "" {
		return badRequest(descNoResource)
	}
	if len(r) > 2048 {
		return &requestError{status: http.StatusBadRequest, code: "invalid_resource", desc: "Resource is too long"}
	}
	for i := 0; i < len(r); i++ {
		if c := r[i]; c <= ' ' || c == 0x7f {
			return &requestError{status: http.StatusBadRequest, code: "invalid_resource", desc: "Resource contains a space or a control character"}
		}
	}
	return nil
}

// validAPIVersion reports whether v is a date (YYYY-MM-DD) no older than
// minAPIVersion, as the emulator's IMDS accepts.
func validAPIVersion(v string) bool {
	if len(v) != len(minAPIVersion) {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if i == 4 || i == 7 {
			if c != '-' {
				return false
			}
		} else if c < '0' || c > '9' {
			return false
		}
	}
	return v >= minAPIVersion
}

// selectIdentity picks the bound identity a request names, or the only
// bound identity when it names none. Comparisons ignore case (GUIDs and ARM
// IDs are case-insensitive). A refusal never names another identity.
func selectIdentity(bound []podauth.Identity, q *tokenQuery) (podauth.Identity, *requestError) {
	if len(bound) == 0 {
		return podauth.Identity{}, &requestError{status: http.StatusForbidden, code: "invalid_request", desc: "No identity is bound to this pod"}
	}
	if q.sel == selectNone {
		if len(bound) > 1 {
			return podauth.Identity{}, badRequest(descAmbiguous)
		}
		return bound[0], nil
	}
	for i := range bound {
		var have string
		switch q.sel {
		case selectClientID:
			have = bound[i].ClientID
		case selectObjectID:
			have = bound[i].ObjectID
		case selectResourceID:
			have = bound[i].ResourceID
		}
		if have != "" && strings.EqualFold(have, q.want) {
			return bound[i], nil
		}
	}
	return podauth.Identity{}, &requestError{status: http.StatusForbidden, code: "invalid_request", desc: "The requested identity is not bound to this pod"}
}
