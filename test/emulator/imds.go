package emulator

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The instance metadata service's managed-identity token endpoint, as a VM
// (a Kubernetes node) with managed identities assigned sees it.

const (
	imdsTokenPath = "/metadata/identity/oauth2/token"
	// imdsRatePerSecond and imdsConcurrency are IMDS's documented limits for
	// the identity endpoint of one VM.
	imdsRatePerSecond = 20
	imdsConcurrency   = 5
	// imdsMinAPIVersion is the oldest api-version the identity endpoint takes.
	imdsMinAPIVersion = "2018-02-01"
)

var apiVersionPattern = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)

// Fault makes an emulated endpoint misbehave, for tests of retries and
// timeouts.
type Fault struct {
	// Status is the HTTP status to answer with; 0 answers normally (after
	// Latency). IMDS uses 410 while it is updating, 429 when throttling and
	// 500 on internal errors; clients retry 404, 410, 429 and 5xx.
	Status int
	// Count is how many requests the fault affects; 0 means until cleared.
	Count int
	// Latency delays the answer. A client that gives up first gets nothing.
	Latency time.Duration
	// Drop breaks the connection (HTTP/2: resets the stream) instead of
	// answering, after Latency: what a client sees of a service that is
	// unreachable or crashes mid-request. It is recorded as 444.
	Drop bool
}

func (f Fault) validate() error {
	switch {
	case f.Status != 0 && (f.Status < 400 || f.Status > 599):
		return fmt.Errorf("fault status %d is not an HTTP error status", f.Status)
	case f.Count < 0:
		return fmt.Errorf("fault count %d is negative", f.Count)
	case f.Latency < 0:
		return fmt.Errorf("fault latency %v is negative", f.Latency)
	case f.Drop && f.Status != 0:
		return errors.New("a fault that drops the connection has no status")
	case f.Status == 0 && f.Latency == 0 && !f.Drop:
		return errors.New("fault has neither a status, a latency nor a drop")
	}
	return nil
}

// faultQueue holds injected faults; the oldest active one applies.
type faultQueue struct {
	mu     sync.Mutex
	faults []*Fault
}

func (q *faultQueue) push(f Fault) {
	q.mu.Lock()
	q.faults = append(q.faults, &f)
	q.mu.Unlock()
}

func (q *faultQueue) clear() {
	q.mu.Lock()
	q.faults = nil
	q.mu.Unlock()
}

// take returns the fault that applies to the next request, consuming one of
// its count.
func (q *faultQueue) take() (Fault, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.faults) == 0 {
		return Fault{}, false
	}
	f := q.faults[0]
	if f.Count > 0 {
		f.Count--
		if f.Count == 0 {
			q.faults = q.faults[1:]
		}
	}
	return *f, true
}

// apply applies the next fault to a request. When it answered the request
// (with the fault's status, or not at all because the client went away while
// delayed) it returns the status recorded and true.
func (q *faultQueue) apply(w http.ResponseWriter, r *http.Request, writeErr func(http.ResponseWriter, int)) (int, bool) {
	f, ok := q.take()
	if !ok {
		return 0, false
	}
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return statusClientClosed, true
		}
	}
	if f.Drop {
		return statusDropped, true
	}
	if f.Status == 0 {
		return 0, false
	}
	writeErr(w, f.Status)
	return f.Status, true
}

// statusDropped is recorded for a request a fault answered by breaking
// the connection (nginx's 444).
const statusDropped = 444

// dropIfFaulted breaks the connection of a request recorded as dropped,
// once its record is kept: http.Server closes the connection (or resets
// the HTTP/2 stream) without writing an answer.
func dropIfFaulted(status int) {
	if status == statusDropped {
		panic(http.ErrAbortHandler)
	}
}

// statusClientClosed is recorded for a request whose client left before the
// answer (nginx's 499).
const statusClientClosed = 499

// imdsService answers plain-http requests for 169.254.169.254.
type imdsService struct {
	*core
	faults faultQueue

	mu       sync.Mutex
	assigned []string // client IDs of the identities assigned to the node, in order
	system   string   // client ID of the system-assigned identity, if any
	subID    string   // subscription of generated resource IDs
	rate     int      // requests admitted per second
	conc     int      // requests admitted at a time
	recent   []time.Time
	inflight int
}

func newIMDSService(c *core) *imdsService {
	return &imdsService{core: c, subID: newGUID(), rate: imdsRatePerSecond, conc: imdsConcurrency}
}

// AddManagedIdentity registers a user-assigned managed identity and assigns it
// to the node, so IMDS hands out tokens for it. p.TenantID is required; a
// missing ClientID or ObjectID is generated, and a missing ResourceID becomes
// /subscriptions/<sub>/resourcegroups/kvnode-emulator/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>.
// The returned Principal has every generated value.
func (e *Emulator) AddManagedIdentity(p Principal) (Principal, error) {
	if p.ClientID == "" {
		p.ClientID = newGUID()
	}
	if p.ResourceID == "" {
		p.ResourceID = fmt.Sprintf("/subscriptions/%s/resourcegroups/kvnode-emulator/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-%s",
			e.imds.subID, strings.SplitN(p.ClientID, "-", 2)[0])
	}
	p.Secret = ""
	p, err := e.dir.add(p)
	if err != nil {
		return Principal{}, fmt.Errorf("add managed identity: %w", err)
	}
	e.imds.mu.Lock()
	e.imds.assigned = append(e.imds.assigned, p.ClientID)
	e.imds.mu.Unlock()
	return p, nil
}

// SetSystemAssignedIdentity registers the node's system-assigned managed
// identity (it has no resource ID) and assigns it. IMDS serves it when a
// request names no identity. A missing ClientID or ObjectID is generated.
func (e *Emulator) SetSystemAssignedIdentity(p Principal) (Principal, error) {
	if p.ClientID == "" {
		p.ClientID = newGUID()
	}
	p.ResourceID, p.Secret = "", ""
	p, err := e.dir.add(p)
	if err != nil {
		return Principal{}, fmt.Errorf("set system-assigned identity: %w", err)
	}
	e.imds.mu.Lock()
	e.imds.system = p.ClientID
	e.imds.mu.Unlock()
	return p, nil
}

// AssignIdentity assigns an already registered managed identity to the node
// again after UnassignIdentity.
func (e *Emulator) AssignIdentity(clientID string) error {
	p, ok := e.dir.lookup(clientID)
	if !ok || p.ResourceID == "" {
		return fmt.Errorf("assign identity: no user-assigned managed identity with client ID %s", clientID)
	}
	e.imds.mu.Lock()
	defer e.imds.mu.Unlock()
	for _, id := range e.imds.assigned {
		if id == clientID {
			return nil
		}
	}
	e.imds.assigned = append(e.imds.assigned, clientID)
	return nil
}

// UnassignIdentity removes a managed identity from the node: IMDS answers
// "Identity not found" for it from then on. The identity stays registered in
// Entra ID.
func (e *Emulator) UnassignIdentity(clientID string) {
	e.imds.mu.Lock()
	defer e.imds.mu.Unlock()
	if e.imds.system == clientID {
		e.imds.system = ""
	}
	out := e.imds.assigned[:0]
	for _, id := range e.imds.assigned {
		if id != clientID {
			out = append(out, id)
		}
	}
	e.imds.assigned = out
}

// AssignedIdentities returns the client IDs of the managed identities assigned
// to the node, the system-assigned one first.
func (e *Emulator) AssignedIdentities() []string {
	e.imds.mu.Lock()
	defer e.imds.mu.Unlock()
	var out []string
	if e.imds.system != "" {
		out = append(out, e.imds.system)
	}
	return append(out, e.imds.assigned...)
}

// InjectIMDSFault makes the IMDS identity endpoint answer as f says until
// f.Count requests have been affected, or until ClearIMDSFaults when f.Count
// is 0. Faults queue: the first one still active applies.
func (e *Emulator) InjectIMDSFault(f Fault) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("inject IMDS fault: %w", err)
	}
	e.imds.faults.push(f)
	return nil
}

// ClearIMDSFaults removes every IMDS fault.
func (e *Emulator) ClearIMDSFaults() { e.imds.faults.clear() }

// ServeHTTP answers one IMDS request and records it.
func (s *imdsService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := Request{Service: ServiceIMDS, Host: IMDSHost, Method: r.Method, Path: r.URL.Path}
	rec.Status = s.route(w, r, &rec)
	s.rec.add(rec)
	s.logf("imds %s %s identity=%q -> %d", r.Method, r.URL.Path, rec.Identity, rec.Status)
	dropIfFaulted(rec.Status)
}

func (s *imdsService) route(w http.ResponseWriter, r *http.Request, rec *Request) int {
	if r.URL.Path != imdsTokenPath {
		return writeIMDSError(w, http.StatusNotFound, "not_found", "The requested path is not found on the instance metadata service")
	}
	if !s.admit() {
		w.Header().Set("Retry-After", "1")
		return writeIMDSError(w, http.StatusTooManyRequests, "too_many_requests", "Too many requests. The identity endpoint takes 20 requests per second and 5 at a time; retry after a short wait")
	}
	defer s.release()
	if st, done := s.faults.apply(w, r, writeIMDSFault); done {
		return st
	}
	if v := r.Header.Values("Metadata"); len(v) != 1 || v[0] != "true" {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Required metadata header not specified")
	}
	if len(r.Header.Values("X-Forwarded-For")) > 0 {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Request has X-Forwarded-For header; IMDS does not serve requests through a proxy")
	}
	if r.Method != http.MethodGet {
		return writeIMDSError(w, http.StatusMethodNotAllowed, "invalid_request", "Only GET is allowed")
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Query string is malformed")
	}
	for name, vs := range q {
		if len(vs) > 1 {
			return writeIMDSError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf("Duplicate query parameter '%s'", name))
		}
	}
	switch v := q.Get("api-version"); {
	case v == "":
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Required query variable 'api-version' is missing")
	case !apiVersionPattern.MatchString(v) || v < imdsMinAPIVersion:
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf("Invalid api-version '%s'", v))
	}
	resource := q.Get("resource")
	if resource == "" {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", "Required audience parameter not specified")
	}
	if u, err := url.Parse(resource); err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_resource",
			fmt.Sprintf("AADSTS500011: The resource principal named %s was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", resource))
	}

	p, desc := s.selectIdentity(q, rec)
	if desc != "" {
		return writeIMDSError(w, http.StatusBadRequest, "invalid_request", desc)
	}
	rec.Identity = p.ClientID
	token, claims, err := s.signer.issue(p, resource, s.tokenLife)
	if err != nil {
		return writeIMDSError(w, http.StatusInternalServerError, "unknown_error", "Failed to issue a token")
	}
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token":  token,
		"refresh_token": "",
		"expires_in":    strconv.FormatInt(int64(time.Until(claims.ExpiresAt.Time).Seconds()), 10),
		"expires_on":    strconv.FormatInt(claims.ExpiresAt.Unix(), 10),
		"not_before":    strconv.FormatInt(claims.NotBefore.Unix(), 10),
		"resource":      resource,
		"token_type":    "Bearer",
		"client_id":     p.ClientID,
	})
	return http.StatusOK
}

// selectIdentity picks the assigned identity a token request names, or the
// node's only (or system-assigned) identity when it names none. On failure
// it returns IMDS's error description.
func (s *imdsService) selectIdentity(q url.Values, rec *Request) (Principal, string) {
	var key, want string
	for _, k := range []string{"client_id", "object_id", "msi_res_id", "mi_res_id"} {
		if v := q.Get(k); v != "" {
			if key != "" {
				return Principal{}, "Only one of client_id, object_id, msi_res_id or mi_res_id may be specified"
			}
			key, want = k, v
		}
	}
	if key == "client_id" {
		rec.Identity = want
	}
	s.mu.Lock()
	ids := append([]string(nil), s.assigned...)
	system := s.system
	s.mu.Unlock()

	if key == "" {
		switch {
		case system != "":
			ids = []string{system}
		case len(ids) == 0:
			return Principal{}, "Identity not found"
		case len(ids) > 1:
			return Principal{}, "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
		}
		p, ok := s.dir.lookup(ids[0])
		if !ok {
			return Principal{}, "Identity not found"
		}
		return p, ""
	}
	if system != "" {
		ids = append(ids, system)
	}
	for _, id := range ids {
		p, ok := s.dir.lookup(id)
		if !ok {
			continue
		}
		var have string
		switch key {
		case "client_id":
			have = p.ClientID
		case "object_id":
			have = p.ObjectID
		default:
			have = p.ResourceID
		}
		if have != "" && strings.EqualFold(have, want) {
			return p, ""
		}
	}
	return Principal{}, "Identity not found"
}

// admit applies IMDS's limits for the identity endpoint: at most s.rate
// requests in any second and s.conc at a time. An
// admitted request must call release.
func (s *imdsService) admit() bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	cut := 0
	for cut < len(s.recent) && now.Sub(s.recent[cut]) >= time.Second {
		cut++
	}
	s.recent = s.recent[cut:]
	if len(s.recent) >= s.rate || s.inflight >= s.conc {
		return false
	}
	s.recent = append(s.recent, now)
	s.inflight++
	return true
}

func (s *imdsService) release() {
	s.mu.Lock()
	s.inflight--
	s.mu.Unlock()
}

// writeIMDSError writes IMDS's error shape and returns status.
func writeIMDSError(w http.ResponseWriter, status int, code, description string) int {
	writeJSON(w, status, map[string]string{"error": code, "error_description": description})
	return status
}

// writeIMDSFault answers an injected fault's status in IMDS's shape.
func writeIMDSFault(w http.ResponseWriter, status int) {
	code, desc := "unknown_error", "Internal error (fault injected by the kvnode emulator)"
	switch status {
	case http.StatusNotFound:
		code, desc = "not_found", "Identity is being assigned to the VM (fault injected by the kvnode emulator)"
	case http.StatusGone:
		code, desc = "service_unavailable", "IMDS is updating and will be back within 70 seconds (fault injected by the kvnode emulator)"
	case http.StatusTooManyRequests:
		code, desc = "too_many_requests", "Too many requests (fault injected by the kvnode emulator)"
		w.Header().Set("Retry-After", "1")
	case http.StatusBadRequest:
		code, desc = "invalid_request", "Bad request (fault injected by the kvnode emulator)"
	}
	writeIMDSError(w, status, code, desc)
}
