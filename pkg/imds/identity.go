package imds

import (
	"context"
	"errors"
	"net/netip"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/tokencache"
)

// Pod is what the token surface needs to know about a pod on this node.
type Pod struct {
	Namespace string
	Name      string
	UID       string
	// ServiceAccount is the pod's service account name (in Namespace).
	ServiceAccount string
	// Labels are the pod's labels (aad-pod-identity bindings select on them).
	// Read-only.
	Labels map[string]string
}

// PodFinder finds the pods running on this node. Implementations answer from
// an index in constant time; they never call the API server per request.
// Host-network pods share the node's address and must not be returned by
// PodByIP.
type PodFinder interface {
	// PodByIP returns the pod that owns source address ip for a connection
	// that came through the pod interface with index link (from a
	// connection that implements PodLinker; 0 when the listener does not
	// tell interfaces apart).
	PodByIP(ip netip.Addr, link int) (Pod, bool)
	// PodByName returns a pod by namespace and name (for /host/token/).
	PodByName(namespace, name string) (Pod, bool)
}

// PodLinker is implemented by connections whose listener knows the pod
// interface they came through (interception.PodConn); Server.HTTPServer
// hands the index to PodFinder.PodByIP.
type PodLinker interface {
	PodLink() int
}

// Bindings says which identities a pod may use.
type Bindings interface {
	// IdentitiesFor returns the identities bound to pod, or none. The caller
	// does not modify the slice, so implementations may return a shared one.
	IdentitiesFor(pod Pod) []Identity
}

// Source is where tokens for an identity come from.
type Source uint8

const (
	// SourceIMDS is a managed identity assigned to the node, served by the
	// node's instance metadata service.
	SourceIMDS Source = iota
	// SourceWorkloadIdentity is an application whose federated credential
	// trusts the pod's service account; tokens come from Entra ID's exchange.
	SourceWorkloadIdentity
)

func (s Source) String() string {
	switch s {
	case SourceIMDS:
		return "IMDS"
	case SourceWorkloadIdentity:
		return "WorkloadIdentity"
	}
	return "unknown"
}

// Identity is an Azure identity a pod may be bound to.
type Identity struct {
	ClientID string
	// ObjectID and ResourceID may be empty when unknown; a request naming an
	// identity by a field the binding does not carry is refused.
	ObjectID string
	// ResourceID is a user-assigned managed identity's ARM ID.
	ResourceID string
	// TenantID is the identity's tenant; empty for node managed identities
	// (IMDS implies it).
	TenantID string
	Source   Source
}

// TokenSource returns an access token of identity id for resource, on
// behalf of pod. It is the cache in front of the upstreams (CacheTokens
// adapts tokencache.Cache); the handler calls it on every request, so hits
// must be cheap. The pod matters for workload identities: their tokens come
// from the pod's service account's federated credential.
type TokenSource interface {
	Token(ctx context.Context, pod Pod, id Identity, resource string) (tokencache.Token, error)
}

// TokenSourceFunc adapts a function to TokenSource.
type TokenSourceFunc func(ctx context.Context, pod Pod, id Identity, resource string) (tokencache.Token, error)

// Token calls f.
func (f TokenSourceFunc) Token(ctx context.Context, pod Pod, id Identity, resource string) (tokencache.Token, error) {
	return f(ctx, pod, id, resource)
}

// ErrNoSource is returned for an identity whose Source has no token source
// configured.
var ErrNoSource = errors.New("no token source for this kind of identity")

// CacheTokens is a TokenSource backed by one tokencache.Cache per identity
// source. IMDS tokens are keyed by (client ID, resource); the node's
// identities are the node's, whichever pod asks. Workload-identity tokens
// are keyed by identity.WorkloadKey, which adds the pod's service account:
// a token obtained through one service account's federated credential is
// never served to a pod of another service account that names the same
// client ID.
type CacheTokens struct {
	// IMDS is the cache in front of the node's IMDS (see NewUpstream).
	IMDS *tokencache.Cache
	// WorkloadIdentity is the cache in front of Entra ID's token exchange
	// (identity.WorkloadTokens); nil refuses workload identities with
	// ErrNoSource.
	WorkloadIdentity *tokencache.Cache
}

var _ TokenSource = CacheTokens{}

// Token returns the cached token for id and resource, fetching it on a miss.
func (c CacheTokens) Token(ctx context.Context, pod Pod, id Identity, resource string) (tokencache.Token, error) {
	switch id.Source {
	case SourceIMDS:
		if c.IMDS != nil {
			return c.IMDS.Get(ctx, tokencache.Key{Identity: id.ClientID, Resource: resource, Tenant: id.TenantID})
		}
	case SourceWorkloadIdentity:
		if c.WorkloadIdentity != nil {
			key := identity.WorkloadKey{Namespace: pod.Namespace, ServiceAccount: pod.ServiceAccount,
				ClientID: id.ClientID, TenantID: id.TenantID, Resource: resource}
			return c.WorkloadIdentity.Get(ctx, key.CacheKey())
		}
	}
	return tokencache.Token{}, ErrNoSource
}

// Stats sums the caches' counters, for Config.CacheStats.
func (c CacheTokens) Stats() tokencache.Stats {
	var sum tokencache.Stats
	for _, cache := range []*tokencache.Cache{c.IMDS, c.WorkloadIdentity} {
		if cache == nil {
			continue
		}
		s := cache.Stats()
		sum.Hits += s.Hits
		sum.Misses += s.Misses
		sum.UpstreamCalls += s.UpstreamCalls
		sum.UpstreamErrors += s.UpstreamErrors
		sum.Refreshes += s.Refreshes
		sum.Evictions += s.Evictions
		sum.Entries += s.Entries
	}
	return sum
}
