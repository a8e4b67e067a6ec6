package imds

import (
	"context"
	"net/netip"

	"github.com/kvnode/kvnode/pkg/podauth"

	"github.com/kvnode/kvnode/pkg/tokencache"
)

// PodFinder finds the pods running on this node. Implementations answer from
// an index in constant time; they never call the API server per request.
// Host-network pods share the node's address and must not be returned by
// PodByIP.
type PodFinder interface {
	// PodByIP returns the pod that owns source address ip for a connection
	// that came through the pod interface with index link (from a
	// connection that implements PodLinker; 0 when the listener does not
	// tell interfaces apart).
	PodByIP(ip netip.Addr, link int) (podauth.Pod, bool)
	// PodByName returns a pod by namespace and name (for /host/token/).
	PodByName(namespace, name string) (podauth.Pod, bool)
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
	IdentitiesFor(pod podauth.Pod) []podauth.Identity
}

// TokenSource returns an access token of identity id for resource, on
// behalf of pod. It is the cache in front of the upstreams
// (tokensource.Cached); the handler calls it on every request, so hits
// must be cheap. The pod matters for workload identities: their tokens come
// from the pod's service account's federated credential.
type TokenSource interface {
	Token(ctx context.Context, pod podauth.Pod, id podauth.Identity, resource string) (tokencache.Token, error)
}
