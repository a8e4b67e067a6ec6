package identity

// WorkloadAudience is the audience Entra ID requires on the service-account
// token a workload identity presents: kubelet's token in the volume context
// (kvdriver) and the token nmi requests for a pod's service account.
const WorkloadAudience = "api://AzureADTokenExchange"
