// Package tokensource is where nmi's tokens come from: the node's IMDS for
// managed identities assigned to the node (NodeIMDS), Entra ID's exchange of
// a service-account token for workload identities (WorkloadTokens), and
// Cached, the tokencache in front of each, which is what the IMDS surface
// (package imds) asks on every request.
package tokensource

import (
	"context"
	"errors"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/pkg/tokencache"
)

// ErrNoSource is returned for an identity whose Source has no token source
// configured.
var ErrNoSource = errors.New("no token source for this kind of identity")

// Cached answers token requests from one tokencache.Cache per identity
// source. IMDS tokens are keyed by (client ID, resource): the node's
// identities are the node's, whichever pod asks. Workload-identity tokens
// are keyed by the pod's service account too: a token obtained through one
// service account's federated credential is never served to a pod of
// another service account that names the same client ID.
type Cached struct {
	// IMDS is the cache in front of the node's IMDS (NodeIMDS).
	IMDS *tokencache.Cache
	// WorkloadIdentity is the cache in front of Entra ID's token exchange
	// (WorkloadTokens); nil refuses workload identities with ErrNoSource.
	WorkloadIdentity *tokencache.Cache
}

// Token returns the cached token of id for resource on behalf of pod,
// fetching it on a miss.
func (c Cached) Token(ctx context.Context, pod podauth.Pod, id podauth.Identity, resource string) (tokencache.Token, error) {
	switch id.Source {
	case podauth.SourceIMDS:
		if c.IMDS != nil {
			return c.IMDS.Get(ctx, tokencache.Key{Identity: id.ClientID, Resource: resource, Tenant: id.TenantID})
		}
	case podauth.SourceWorkloadIdentity:
		if c.WorkloadIdentity != nil {
			return c.WorkloadIdentity.Get(ctx, tokencache.Key{Identity: id.ClientID, Resource: resource, Tenant: id.TenantID,
				ServiceAccount: types.NamespacedName{Namespace: pod.Namespace, Name: pod.ServiceAccount}})
		}
	}
	return tokencache.Token{}, ErrNoSource
}

// Stats sums the caches' counters.
func (c Cached) Stats() tokencache.Stats {
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
