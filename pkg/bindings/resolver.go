// Package bindings decides which Azure identities a pod may use. It is nmi's
// imds.Bindings, fed by informers on two sources of bindings:
//
//   - Workload identity: a ServiceAccount annotated with ClientIDAnnotation
//     (and optionally TenantIDAnnotation) binds that identity to the pods that
//     run as it, with Source podauth.SourceWorkloadIdentity. The token source for
//     these exchanges the pod's service-account token at Entra ID; Entra ID
//     checks that the application has a federated credential trusting this
//     service account, so the annotation alone grants nothing.
//   - aad-pod-identity, for clusters migrating from it: an AzureIdentityBinding
//     grants the AzureIdentity it names to the pods of its namespace whose
//     SelectorLabel equals its selector. User-assigned managed identities
//     (type 0) are served from the node's IMDS (podauth.SourceIMDS), so they must
//     be assigned to the node pool; kvnode has no controller that assigns
//     them, as aad-pod-identity's MIC did. Service principals (types 1 and 2)
//     are not supported yet: they are skipped with a log line.
//
// Bindings are strictly namespaced: only ServiceAccounts, AzureIdentities
// and AzureIdentityBindings in the pod's own namespace count. aad-pod-identity
// let a binding anywhere grant an identity unless its namespaced mode was on;
// then anyone who could create a binding in one namespace could hand an
// identity to pods of another, and namespace-scoped RBAC could not contain it.
// In kvnode that mode is the only one.
//
// The hot path does no work proportional to the number of objects: informer
// events recompute the identities of the affected ServiceAccount or
// (namespace, selector) and IdentitiesFor looks both up, returning a shared
// slice.
package bindings

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/podauth"
)

// Config tunes a Resolver.
type Config struct {
	// DefaultTenantID is the tenant of a workload identity whose
	// ServiceAccount has no TenantIDAnnotation (the cluster's tenant).
	DefaultTenantID string
	// NodeIdentities are the client IDs of user-assigned managed identities
	// assigned to the node. A ServiceAccount annotated with one of them gets
	// it from the node's IMDS (podauth.SourceIMDS) instead of through the
	// workload-identity exchange, which needs no federated credential.
	//
	// This trusts the annotation alone: whoever may annotate a
	// ServiceAccount in some namespace gets every identity listed here for
	// that namespace's pods, as with aad-pod-identity. Leave it empty unless
	// that is intended; with it empty an annotation is checked by Entra ID.
	NodeIdentities []string
	// SkipAzureIdentities turns off aad-pod-identity's CRDs, for clusters
	// that do not have them installed (their informers would never sync).
	SkipAzureIdentities bool
}

// Resolver is an imds.Bindings backed by informers. Create it with New,
// start it with Start and serve once HasSynced reports true.
type Resolver struct {
	cfg     Config
	nodeIDs map[string]bool // lower-cased NodeIdentities
	// saReflector feeds saStore, which keeps bySA (serviceaccounts.go).
	saReflector *cache.Reflector
	saStore     *saStore
	saDone      chan struct{}             // closed when saReflector has returned
	crdsDone    func()                    // waits for the CRD informers to return
	azIDs       cache.SharedIndexInformer // nil with SkipAzureIdentities
	azBinds     cache.SharedIndexInformer // nil with SkipAzureIdentities
	handlers    []cache.ResourceEventHandlerRegistration
	recompute   sync.Mutex // serialises the event handlers' recomputations

	mu sync.RWMutex
	// bySA is the identity bound by each annotated ServiceAccount.
	bySA map[saKey][]podauth.Identity
	// bySelector is the identities bound to each (namespace, selector).
	bySelector map[selectorKey][]podauth.Identity
	// both holds, per namespace, the unions for pods that have identities
	// from both sources; filled on first use and dropped when anything in
	// the namespace changes.
	both map[string]map[pairKey][]podauth.Identity
}

type saKey struct{ namespace, name string }

type selectorKey struct{ namespace, selector string }

type pairKey struct{ serviceAccount, selector string }

// Names of the binding informer's indexes.
const (
	bySelectorIndex = "selector"
	byIdentityIndex = "azureIdentity"
)

// New returns a resolver that watches ServiceAccounts through client and,
// unless cfg.SkipAzureIdentities, aad-pod-identity's objects through dyn.
func New(client *kube.Core, dyn dynamic.Interface, cfg Config) (*Resolver, error) {
	r := newResolver(cfg)
	r.saReflector, r.saStore = newServiceAccountReflector(client, r)
	if cfg.SkipAzureIdentities {
		return r, nil
	}
	r.azIDs = kube.DynamicInformer(dyn, AzureIdentitiesResource, 0, nil)
	r.azBinds = kube.DynamicInformer(dyn, AzureIdentityBindingsResource, 0, nil)
	// The caches hold the typed fields the resolver reads, converted once
	// per change, not the unstructured objects (maps of every field,
	// managedFields included).
	for inf, slim := range map[cache.SharedIndexInformer]cache.TransformFunc{r.azIDs: slimAzureIdentity, r.azBinds: slimBinding} {
		if err := inf.SetTransform(slim); err != nil {
			return nil, fmt.Errorf("bindings: set transform: %w", err)
		}
	}
	if err := r.azBinds.AddIndexers(cache.Indexers{
		bySelectorIndex: indexBindingBy(func(b *AzureIdentityBinding) string { return b.Spec.Selector }),
		byIdentityIndex: indexBindingBy(func(b *AzureIdentityBinding) string { return b.Spec.AzureIdentity }),
	}); err != nil {
		return nil, fmt.Errorf("bindings: add indexers: %w", err)
	}
	if err := r.handle(r.azIDs, r.onAzureIdentity); err != nil {
		return nil, err
	}
	if err := r.handle(r.azBinds, r.onBinding); err != nil {
		return nil, err
	}
	return r, nil
}

// newResolver returns a resolver without informers.
func newResolver(cfg Config) *Resolver {
	r := &Resolver{
		cfg:        cfg,
		nodeIDs:    make(map[string]bool, len(cfg.NodeIdentities)),
		bySA:       make(map[saKey][]podauth.Identity),
		bySelector: make(map[selectorKey][]podauth.Identity),
		both:       make(map[string]map[pairKey][]podauth.Identity),
	}
	for _, id := range cfg.NodeIdentities {
		r.nodeIDs[strings.ToLower(id)] = true
	}
	return r
}

// handle registers on(oldObj, newObj) for every event of informer; oldObj is
// nil for an add and newObj is nil for a delete.
func (r *Resolver) handle(informer cache.SharedIndexInformer, on func(oldObj, newObj any)) error {
	reg, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { on(nil, obj) },
		UpdateFunc: on,
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			on(obj, nil)
		},
	})
	if err != nil {
		return fmt.Errorf("bindings: add event handler: %w", err)
	}
	r.handlers = append(r.handlers, reg)
	return nil
}

// Start runs the informers until ctx ends. It does not block.
func (r *Resolver) Start(ctx context.Context) {
	r.saDone = make(chan struct{})
	go func() {
		defer close(r.saDone)
		r.saReflector.RunWithContext(ctx)
	}()
	if r.azIDs != nil {
		r.crdsDone = kube.Run(ctx, r.azIDs, r.azBinds)
	}
}

// Shutdown waits for the informers' goroutines to end after Start's context
// has ended.
func (r *Resolver) Shutdown() {
	if r.saDone != nil {
		<-r.saDone
	}
	if r.crdsDone != nil {
		r.crdsDone()
	}
}

// HasSynced reports whether every informer's initial list has been applied,
// for readiness: until then a pod may be refused an identity it has.
func (r *Resolver) HasSynced() bool {
	if !r.saStore.HasSynced() {
		return false
	}
	for _, h := range r.handlers {
		if !h.HasSynced() {
			return false
		}
	}
	return true
}

// WaitForSync blocks until HasSynced or until ctx ends, and reports which.
func (r *Resolver) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), r.HasSynced)
}

// IdentitiesFor returns the identities bound to pod: its ServiceAccount's
// first, then those of the AzureIdentityBindings selecting it ordered by
// client ID, without two of one client ID (the first is kept). The slice is
// shared by every caller and later calls: callers must not modify it.
func (r *Resolver) IdentitiesFor(pod podauth.Pod) []podauth.Identity {
	selector := pod.Labels[SelectorLabel]
	r.mu.RLock()
	fromSA := r.bySA[saKey{pod.Namespace, pod.ServiceAccount}]
	var fromBindings []podauth.Identity
	if selector != "" {
		fromBindings = r.bySelector[selectorKey{pod.Namespace, selector}]
	}
	if len(fromBindings) == 0 {
		r.mu.RUnlock()
		return fromSA
	}
	if len(fromSA) == 0 {
		r.mu.RUnlock()
		return fromBindings
	}
	ids, ok := r.both[pod.Namespace][pairKey{pod.ServiceAccount, selector}]
	r.mu.RUnlock()
	if ok {
		return ids
	}
	return r.union(pod.Namespace, pod.ServiceAccount, selector)
}

// union computes and remembers the identities of a pod bound through both
// sources.
func (r *Resolver) union(namespace, serviceAccount, selector string) []podauth.Identity {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := pairKey{serviceAccount, selector}
	if ids, ok := r.both[namespace][key]; ok {
		return ids
	}
	ids := dedupe(slices.Concat(r.bySA[saKey{namespace, serviceAccount}], r.bySelector[selectorKey{namespace, selector}]))
	m := r.both[namespace]
	if m == nil {
		m = make(map[pairKey][]podauth.Identity)
		r.both[namespace] = m
	}
	m[key] = ids
	return ids
}

// serviceAccountIdentity returns the identity sa's annotations bind, if any.
func (r *Resolver) serviceAccountIdentity(sa *corev1.ServiceAccount) []podauth.Identity {
	clientID := strings.TrimSpace(sa.Annotations[ClientIDAnnotation])
	if clientID == "" {
		return nil
	}
	if r.nodeIDs[strings.ToLower(clientID)] {
		return []podauth.Identity{{ClientID: clientID, Source: podauth.SourceIMDS}}
	}
	tenant := strings.TrimSpace(sa.Annotations[TenantIDAnnotation])
	if tenant == "" {
		tenant = r.cfg.DefaultTenantID
	}
	return []podauth.Identity{{ClientID: clientID, TenantID: tenant, Source: podauth.SourceWorkloadIdentity}}
}

// onAzureIdentity recomputes the selectors of the bindings that name a
// changed AzureIdentity.
func (r *Resolver) onAzureIdentity(oldObj, newObj any) {
	u, _ := toAzureIdentity(newObj)
	if u == nil {
		u, _ = toAzureIdentity(oldObj)
	}
	if u == nil {
		klog.ErrorS(nil, "bindings: unexpected object from the AzureIdentity informer", "type", fmt.Sprintf("%T", newObj))
		return
	}
	if newObj != nil {
		// Said once per change of the identity, not per recomputation.
		if az, ok := toAzureIdentity(newObj); ok {
			switch {
			case az.Spec.Type != UserAssignedMSI:
				klog.InfoS("AzureIdentity is not a user-assigned managed identity; service principals are not supported yet, skipped",
					"azureIdentity", klog.KObj(az), "type", int(az.Spec.Type))
			case az.Spec.ClientID == "":
				klog.InfoS("AzureIdentity has no clientID, skipped", "azureIdentity", klog.KObj(az))
			}
		}
	}
	r.recompute.Lock()
	defer r.recompute.Unlock()
	objs, err := r.azBinds.GetIndexer().ByIndex(byIdentityIndex, u.GetNamespace()+"/"+u.GetName())
	if err != nil {
		klog.ErrorS(err, "bindings: look up the bindings of an AzureIdentity", "azureIdentity", klog.KObj(u))
		return
	}
	var selectors []string
	for _, obj := range objs {
		if b, ok := toBinding(obj); ok {
			selectors = append(selectors, b.Spec.Selector)
		}
	}
	r.recomputeSelectors(u.GetNamespace(), selectors)
}

// onBinding recomputes the selectors of a changed AzureIdentityBinding,
// before and after the change.
func (r *Resolver) onBinding(oldObj, newObj any) {
	var namespace string
	var selectors []string
	for _, obj := range []any{oldObj, newObj} {
		if b, ok := toBinding(obj); ok {
			namespace = b.Namespace
			selectors = append(selectors, b.Spec.Selector)
		}
	}
	if namespace == "" {
		klog.ErrorS(nil, "bindings: unexpected object from the AzureIdentityBinding informer", "type", fmt.Sprintf("%T", newObj))
		return
	}
	r.recompute.Lock()
	defer r.recompute.Unlock()
	r.recomputeSelectors(namespace, selectors)
}

// recomputeSelectors rebuilds the identities of selectors in namespace from
// the informers' stores. r.recompute is held.
func (r *Resolver) recomputeSelectors(namespace string, selectors []string) {
	results := make(map[string][]podauth.Identity, len(selectors))
	for _, sel := range selectors {
		if _, done := results[sel]; done || sel == "" {
			continue
		}
		results[sel] = r.selectorIdentities(namespace, sel)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for sel, ids := range results {
		key := selectorKey{namespace, sel}
		if len(ids) == 0 {
			delete(r.bySelector, key)
		} else {
			r.bySelector[key] = ids
		}
	}
	delete(r.both, namespace)
}

// selectorIdentities returns the identities granted to pods of namespace
// labelled with selector.
func (r *Resolver) selectorIdentities(namespace, selector string) []podauth.Identity {
	objs, err := r.azBinds.GetIndexer().ByIndex(bySelectorIndex, namespace+"/"+selector)
	if err != nil {
		klog.ErrorS(err, "bindings: look up the bindings of a selector", "namespace", namespace, "selector", selector)
		return nil
	}
	var ids []podauth.Identity
	for _, obj := range objs {
		b, ok := toBinding(obj)
		if !ok || b.Spec.AzureIdentity == "" {
			continue
		}
		// The identity is looked up in the binding's namespace only.
		idObj, ok, _ := r.azIDs.GetIndexer().GetByKey(namespace + "/" + b.Spec.AzureIdentity)
		if !ok {
			klog.V(2).InfoS("AzureIdentityBinding names an AzureIdentity that does not exist in its namespace",
				"binding", klog.KObj(b), "azureIdentity", b.Spec.AzureIdentity)
			continue
		}
		azID, ok := toAzureIdentity(idObj)
		if !ok {
			continue
		}
		if id, ok := identityOf(azID); ok {
			ids = append(ids, id)
		}
	}
	slices.SortStableFunc(ids, func(a, b podauth.Identity) int {
		return cmp.Or(
			cmp.Compare(strings.ToLower(a.ClientID), strings.ToLower(b.ClientID)),
			cmp.Compare(a.ResourceID, b.ResourceID))
	})
	return dedupe(ids)
}

// identityOf converts an AzureIdentity to the identity it serves, if kvnode
// can serve it (onAzureIdentity logs the ones it cannot).
func identityOf(az *AzureIdentity) (podauth.Identity, bool) {
	if az.Spec.Type != UserAssignedMSI || az.Spec.ClientID == "" {
		return podauth.Identity{}, false
	}
	return podauth.Identity{ClientID: az.Spec.ClientID, ResourceID: az.Spec.ResourceID, Source: podauth.SourceIMDS}, true
}

// dedupe drops identities whose client ID (compared without case) appeared
// earlier in ids. It returns nil for no identities.
func dedupe(ids []podauth.Identity) []podauth.Identity {
	out := ids[:0]
	for _, id := range ids {
		if !slices.ContainsFunc(out, func(o podauth.Identity) bool { return strings.EqualFold(o.ClientID, id.ClientID) }) {
			out = append(out, id)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return slices.Clip(out)
}

// indexBindingBy indexes bindings by namespace and the value of field.
func indexBindingBy(field func(*AzureIdentityBinding) string) cache.IndexFunc {
	return func(obj any) ([]string, error) {
		b, ok := toBinding(obj)
		if !ok {
			return nil, nil
		}
		v := field(b)
		if v == "" {
			return nil, nil
		}
		return []string{b.Namespace + "/" + v}, nil
	}
}

// toBinding returns obj as the binding informer stores it (see slimBinding).
func toBinding(obj any) (*AzureIdentityBinding, bool) {
	b, ok := obj.(*AzureIdentityBinding)
	if !ok || b.malformed {
		return nil, false
	}
	return b, true
}

// toAzureIdentity returns obj as the AzureIdentity informer stores it (see
// slimAzureIdentity); a malformed one is returned with false.
func toAzureIdentity(obj any) (*AzureIdentity, bool) {
	az, ok := obj.(*AzureIdentity)
	if !ok {
		return nil, false
	}
	return az, !az.malformed
}

// slimMeta keeps the object metadata that the caches' keys and the logs use.
func slimMeta(u *unstructured.Unstructured) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: u.GetNamespace(), Name: u.GetName(), ResourceVersion: u.GetResourceVersion()}
}

// slimAzureIdentity converts an AzureIdentity from the dynamic informer to
// its typed spec. One that does not convert is kept, marked malformed, so
// that its key still follows the object's changes; it binds nothing.
func slimAzureIdentity(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	az := &AzureIdentity{ObjectMeta: slimMeta(u)}
	if err := specFrom(u, &az.Spec); err != nil {
		klog.InfoS("ignoring a malformed AzureIdentity", "azureIdentity", klog.KObj(u), "err", err)
		az.malformed = true
		return az, nil
	}
	return az, nil
}

// slimBinding is slimAzureIdentity for AzureIdentityBindings.
func slimBinding(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	b := &AzureIdentityBinding{ObjectMeta: slimMeta(u)}
	if err := specFrom(u, &b.Spec); err != nil {
		klog.InfoS("ignoring a malformed AzureIdentityBinding", "binding", klog.KObj(u), "err", err)
		b.malformed = true
		return b, nil
	}
	return b, nil
}

// specFrom converts u's spec, which may be absent, into spec.
func specFrom(u *unstructured.Unstructured, spec any) error {
	raw, ok := u.Object["spec"]
	if !ok || raw == nil {
		return nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return fmt.Errorf("spec is a %T, not an object", raw)
	}
	return runtime.DefaultUnstructuredConverter.FromUnstructured(m, spec)
}
