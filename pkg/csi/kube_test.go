package csi

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kvnode/kvnode/pkg/spc"
)

func unstructuredClass(namespace, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(spc.SchemeGroupVersion.String())
	u.SetKind("SecretProviderClass")
	u.SetNamespace(namespace)
	u.SetName(name)
	_ = unstructured.SetNestedStringMap(u.Object, map[string]string{"keyvaultName": "kv"}, "spec", "parameters")
	_ = unstructured.SetNestedField(u.Object, "azure", "spec", "provider")
	return u
}

// A class created after the informer listed, whose watch event has not
// arrived (here: never does), is read from the API server; a class that
// exists nowhere is NotFound.
func TestClassInformerReadsAMissFromTheAPIServer(t *testing.T) {
	gvr := spc.SecretProviderClassesResource
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{gvr: "SecretProviderClassList"})
	// The watch stays silent: the informer keeps what it listed, nothing.
	client.PrependWatchReactor("*", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, watch.NewFake(), nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := NewClassInformer(client, 0)
	c.Start(ctx)
	require.True(t, c.WaitForSync(ctx))

	_, err := client.Resource(gvr).Namespace("apps").Create(ctx, unstructuredClass("apps", "late"), metav1.CreateOptions{})
	require.NoError(t, err)
	_, inCache, err := c.informer.GetIndexer().GetByKey("apps/late")
	require.NoError(t, err)
	require.False(t, inCache, "the informer saw the class; the test needs it not to")

	class, err := c.Get(ctx, "apps", "late")
	require.NoError(t, err)
	assert.Equal(t, "late", class.Name)
	assert.Equal(t, "kv", class.Spec.Parameters["keyvaultName"])

	_, err = c.Get(ctx, "apps", "nowhere")
	assert.True(t, apierrors.IsNotFound(err), "%v", err)
}

const (
	testTenant = "00000000-0000-0000-0000-000000000001"
	oneObject  = "array:\n  - |\n    objectName: a\n    objectType: secret\n"
)

// The informer holds each class converted once, cut to what a mount reads,
// and parsed once per version; a new version is parsed again.
func TestClassParsedOncePerVersion(t *testing.T) {
	gvr := spc.SecretProviderClassesResource
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{gvr: "SecretProviderClassList"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u := unstructuredClass("apps", "web")
	_ = unstructured.SetNestedStringMap(u.Object, map[string]string{"keyvaultName": "kvone", "tenantID": testTenant, "objects": oneObject}, "spec", "parameters")
	u.SetResourceVersion("1")
	u.SetAnnotations(map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"spec":{}}`})
	u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}})
	_, err := client.Resource(gvr).Namespace("apps").Create(ctx, u, metav1.CreateOptions{})
	require.NoError(t, err)

	c := NewClassInformer(client, 0)
	c.Start(ctx)
	require.True(t, c.WaitForSync(ctx))

	first, err := c.Get(ctx, "apps", "web")
	require.NoError(t, err)
	assert.Empty(t, first.Annotations, "annotations are not kept")
	assert.Empty(t, first.ManagedFields, "managedFields are not kept")
	assert.Equal(t, "1", first.ResourceVersion)
	cfg, err := first.AzureConfig()
	require.NoError(t, err)
	assert.Equal(t, "kvone", cfg.KeyVaultName)
	again, err := c.Get(ctx, "apps", "web")
	require.NoError(t, err)
	cfg2, err := again.AzureConfig()
	require.NoError(t, err)
	assert.Same(t, first, again, "one converted class per version")
	assert.Same(t, cfg, cfg2, "parsed once per version")

	_ = unstructured.SetNestedField(u.Object, "kvtwo", "spec", "parameters", "keyvaultName")
	u.SetResourceVersion("2")
	_, err = client.Resource(gvr).Namespace("apps").Update(ctx, u, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		c, err := c.Get(ctx, "apps", "web")
		return err == nil && c.ResourceVersion == "2"
	}, 10*time.Second, 10*time.Millisecond)
	updated, err := c.Get(ctx, "apps", "web")
	require.NoError(t, err)
	cfg3, err := updated.AzureConfig()
	require.NoError(t, err)
	assert.Equal(t, "kvtwo", cfg3.KeyVaultName)
	assert.Equal(t, "kvone", cfg.KeyVaultName, "the old version's Config is unchanged")
}

// A class whose parameters make Parse read a file (AzureStackCloud's
// environment file) is parsed at every use, so a changed file is read; a
// class that does not convert is an error at Get.
func TestClassReparsedWhenItReadsAFile(t *testing.T) {
	env := filepath.Join(t.TempDir(), "azurestack.json")
	write := func(suffix string) {
		require.NoError(t, os.WriteFile(env, []byte(`{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://login.stack.example/","keyVaultDNSSuffix":"`+suffix+`","resourceIdentifiers":{"keyVault":"https://vault.stack.example"}}`), 0o600))
	}
	write("vault.one.example")
	class := classFrom(&unstructured.Unstructured{Object: map[string]any{
		"apiVersion": spc.SchemeGroupVersion.String(), "kind": "SecretProviderClass",
		"metadata": map[string]any{"namespace": "apps", "name": "stack", "resourceVersion": "1"},
		"spec": map[string]any{"provider": "azure", "parameters": map[string]any{
			"keyvaultName": "kvone", "tenantID": testTenant, "objects": oneObject,
			"cloudName": "AzureStackCloud", "cloudEnvFileName": env}},
	}}).(*Class)
	cfg, err := class.AzureConfig()
	require.NoError(t, err)
	assert.Contains(t, cfg.VaultURL(), "vault.one.example")
	write("vault.two.example")
	cfg, err = class.AzureConfig()
	require.NoError(t, err)
	assert.Contains(t, cfg.VaultURL(), "vault.two.example")

	bad := classFrom(&unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"namespace": "apps", "name": "bad"},
		"spec":     map[string]any{"parameters": "not a map"},
	}})
	b, ok := bad.(*badClass)
	require.True(t, ok, "%T", bad)
	assert.ErrorContains(t, b.err, "SecretProviderClass apps/bad")
}
