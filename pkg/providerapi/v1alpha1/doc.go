// Package v1alpha1 is the secrets-store CSI driver's provider protocol
// (service v1alpha1.CSIDriverProvider: Version and Mount), generated from
// service.proto by hack/generate.sh (`make generate`). kvdriver is its
// client: it forwards the mounts of SecretProviderClasses whose
// spec.provider is not azure to the plugin serving it. The generated files
// are committed; wire_test.go pins the names and field numbers that make
// kvdriver talk to the existing provider plugins.
package v1alpha1
