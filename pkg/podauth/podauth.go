// Package podauth holds what nmi's parts say to one another about a token
// request: the pod that asks (Pod) and the Azure identity it may use
// (Identity), with where that identity's tokens come from (Source). It is
// a leaf: the pod index and the binding resolver produce these values, the
// token sources and the IMDS surface consume them, and none of them needs
// another's package for it.
package podauth

// Pod is what the token path needs to know about a pod on this node.
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

// The node-only token endpoint, aad-pod-identity's wire format, which
// kvdriver's usePodIdentity mounts call and nmi serves on loopback: GET
// HostTokenPath?resource=... with the pod named by two headers.
const (
	HostTokenPath      = "/host/token/"
	HeaderPodNamespace = "podns"
	HeaderPodName      = "podname"
)
