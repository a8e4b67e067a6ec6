package bindings

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Names of the annotations and labels that bind identities to pods.
const (
	// ClientIDAnnotation on a ServiceAccount names the client ID of the
	// identity its pods use (Azure Workload Identity's convention).
	ClientIDAnnotation = "azure.workload.identity/client-id"
	// TenantIDAnnotation on a ServiceAccount names the identity's tenant;
	// Config.DefaultTenantID applies without it.
	TenantIDAnnotation = "azure.workload.identity/tenant-id"
	// SelectorLabel on a pod is matched against AzureIdentityBinding
	// spec.selector (aad-pod-identity's convention).
	SelectorLabel = "aadpodidbinding"
)

// GroupName is aad-pod-identity's API group.
const GroupName = "aadpodidentity.k8s.io"

// The resources of aad-pod-identity's API that kvnode reads.
var (
	AzureIdentitiesResource       = schema.GroupVersionResource{Group: GroupName, Version: "v1", Resource: "azureidentities"}
	AzureIdentityBindingsResource = schema.GroupVersionResource{Group: GroupName, Version: "v1", Resource: "azureidentitybindings"}
)

// IdentityType is AzureIdentity spec.type.
type IdentityType int

// The kinds of AzureIdentity. Only UserAssignedMSI is served.
const (
	// UserAssignedMSI is a user-assigned managed identity, which must be
	// assigned to the node so that the node's IMDS issues its tokens.
	UserAssignedMSI IdentityType = 0
	// ServicePrincipal is an application with a client secret.
	ServicePrincipal IdentityType = 1
	// ServicePrincipalCertificate is an application with a certificate.
	ServicePrincipalCertificate IdentityType = 2
)

// AzureIdentity is aad-pod-identity's description of an Azure identity.
// Fields kvnode does not read (the service principal's secret reference,
// auxiliary tenants, endpoints) are left out.
type AzureIdentity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AzureIdentitySpec `json:"spec,omitempty"`
	// malformed marks a cached object whose spec did not convert.
	malformed bool
}

// AzureIdentitySpec is the identity.
type AzureIdentitySpec struct {
	Type IdentityType `json:"type,omitempty"`
	// ClientID is the identity's client (application) ID.
	ClientID string `json:"clientID,omitempty"`
	// ResourceID is a user-assigned identity's ARM resource ID.
	ResourceID string `json:"resourceID,omitempty"`
	// TenantID is a service principal's tenant.
	TenantID string `json:"tenantID,omitempty"`
}

// AzureIdentityBinding grants an AzureIdentity of its namespace to the pods of
// its namespace whose SelectorLabel equals Spec.Selector.
type AzureIdentityBinding struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AzureIdentityBindingSpec `json:"spec,omitempty"`
	// malformed marks a cached object whose spec did not convert.
	malformed bool
}

// AzureIdentityBindingSpec is the binding.
type AzureIdentityBindingSpec struct {
	// AzureIdentity is the name of an AzureIdentity in the same namespace.
	AzureIdentity string `json:"azureIdentity,omitempty"`
	// Selector is the value of the pods' SelectorLabel.
	Selector string `json:"selector,omitempty"`
	// Weight is ignored.
	Weight int `json:"weight,omitempty"`
}
