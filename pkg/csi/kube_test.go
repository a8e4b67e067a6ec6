package csi

import (
	"context"
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
