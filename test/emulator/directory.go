package emulator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
)

// Principal is an identity that Entra ID can issue tokens for: a registered
// application (service principal) or a managed identity.
type Principal struct {
	TenantID string
	// ClientID is the application (client) ID, the token's appid claim.
	ClientID string
	// ObjectID is the service principal's object ID, the token's oid claim and
	// what Key Vault access grants name.
	ObjectID string
	// ResourceID is the ARM ID of a user-assigned managed identity
	// (/subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME);
	// empty for applications.
	ResourceID string
	// Secret is an application's client secret; empty for managed identities and
	// for applications that only use federated credentials.
	Secret string
	// Federated lists the federated identity credentials that let an external
	// token (a Kubernetes service-account token) stand in for a client secret.
	Federated []FederatedCredential
}

// FederatedCredential trusts tokens from Issuer whose sub is Subject
// (system:serviceaccount:<ns>:<sa>) and whose aud contains one of Audiences
// (default api://AzureADTokenExchange).
type FederatedCredential struct {
	Issuer    string
	Subject   string
	Audiences []string
}

// DefaultFederatedAudience is the audience Entra ID expects on a workload
// identity's service-account token.
const DefaultFederatedAudience = "api://AzureADTokenExchange"

// directory holds the principals the emulator knows, indexed by client ID.
type directory struct {
	mu         sync.RWMutex
	byClientID map[string]*Principal
}

func newDirectory() *directory {
	return &directory{byClientID: map[string]*Principal{}}
}

// add registers p, filling in a random ObjectID if it has none.
func (d *directory) add(p Principal) (Principal, error) {
	if p.TenantID == "" || p.ClientID == "" {
		return Principal{}, fmt.Errorf("principal needs a tenant ID and a client ID")
	}
	if p.ObjectID == "" {
		p.ObjectID = newGUID()
	}
	for i := range p.Federated {
		if len(p.Federated[i].Audiences) == 0 {
			p.Federated[i].Audiences = []string{DefaultFederatedAudience}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.byClientID[p.ClientID]; ok {
		return Principal{}, fmt.Errorf("client ID %s already registered", p.ClientID)
	}
	cp := p
	d.byClientID[p.ClientID] = &cp
	return p, nil
}

// lookup returns a copy of the principal with the given client ID.
func (d *directory) lookup(clientID string) (Principal, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	p, ok := d.byClientID[clientID]
	if !ok {
		return Principal{}, false
	}
	return *p, true
}

// find returns the first principal for which match is true.
func (d *directory) find(match func(*Principal) bool) (Principal, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, p := range d.byClientID {
		if match(p) {
			return *p, true
		}
	}
	return Principal{}, false
}

// addFederated appends a federated credential to an existing principal.
func (d *directory) addFederated(clientID string, fc FederatedCredential) error {
	if len(fc.Audiences) == 0 {
		fc.Audiences = []string{DefaultFederatedAudience}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.byClientID[clientID]
	if !ok {
		return fmt.Errorf("no principal with client ID %s", clientID)
	}
	p.Federated = append(p.Federated, fc)
	return nil
}

// newGUID returns a random RFC 4122 version 4 UUID string.
func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// randomID returns 32 random hex characters.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
