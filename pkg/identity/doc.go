// Package identity builds and keeps the Azure credentials kvdriver mounts
// with: from a mount's identity mode, parameters and secrets (service
// principal, workload identity with kubelet's token, VM managed identity,
// pod identity through nmi) it returns one azcore.TokenCredential per
// identity, shared by every mount of that identity on the node. nmi's own
// token sources are in package tokensource.
package identity
