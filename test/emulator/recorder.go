package emulator

import (
	"sync"
	"time"
)

// Service names a part of the emulator, as recorded in Request.Service.
type Service string

const (
	ServiceEntra    Service = "entra"
	ServiceKeyVault Service = "keyvault"
	ServiceIMDS     Service = "imds"
	// ServiceUnknown records requests for hosts the emulator does not serve.
	ServiceUnknown Service = "unknown"
)

// Request is one request the emulator answered. Tests count these to prove how
// many calls a client made; no secret or token is kept.
type Request struct {
	Time    time.Time `json:"time"`
	Service Service   `json:"service"`
	Host    string    `json:"host"`
	Method  string    `json:"method"`
	Path    string    `json:"path"`
	Status  int       `json:"status"`
	// Vault and Object are set for Key Vault requests ("secrets/NAME",
	// "keys/NAME", "certificates/NAME").
	Vault  string `json:"vault,omitempty"`
	Object string `json:"object,omitempty"`
	// Identity is the client ID the request acted as or asked for, when known.
	Identity string `json:"identity,omitempty"`
	// Tenant is the tenant of an Entra ID request, when known.
	Tenant string `json:"tenant,omitempty"`
	// Grant is the token request's grant, for Entra ID token requests:
	// "client_secret", "client_assertion".
	Grant string `json:"grant,omitempty"`
}

// RequestFilter selects requests; an empty field matches everything.
type RequestFilter struct {
	Service  Service
	Vault    string
	Object   string
	Identity string
	Method   string
	Status   int
	Since    time.Time
}

func (f RequestFilter) match(r *Request) bool {
	return (f.Service == "" || f.Service == r.Service) &&
		(f.Vault == "" || f.Vault == r.Vault) &&
		(f.Object == "" || f.Object == r.Object) &&
		(f.Identity == "" || f.Identity == r.Identity) &&
		(f.Method == "" || f.Method == r.Method) &&
		(f.Status == 0 || f.Status == r.Status) &&
		(f.Since.IsZero() || !r.Time.Before(f.Since))
}

// recorder keeps the request log.
type recorder struct {
	mu   sync.Mutex
	reqs []Request
}

func (rc *recorder) add(r Request) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, r)
	rc.mu.Unlock()
}

func (rc *recorder) list(f RequestFilter) []Request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []Request
	for i := range rc.reqs {
		if f.match(&rc.reqs[i]) {
			out = append(out, rc.reqs[i])
		}
	}
	return out
}

func (rc *recorder) reset() {
	rc.mu.Lock()
	rc.reqs = nil
	rc.mu.Unlock()
}
