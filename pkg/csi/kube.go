package csi

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/kvnode/kvnode/pkg/spc"
)

// ClassInformer keeps every SecretProviderClass in memory, so a publish
// reads its class without an API call. A class the informer does not hold
// yet is read from the API server once: a class created just before its
// pod (kubectl apply of both) may reach the publish before the watch event
// reaches the informer, and on a loaded API server that can take seconds.
type ClassInformer struct {
	client   dynamic.Interface
	factory  dynamicinformer.DynamicSharedInformerFactory
	informer cache.SharedIndexInformer
}

// missTimeout bounds the API call made for a class the informer lacks.
const missTimeout = 5 * time.Second

// NewClassInformer watches SecretProviderClasses in all namespaces.
func NewClassInformer(client dynamic.Interface, resync time.Duration) *ClassInformer {
	f := dynamicinformer.NewDynamicSharedInformerFactory(client, resync)
	gi := f.ForResource(spc.SecretProviderClassesResource)
	return &ClassInformer{client: client, factory: f, informer: gi.Informer()}
}

// Start runs the informer until ctx ends.
func (c *ClassInformer) Start(ctx context.Context) { c.factory.Start(ctx.Done()) }

// HasSynced reports whether the first list has completed.
func (c *ClassInformer) HasSynced() bool { return c.informer.HasSynced() }

// WaitForSync blocks until the informer has synced or ctx ends.
func (c *ClassInformer) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), c.informer.HasSynced)
}

// Get returns the class namespace/name from the informer or, when the
// informer does not hold it, from the API server; a NotFound API error when
// the API server has no such class either, another error when it cannot
// say.
func (c *ClassInformer) Get(ctx context.Context, namespace, name string) (*spc.SecretProviderClass, error) {
	if !c.informer.HasSynced() {
		return nil, errors.New("SecretProviderClass informer has not synced yet")
	}
	obj, exists, err := c.informer.GetIndexer().GetByKey(namespace + "/" + name)
	if err != nil {
		return nil, err
	}
	if !exists {
		gctx, cancel := context.WithTimeout(ctx, missTimeout)
		defer cancel()
		u, err := c.client.Resource(spc.SecretProviderClassesResource).Namespace(namespace).Get(gctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return classFrom(u)
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T in the SecretProviderClass informer", obj)
	}
	return classFrom(u)
}

// classFrom converts an unstructured SecretProviderClass.
func classFrom(u *unstructured.Unstructured) (*spc.SecretProviderClass, error) {
	namespace, name := u.GetNamespace(), u.GetName()
	out := &spc.SecretProviderClass{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		return nil, fmt.Errorf("SecretProviderClass %s/%s: %w", namespace, name, err)
	}
	return out, nil
}

// PodStatusWriter creates or updates SecretProviderClassPodStatus objects.
type PodStatusWriter struct {
	client dynamic.Interface
}

// NewPodStatusWriter writes through client.
func NewPodStatusWriter(client dynamic.Interface) *PodStatusWriter {
	return &PodStatusWriter{client: client}
}

// Write creates st, or replaces the status of an existing object of the same
// name (a republish after rotation).
func (w *PodStatusWriter) Write(ctx context.Context, st *spc.SecretProviderClassPodStatus) error {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(st)
	if err != nil {
		return err
	}
	res := w.client.Resource(spc.SecretProviderClassPodStatusesResource).Namespace(st.Namespace)
	_, err = res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	existing, err := res.Get(ctx, st.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	existing.Object["status"] = obj["status"]
	_, err = res.Update(ctx, existing, metav1.UpdateOptions{})
	return err
}
