package bindings

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/kvnode/kvnode/pkg/kube"
	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	waitFor       = 10 * time.Second
	tick          = 10 * time.Millisecond
	defaultTenant = "72f988bf-0000-0000-0000-000000000001"
	nodeMI        = "0e8f6a1c-0000-0000-0000-00000000000a"
)

// cluster is a control plane with the chart's CRDs and a started resolver.
type cluster struct {
	t   *testing.T
	ctx context.Context
	cp  *controlplane.ControlPlane
	dyn dynamic.Interface
	r   *Resolver
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{"../../charts/kvnode/crds"}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	for _, ns := range []string{"apps", "other"} {
		require.NoError(t, cp.EnsureNamespace(ctx, ns))
	}
	dyn, err := dynamic.NewForConfig(cp.Config)
	require.NoError(t, err)
	core, err := kube.NewCore(cp.Config)
	require.NoError(t, err)
	r, err := New(core, dyn, Config{DefaultTenantID: defaultTenant, NodeIdentities: []string{nodeMI}})
	require.NoError(t, err)
	rctx, stop := context.WithCancel(ctx)
	r.Start(rctx)
	t.Cleanup(func() { stop(); r.Shutdown() })
	require.True(t, r.WaitForSync(ctx))
	return &cluster{t: t, ctx: ctx, cp: cp, dyn: dyn, r: r}
}

func pod(ns, sa, selector string) podauth.Pod {
	p := podauth.Pod{Namespace: ns, Name: "p", UID: "uid", ServiceAccount: sa}
	if selector != "" {
		p.Labels = map[string]string{SelectorLabel: selector, "app": "x"}
	}
	return p
}

// eventually waits until p's identities are want.
func (c *cluster) eventually(p podauth.Pod, want ...podauth.Identity) {
	c.t.Helper()
	require.EventuallyWithT(c.t, func(t *assert.CollectT) {
		assert.Equal(t, want, c.r.IdentitiesFor(p))
	}, waitFor, tick)
}

func (c *cluster) applySA(ns, name string, annotations map[string]string) {
	c.t.Helper()
	sas := c.cp.Client.CoreV1().ServiceAccounts(ns)
	sa, err := sas.Get(c.ctx, name, metav1.GetOptions{})
	if err != nil {
		_, err = sas.Create(c.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}, metav1.CreateOptions{})
		require.NoError(c.t, err)
		return
	}
	sa.Annotations = annotations
	_, err = sas.Update(c.ctx, sa, metav1.UpdateOptions{})
	require.NoError(c.t, err)
}

func (c *cluster) apply(gvr schema.GroupVersionResource, kind, ns, name string, spec map[string]any) {
	c.t.Helper()
	res := c.dyn.Resource(gvr).Namespace(ns)
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": GroupName + "/v1",
		"kind":       kind,
		"metadata":   map[string]any{"namespace": ns, "name": name},
		"spec":       spec,
	}}
	cur, err := res.Get(c.ctx, name, metav1.GetOptions{})
	if err != nil {
		_, err = res.Create(c.ctx, u, metav1.CreateOptions{})
		require.NoError(c.t, err)
		return
	}
	u.SetResourceVersion(cur.GetResourceVersion())
	_, err = res.Update(c.ctx, u, metav1.UpdateOptions{})
	require.NoError(c.t, err)
}

func (c *cluster) azureIdentity(ns, name string, typ int, clientID, resourceID string) {
	c.t.Helper()
	c.apply(AzureIdentitiesResource, "AzureIdentity", ns, name, map[string]any{"type": int64(typ), "clientID": clientID, "resourceID": resourceID})
}

func (c *cluster) binding(ns, name, identity, selector string) {
	c.t.Helper()
	c.apply(AzureIdentityBindingsResource, "AzureIdentityBinding", ns, name, map[string]any{"azureIdentity": identity, "selector": selector})
}

func (c *cluster) remove(gvr schema.GroupVersionResource, ns, name string) {
	c.t.Helper()
	require.NoError(c.t, c.dyn.Resource(gvr).Namespace(ns).Delete(c.ctx, name, metav1.DeleteOptions{}))
}

func wi(clientID, tenant string) podauth.Identity {
	return podauth.Identity{ClientID: clientID, TenantID: tenant, Source: podauth.SourceWorkloadIdentity}
}

func mi(clientID, resourceID string) podauth.Identity {
	return podauth.Identity{ClientID: clientID, ResourceID: resourceID, Source: podauth.SourceIMDS}
}

const (
	clientA = "aaaaaaaa-0000-0000-0000-000000000001"
	clientB = "bbbbbbbb-0000-0000-0000-000000000002"
	clientC = "cccccccc-0000-0000-0000-000000000003"
	clientD = "dddddddd-0000-0000-0000-000000000004"
	tenantT = "11111111-0000-0000-0000-00000000000f"
	resC    = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/c"
	resD    = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/d"
)

func TestServiceAccountAnnotations(t *testing.T) {
	c := startCluster(t)
	p := pod("apps", "wi", "")

	assert.Empty(t, c.r.IdentitiesFor(p))
	c.applySA("apps", "wi", map[string]string{ClientIDAnnotation: clientA})
	c.eventually(p, wi(clientA, defaultTenant))

	c.applySA("apps", "wi", map[string]string{ClientIDAnnotation: clientB, TenantIDAnnotation: tenantT})
	c.eventually(p, wi(clientB, tenantT))

	// The same name in another namespace binds nothing here.
	c.applySA("other", "wi2", map[string]string{ClientIDAnnotation: clientC})
	c.eventually(pod("other", "wi2", ""), wi(clientC, defaultTenant))
	assert.Empty(t, c.r.IdentitiesFor(pod("apps", "wi2", "")))

	// A client ID known to be assigned to the node is served by IMDS.
	c.applySA("apps", "wi", map[string]string{ClientIDAnnotation: nodeMI})
	c.eventually(p, podauth.Identity{ClientID: nodeMI, Source: podauth.SourceIMDS})

	c.applySA("apps", "wi", map[string]string{"unrelated": "x"})
	c.eventually(p)

	c.applySA("apps", "wi", map[string]string{ClientIDAnnotation: clientA})
	c.eventually(p, wi(clientA, defaultTenant))
	require.NoError(t, c.cp.Client.CoreV1().ServiceAccounts("apps").Delete(c.ctx, "wi", metav1.DeleteOptions{}))
	c.eventually(p)
}

func TestAzureIdentityBindings(t *testing.T) {
	c := startCluster(t)
	web := pod("apps", "default", "web")

	// The binding arrives before its identity.
	c.binding("apps", "web-binding", "web-id", "web")
	c.azureIdentity("apps", "web-id", 0, clientC, resC)
	c.eventually(web, mi(clientC, resC))

	t.Run("label that does not match", func(t *testing.T) {
		assert.Empty(t, c.r.IdentitiesFor(pod("apps", "default", "api")))
		assert.Empty(t, c.r.IdentitiesFor(pod("apps", "default", "")))
	})

	t.Run("other namespaces grant nothing", func(t *testing.T) {
		c.t = t
		// A binding and identity in another namespace, with the same
		// selector, for a pod in apps.
		c.azureIdentity("other", "foreign-id", 0, clientD, resD)
		c.binding("other", "foreign-binding", "foreign-id", "web")
		// A binding in apps naming an identity that exists only in other.
		c.binding("apps", "cross-binding", "foreign-id", "web")
		c.eventually(pod("other", "default", "web"), mi(clientD, resD))
		assert.Equal(t, []podauth.Identity{mi(clientC, resC)}, c.r.IdentitiesFor(web))
		c.remove(AzureIdentityBindingsResource, "apps", "cross-binding")
	})

	t.Run("service principals are skipped", func(t *testing.T) {
		c.t = t
		c.azureIdentity("apps", "sp-id", 1, clientB, "")
		c.binding("apps", "sp-binding", "sp-id", "web")
		c.azureIdentity("apps", "sp-id2", 0, clientA, "")
		c.binding("apps", "sp-binding2", "sp-id2", "web")
		// The type-0 identity bound after the service principal shows up;
		// the service principal never does.
		c.eventually(web, mi(clientA, ""), mi(clientC, resC))
		c.remove(AzureIdentityBindingsResource, "apps", "sp-binding2")
		c.eventually(web, mi(clientC, resC))
	})

	t.Run("identity change and delete", func(t *testing.T) {
		c.t = t
		c.azureIdentity("apps", "web-id", 0, clientD, resD)
		c.eventually(web, mi(clientD, resD))
		c.remove(AzureIdentitiesResource, "apps", "web-id")
		c.eventually(web)
		c.azureIdentity("apps", "web-id", 0, clientC, resC)
		c.eventually(web, mi(clientC, resC))
	})

	t.Run("selector change", func(t *testing.T) {
		c.t = t
		c.binding("apps", "web-binding", "web-id", "api")
		c.eventually(pod("apps", "default", "api"), mi(clientC, resC))
		c.eventually(web)
		c.binding("apps", "web-binding", "web-id", "web")
		c.eventually(web, mi(clientC, resC))
	})

	t.Run("deleting the binding revokes", func(t *testing.T) {
		c.t = t
		c.remove(AzureIdentityBindingsResource, "apps", "web-binding")
		c.eventually(web)
	})
}

func TestUnionAndDedupe(t *testing.T) {
	c := startCluster(t)
	// Two bindings of one selector to two identities of one client ID, a
	// third identity, and a service account annotated with one of the
	// client IDs in other letter case.
	c.azureIdentity("apps", "c1", 0, clientC, resC)
	c.azureIdentity("apps", "c2", 0, clientC, resC)
	c.azureIdentity("apps", "d", 0, clientD, resD)
	c.azureIdentity("apps", "a", 0, clientA, "")
	c.binding("apps", "b1", "c1", "web")
	c.binding("apps", "b2", "c2", "web")
	c.binding("apps", "b3", "d", "web")
	c.binding("apps", "b4", "a", "web")
	onlyBindings := pod("apps", "plain", "web")
	c.eventually(onlyBindings, mi(clientA, ""), mi(clientC, resC), mi(clientD, resD))

	upperD := "DDDDDDDD-0000-0000-0000-000000000004"
	c.applySA("apps", "wi", map[string]string{ClientIDAnnotation: upperD})
	both := pod("apps", "wi", "web")
	// The service account's identity comes first and wins the duplicate.
	c.eventually(both, wi(upperD, defaultTenant), mi(clientA, ""), mi(clientC, resC))

	// The union is computed once and shared.
	first, second := c.r.IdentitiesFor(both), c.r.IdentitiesFor(both)
	require.NotEmpty(t, first)
	assert.Same(t, &first[0], &second[0])

	// A change in the namespace drops the remembered union.
	c.remove(AzureIdentityBindingsResource, "apps", "b4")
	c.eventually(both, wi(upperD, defaultTenant), mi(clientC, resC))
	c.applySA("apps", "wi", map[string]string{ClientIDAnnotation: clientB})
	c.eventually(both, wi(clientB, defaultTenant), mi(clientC, resC), mi(clientD, resD))
}

func TestCRDs(t *testing.T) {
	c := startCluster(t)
	// Unknown and miscased fields are pruned by the structural schema.
	c.apply(AzureIdentitiesResource, "AzureIdentity", "apps", "cased", map[string]any{"type": int64(0), "ClientID": clientA, "clientID": clientB, "clientPassword": map[string]any{"name": "s", "namespace": "apps"}})
	got, err := c.dyn.Resource(AzureIdentitiesResource).Namespace("apps").Get(c.ctx, "cased", metav1.GetOptions{})
	require.NoError(t, err)
	spec, _, _ := unstructured.NestedMap(got.Object, "spec")
	assert.Equal(t, map[string]any{"type": int64(0), "clientID": clientB, "clientPassword": map[string]any{"name": "s", "namespace": "apps"}}, spec)

	// A type that is not an integer is refused.
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": GroupName + "/v1", "kind": "AzureIdentity",
		"metadata": map[string]any{"name": "bad"},
		"spec":     map[string]any{"type": "UserAssignedMSI"},
	}}
	_, err = c.dyn.Resource(AzureIdentitiesResource).Namespace("apps").Create(c.ctx, u, metav1.CreateOptions{})
	require.Error(t, err)
}
