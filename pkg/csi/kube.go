package csi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/spc"
)

// ClassInformer keeps every SecretProviderClass in memory, so a publish
// reads its class without an API call. A class the informer does not hold
// yet is read from the API server once: a class created just before its
// pod (kubectl apply of both) may reach the publish before the watch event
// reaches the informer, and on a loaded API server that can take seconds.
//
// The informer holds each class as a *Class: converted from unstructured
// once per change (not at every publish), with only the fields a mount
// reads (no managedFields, no annotations such as kubectl's
// last-applied-configuration, which repeats the whole spec), and parsed at
// most once per version.
type ClassInformer struct {
	client   dynamic.Interface
	informer cache.SharedIndexInformer
	done     func()
}

// Class is a SecretProviderClass as ClassInformer holds it. It is shared by
// every mount of the class and must not be modified.
type Class struct {
	*spc.SecretProviderClass
	parseOnce sync.Once
	cfg       *spc.Config
	parseErr  error
}

// AzureConfig returns the class's parameters parsed for the Azure provider
// (spc.Parse), parsing them once per class version. Parameters that make
// Parse read a file (an AzureStackCloud environment file) are parsed at
// every call, so that a changed file is read. The Config is shared and must
// not be modified.
func (c *Class) AzureConfig() (*spc.Config, error) {
	if spc.ReadsFiles(c.Spec.Parameters) {
		return spc.Parse(c.Spec.Parameters)
	}
	c.parseOnce.Do(func() { c.cfg, c.parseErr = spc.Parse(c.Spec.Parameters) })
	return c.cfg, c.parseErr
}

// missTimeout bounds the API call made for a class the informer lacks.
const missTimeout = 5 * time.Second

// NewClassInformer watches SecretProviderClasses in all namespaces.
func NewClassInformer(client dynamic.Interface, resync time.Duration) *ClassInformer {
	inf := kube.DynamicInformer(client, spc.SecretProviderClassesResource, resync, nil)
	// SetTransform fails only once the informer has started.
	_ = inf.SetTransform(slimClass)
	return &ClassInformer{client: client, informer: inf}
}

// slimClass is the informer's transform: unstructured to *Class. An object
// that does not convert is kept as the error, so that its key still
// follows its changes and a publish reports the problem.
func slimClass(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil // a tombstone, or already a *Class
	}
	return classFrom(u), nil
}

// classFrom converts an unstructured SecretProviderClass, keeping what a
// mount reads.
func classFrom(u *unstructured.Unstructured) any {
	full := &spc.SecretProviderClass{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, full); err != nil {
		return &badClass{ObjectMeta: slimMeta(u), err: fmt.Errorf("SecretProviderClass %s/%s: %w", u.GetNamespace(), u.GetName(), err)}
	}
	full.ObjectMeta = slimMeta(u)
	return &Class{SecretProviderClass: full}
}

// slimMeta is the metadata a mount reads: name, namespace, UID and
// resourceVersion (events name the class version they were about).
func slimMeta(u *unstructured.Unstructured) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: u.GetNamespace(), Name: u.GetName(), UID: u.GetUID(), ResourceVersion: u.GetResourceVersion()}
}

// badClass stands in the informer for an object that is no valid
// SecretProviderClass.
type badClass struct {
	metav1.ObjectMeta
	err error
}

// Start runs the informer until ctx ends.
func (c *ClassInformer) Start(ctx context.Context) { c.done = kube.Run(ctx, c.informer) }

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
func (c *ClassInformer) Get(ctx context.Context, namespace, name string) (*Class, error) {
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
		obj = classFrom(u)
	}
	switch o := obj.(type) {
	case *Class:
		return o, nil
	case *badClass:
		return nil, o.err
	}
	return nil, fmt.Errorf("unexpected object %T in the SecretProviderClass informer", obj)
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
