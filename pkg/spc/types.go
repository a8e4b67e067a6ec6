package spc

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of the secrets-store CSI driver's resources.
const GroupName = "secrets-store.csi.x-k8s.io"

// InternalNodeLabel is the label the upstream driver puts on a
// SecretProviderClassPodStatus to record the node that wrote it.
const InternalNodeLabel = "internal.secrets-store.csi.k8s.io/node-name"

// SchemeGroupVersion is the group and version of the types in this package.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1"}

// Resources of SchemeGroupVersion, for the dynamic client.
var (
	SecretProviderClassesResource          = SchemeGroupVersion.WithResource("secretproviderclasses")
	SecretProviderClassPodStatusesResource = SchemeGroupVersion.WithResource("secretproviderclasspodstatuses")
)

// SchemeBuilder registers the types of this package; AddToScheme applies it.
var (
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	AddToScheme   = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&SecretProviderClass{},
		&SecretProviderClassList{},
		&SecretProviderClassPodStatus{},
		&SecretProviderClassPodStatusList{},
	)
	metav1.AddToGroupVersion(scheme, SchemeGroupVersion)
	return nil
}

// Provider names the provider that serves a SecretProviderClass ("azure").
type Provider string

// SecretProviderClass says which provider fetches a volume's objects and how
// (spec.parameters), and which Kubernetes Secrets to sync from them.
type SecretProviderClass struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SecretProviderClassSpec   `json:"spec,omitempty"`
	Status SecretProviderClassStatus `json:"status,omitempty"`
}

// SecretProviderClassSpec is the desired state of a SecretProviderClass.
type SecretProviderClassSpec struct {
	// Provider is the provider's name, "azure" for Azure Key Vault.
	Provider Provider `json:"provider,omitempty"`
	// Parameters are the provider's settings, all strings; Parse reads the
	// Azure provider's.
	Parameters map[string]string `json:"parameters,omitempty"`
	// SecretObjects are Kubernetes Secrets to create from mounted objects.
	SecretObjects []SecretObject `json:"secretObjects,omitempty"`
}

// SecretObject is a Kubernetes Secret synced from mounted objects.
type SecretObject struct {
	// SecretName is the name of the Secret.
	SecretName string `json:"secretName,omitempty"`
	// Type is the Secret's type (Opaque, kubernetes.io/tls, ...).
	Type string `json:"type,omitempty"`
	// Labels and Annotations are added to the Secret.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Data maps mounted objects to keys of the Secret.
	Data []SecretObjectData `json:"data,omitempty"`
}

// SecretObjectData puts one mounted object under one key of a Secret.
type SecretObjectData struct {
	// ObjectName is the object's file name in the mount (its objectAlias,
	// else its objectName).
	ObjectName string `json:"objectName,omitempty"`
	// Key is the Secret's data key.
	Key string `json:"key,omitempty"`
}

// SecretProviderClassStatus is the observed state of a SecretProviderClass.
// Current upstream drivers leave it empty; byPod is kept so that objects
// written by older drivers read back whole.
type SecretProviderClassStatus struct {
	ByPod []ByPodStatus `json:"byPod,omitempty"`
}

// ByPodStatus records a pod that used the class (written by old drivers).
type ByPodStatus struct {
	// ID is the pod's id.
	ID string `json:"id,omitempty"`
	// Namespace is the pod's namespace.
	Namespace string `json:"namespace,omitempty"`
}

// SecretProviderClassList is a list of SecretProviderClasses.
type SecretProviderClassList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SecretProviderClass `json:"items"`
}

// SecretProviderClassPodStatus records that a pod's volume was mounted from a
// SecretProviderClass and which object versions it holds. Its name is
// <pod>-<namespace>-<class>; the driver writes it whole (there is no status
// subresource).
type SecretProviderClassPodStatus struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status SecretProviderClassPodStatusStatus `json:"status,omitempty"`
}

// SecretProviderClassPodStatusStatus is the state of one pod's mount.
type SecretProviderClassPodStatusStatus struct {
	PodName                 string                      `json:"podName,omitempty"`
	SecretProviderClassName string                      `json:"secretProviderClassName,omitempty"`
	Mounted                 bool                        `json:"mounted,omitempty"`
	TargetPath              string                      `json:"targetPath,omitempty"`
	Objects                 []SecretProviderClassObject `json:"objects,omitempty"`
}

// SecretProviderClassObject is one mounted object and its version.
type SecretProviderClassObject struct {
	// ID identifies the object, for Azure "<objectType>/<objectName>".
	ID string `json:"id,omitempty"`
	// Version is the version that was mounted.
	Version string `json:"version,omitempty"`
}

// SecretProviderClassPodStatusList is a list of SecretProviderClassPodStatuses.
type SecretProviderClassPodStatusList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SecretProviderClassPodStatus `json:"items"`
}
