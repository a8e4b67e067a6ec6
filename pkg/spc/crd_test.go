package spc

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// warnings records the API server's Warning headers.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msgs...)
}

// readUnstructured reads a YAML manifest from testdata.
func readUnstructured(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	u := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal(data, &u.Object))
	return u
}

// TestCRDsOnAPIServer installs the chart's CRDs into a real kube-apiserver and
// round-trips upstream-style objects through them with the dynamic client and
// a typed REST client.
func TestCRDsOnAPIServer(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{"../../charts/kvnode/crds"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cfg := rest.CopyConfig(cp.Config)
	warn := &warnings{}
	cfg.WarningHandlerWithContext = warn
	dyn, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	for _, ns := range []string{"default", "apps"} {
		require.NoError(t, cp.EnsureNamespace(ctx, ns))
	}

	t.Run("definitions", func(t *testing.T) {
		ext, err := apiextensionsclient.NewForConfig(cp.Config)
		require.NoError(t, err)
		for _, tc := range []struct{ name, kind, list string }{
			{"secretproviderclasses.secrets-store.csi.x-k8s.io", "SecretProviderClass", "SecretProviderClassList"},
			{"secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io", "SecretProviderClassPodStatus", "SecretProviderClassPodStatusList"},
		} {
			crd, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, tc.name, metav1.GetOptions{})
			require.NoError(t, err)
			assert.Equal(t, GroupName, crd.Spec.Group)
			assert.Equal(t, apiextensionsv1.NamespaceScoped, crd.Spec.Scope)
			assert.Equal(t, tc.kind, crd.Spec.Names.Kind)
			assert.Equal(t, tc.list, crd.Spec.Names.ListKind)
			assert.Empty(t, crd.Spec.Names.ShortNames)
			require.Len(t, crd.Spec.Versions, 2)
			v1, v1alpha1 := crd.Spec.Versions[0], crd.Spec.Versions[1]
			assert.Equal(t, "v1", v1.Name)
			assert.True(t, v1.Served && v1.Storage && !v1.Deprecated)
			assert.Nil(t, v1.Subresources)
			assert.Equal(t, "v1alpha1", v1alpha1.Name)
			assert.True(t, v1alpha1.Served && !v1alpha1.Storage && v1alpha1.Deprecated)
			established := false
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					established = true
				}
				// A non-structural schema would show up as this condition.
				assert.NotEqual(t, apiextensionsv1.NonStructuralSchema, c.Type, c.Message)
			}
			assert.True(t, established, "%s is not established", tc.name)
		}
	})

	t.Run("SecretProviderClass round trip", func(t *testing.T) {
		spcs := dyn.Resource(SecretProviderClassesResource).Namespace("apps")
		in := readUnstructured(t, "azure-workload-identity.yaml")
		created, err := spcs.Create(ctx, in, metav1.CreateOptions{})
		require.NoError(t, err)
		got, err := spcs.Get(ctx, created.GetName(), metav1.GetOptions{})
		require.NoError(t, err)

		var typed SecretProviderClass
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &typed))
		want := loadManifest(t, "azure-workload-identity.yaml")
		assert.Equal(t, want.Spec, typed.Spec, "the API server must keep every field")
		assert.NotEmpty(t, typed.UID)

		// What the driver does with it: parse the parameters read back.
		cfg, err := Parse(typed.Spec.Parameters)
		require.NoError(t, err)
		assert.Equal(t, WorkloadIdentity, cfg.AuthMode())
		assert.Len(t, cfg.Objects, 5)
	})

	t.Run("v1alpha1 manifest is served and read as v1", func(t *testing.T) {
		in := readUnstructured(t, "azure-vm-managed-identity-v1alpha1.yaml")
		_, err := dyn.Resource(SecretProviderClassesResource.GroupResource().WithVersion("v1alpha1")).
			Namespace("default").Create(ctx, in, metav1.CreateOptions{})
		require.NoError(t, err)
		assert.Contains(t, warn.list(), "secrets-store.csi.x-k8s.io/v1alpha1 SecretProviderClass is deprecated; use secrets-store.csi.x-k8s.io/v1")

		got, err := dyn.Resource(SecretProviderClassesResource).Namespace("default").Get(ctx, in.GetName(), metav1.GetOptions{})
		require.NoError(t, err)
		assert.Equal(t, "secrets-store.csi.x-k8s.io/v1", got.GetAPIVersion())
		var typed SecretProviderClass
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &typed))
		cfg, err := Parse(typed.Spec.Parameters)
		require.NoError(t, err)
		assert.Equal(t, VMManagedIdentity, cfg.AuthMode())
		assert.Equal(t, []keyvault.Object{{Name: "storage-key", Type: keyvault.TypeSecret}}, cfg.Objects)
	})

	t.Run("schema refuses non-string parameters and prunes unknown fields", func(t *testing.T) {
		spcs := dyn.Resource(SecretProviderClassesResource).Namespace("default")
		bad := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
			"metadata": map[string]any{"name": "unquoted-bool"},
			"spec":     map[string]any{"provider": "azure", "parameters": map[string]any{"usePodIdentity": false}},
		}}
		_, err := spcs.Create(ctx, bad, metav1.CreateOptions{})
		assert.True(t, apierrors.IsInvalid(err), "want Invalid, got %v", err)

		extra := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
			"metadata": map[string]any{"name": "extra-field"},
			"spec":     map[string]any{"provider": "azure", "notAField": "x", "parameters": map[string]any{"keyvaultName": "kv1"}},
		}}
		created, err := spcs.Create(ctx, extra, metav1.CreateOptions{})
		require.NoError(t, err)
		spec := created.Object["spec"].(map[string]any)
		assert.NotContains(t, spec, "notAField")
		assert.Equal(t, map[string]any{"keyvaultName": "kv1"}, spec["parameters"])
	})

	t.Run("SecretProviderClassPodStatus round trip", func(t *testing.T) {
		statuses := dyn.Resource(SecretProviderClassPodStatusesResource).Namespace("apps")
		in := readUnstructured(t, "podstatus.yaml")
		_, err := statuses.Create(ctx, in, metav1.CreateOptions{})
		require.NoError(t, err)
		got, err := statuses.Get(ctx, in.GetName(), metav1.GetOptions{})
		require.NoError(t, err)
		var typed SecretProviderClassPodStatus
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &typed))
		assert.Equal(t, "node-1", typed.Labels[InternalNodeLabel])
		// Created with its status in one request: no status subresource drops it.
		assert.Equal(t, SecretProviderClassPodStatusStatus{
			PodName:                 "web-0",
			SecretProviderClassName: "azure-kvname-wi",
			Mounted:                 true,
			TargetPath:              "/var/lib/kubelet/pods/7d1c0f0e-5a4b-4c3d-8e2f-1a0b9c8d7e6f/volumes/kubernetes.io~csi/secrets-store-inline/mount",
			Objects: []SecretProviderClassObject{
				{ID: "secret/db-password", Version: "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c"},
				{ID: "cert/web-tls", Version: "0f1e2d3c4b5a69788796a5b4c3d2e1f0"},
			},
		}, typed.Status)

		// Update as the driver does on rotation.
		typed.Status.Objects[0].Version = "99999999999999999999999999999999"
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&typed)
		require.NoError(t, err)
		updated, err := statuses.Update(ctx, &unstructured.Unstructured{Object: m}, metav1.UpdateOptions{})
		require.NoError(t, err)
		var after SecretProviderClassPodStatus
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(updated.Object, &after))
		assert.Equal(t, "99999999999999999999999999999999", after.Status.Objects[0].Version)
	})

	t.Run("typed REST client", func(t *testing.T) {
		scheme := runtime.NewScheme()
		require.NoError(t, AddToScheme(scheme))
		rc := rest.CopyConfig(cp.Config)
		rc.APIPath = "/apis"
		rc.GroupVersion = &SchemeGroupVersion
		rc.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
		client, err := rest.RESTClientFor(rc)
		require.NoError(t, err)

		var list SecretProviderClassList
		require.NoError(t, client.Get().Namespace("apps").Resource("secretproviderclasses").Do(ctx).Into(&list))
		require.Len(t, list.Items, 1)
		assert.Equal(t, "azure-kvname-wi", list.Items[0].Name)
		assert.Equal(t, "contoso-kv-01", list.Items[0].Spec.Parameters["keyvaultName"])

		var ps SecretProviderClassPodStatus
		require.NoError(t, client.Get().Namespace("apps").Resource("secretproviderclasspodstatuses").
			Name("web-0-apps-azure-kvname-wi").Do(ctx).Into(&ps))
		assert.True(t, ps.Status.Mounted)
		assert.Len(t, ps.Status.Objects, 2)
	})
}
