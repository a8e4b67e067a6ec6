package bindings

import (
	"strings"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/podauth"
)

// ServiceAccounts are watched cluster-wide (a pod of any namespace may land
// on the node), and a big cluster has tens of thousands of them, nearly all
// without an identity annotation. An informer would keep every one of them
// in its cache, with a namespace index, although the hot path reads nothing
// but the identities of the annotated ones: at 50,000 ServiceAccounts that
// was over 30 MiB of nmi's heap. So a client-go Reflector feeds saStore
// instead, which keeps only the identities (in Resolver.bySA) and drops
// every other ServiceAccount as it arrives.
//
// The Reflector calls the store in the order of the watch, one call at a
// time, so the store needs no look-back at a cache to know it is current.

// saStore is the Reflector's store of ServiceAccounts (cache.ReflectorStore).
type saStore struct {
	r      *Resolver
	synced atomic.Bool
}

// newServiceAccountReflector returns the Reflector that keeps r.bySA.
func newServiceAccountReflector(client *kube.Core, r *Resolver) (*cache.Reflector, *saStore) {
	lw := client.ListWatch("serviceaccounts", metav1.NamespaceAll, nil)
	store := &saStore{r: r}
	return cache.NewReflectorWithOptions(lw, &corev1.ServiceAccount{}, store,
		cache.ReflectorOptions{Name: "serviceaccounts", TypeDescription: "*v1.ServiceAccount"}), store
}

// unannotated stands for every ServiceAccount without an identity in the
// Reflector's own buffer of a watch-list's initial events (see
// Transformer).
var unannotated = &corev1.ServiceAccount{}

// Transformer is applied by the Reflector to the initial events of a
// watch-list, which it buffers (by each object's own key) until the list is
// complete before calling Replace. An annotated ServiceAccount is cut down
// to its name and identity annotations; every other one is buffered as the
// one shared unannotated object, so a ServiceAccount costs the buffer its
// key and no copy. A modification that removes the annotation before the
// list completes replaces the buffered identity under the same key.
func (s *saStore) Transformer() cache.TransformFunc {
	return func(obj any) (any, error) {
		sa, ok := obj.(*corev1.ServiceAccount)
		if !ok {
			return obj, nil
		}
		if strings.TrimSpace(sa.Annotations[ClientIDAnnotation]) == "" {
			return unannotated, nil
		}
		ann := make(map[string]string, 2)
		for _, k := range []string{ClientIDAnnotation, TenantIDAnnotation} {
			if v, ok := sa.Annotations[k]; ok {
				ann[k] = v
			}
		}
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
			Namespace: sa.Namespace, Name: sa.Name, ResourceVersion: sa.ResourceVersion, Annotations: ann,
		}}, nil
	}
}

// Add records a new ServiceAccount's identity, if it has one.
func (s *saStore) Add(obj any) error { s.set(obj, false); return nil }

// Update records a changed ServiceAccount's identity, or drops it when the
// annotation went.
func (s *saStore) Update(obj any) error { s.set(obj, false); return nil }

// Delete drops a ServiceAccount's identity.
func (s *saStore) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s.set(obj, true)
	return nil
}

// set applies one ServiceAccount's state.
func (s *saStore) set(obj any, deleted bool) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok || sa == unannotated {
		return
	}
	var ids []podauth.Identity
	if !deleted {
		ids = s.r.serviceAccountIdentity(sa)
	}
	key := saKey{sa.Namespace, sa.Name}
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	_, had := r.bySA[key]
	if len(ids) == 0 {
		if !had {
			// Neither before nor now: nothing a pod sees changed.
			return
		}
		delete(r.bySA, key)
	} else {
		r.bySA[key] = ids
	}
	delete(r.both, sa.Namespace)
}

// Replace installs a complete list, after the initial list or watch-list
// and after every relist (a watch that expired): ServiceAccounts missing
// from it are gone.
func (s *saStore) Replace(list []any, _ string) error {
	bySA := make(map[saKey][]podauth.Identity)
	for _, obj := range list {
		sa, ok := obj.(*corev1.ServiceAccount)
		if !ok || sa == unannotated {
			continue
		}
		if ids := s.r.serviceAccountIdentity(sa); len(ids) > 0 {
			bySA[saKey{sa.Namespace, sa.Name}] = ids
		}
	}
	r := s.r
	r.mu.Lock()
	r.bySA = bySA
	clear(r.both)
	r.mu.Unlock()
	s.synced.Store(true)
	return nil
}

// Resync has nothing to do: the store holds no objects to resend.
func (s *saStore) Resync() error { return nil }

// HasSynced reports whether the first complete list has been applied.
func (s *saStore) HasSynced() bool { return s.synced.Load() }
