package spc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func fullClass() *SecretProviderClass {
	return &SecretProviderClass{
		TypeMeta:   metav1.TypeMeta{APIVersion: "secrets-store.csi.x-k8s.io/v1", Kind: "SecretProviderClass"},
		ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", Labels: map[string]string{"l": "1"}},
		Spec: SecretProviderClassSpec{
			Provider:   "azure",
			Parameters: map[string]string{"keyvaultName": "kv"},
			SecretObjects: []SecretObject{{
				SecretName:  "s",
				Type:        "Opaque",
				Labels:      map[string]string{"a": "1"},
				Annotations: map[string]string{"b": "2"},
				Data:        []SecretObjectData{{ObjectName: "o", Key: "k"}},
			}},
		},
		Status: SecretProviderClassStatus{ByPod: []ByPodStatus{{ID: "p", Namespace: "ns"}}},
	}
}

func fullPodStatus() *SecretProviderClassPodStatus {
	return &SecretProviderClassPodStatus{
		TypeMeta:   metav1.TypeMeta{APIVersion: "secrets-store.csi.x-k8s.io/v1", Kind: "SecretProviderClassPodStatus"},
		ObjectMeta: metav1.ObjectMeta{Name: "p-ns-c", Namespace: "ns", Labels: map[string]string{InternalNodeLabel: "n1"}},
		Status: SecretProviderClassPodStatusStatus{
			PodName: "p", SecretProviderClassName: "c", Mounted: true, TargetPath: "/t",
			Objects: []SecretProviderClassObject{{ID: "secret/s", Version: "v1"}},
		},
	}
}

func TestUnmarshalSecretProviderClass(t *testing.T) {
	spc := loadManifest(t, "azure-workload-identity.yaml")
	assert.Equal(t, "SecretProviderClass", spc.Kind)
	assert.Equal(t, "secrets-store.csi.x-k8s.io/v1", spc.APIVersion)
	assert.Equal(t, "azure-kvname-wi", spc.Name)
	assert.Equal(t, "apps", spc.Namespace)
	assert.Equal(t, Provider("azure"), spc.Spec.Provider)
	assert.Equal(t, "contoso-kv-01", spc.Spec.Parameters["keyvaultName"])
	assert.Contains(t, spc.Spec.Parameters["objects"], "objectName: db-password\n")
	assert.Equal(t, []SecretObject{
		{
			SecretName:  "web-tls",
			Type:        "kubernetes.io/tls",
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{"team": "payments"},
			Data:        []SecretObjectData{{ObjectName: "web-tls", Key: "tls.crt"}, {ObjectName: "web.pfx", Key: "tls.pfx"}},
		},
		{SecretName: "db", Type: "Opaque", Data: []SecretObjectData{{ObjectName: "db/password", Key: "password"}}},
	}, spc.Spec.SecretObjects)
}

func TestUnmarshalSecretProviderClassPodStatus(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "podstatus.yaml"))
	require.NoError(t, err)
	var ps SecretProviderClassPodStatus
	require.NoError(t, yaml.UnmarshalStrict(data, &ps))
	assert.Equal(t, "web-0-apps-azure-kvname-wi", ps.Name)
	assert.Equal(t, "node-1", ps.Labels[InternalNodeLabel])
	assert.Equal(t, SecretProviderClassPodStatusStatus{
		PodName:                 "web-0",
		SecretProviderClassName: "azure-kvname-wi",
		Mounted:                 true,
		TargetPath:              "/var/lib/kubelet/pods/7d1c0f0e-5a4b-4c3d-8e2f-1a0b9c8d7e6f/volumes/kubernetes.io~csi/secrets-store-inline/mount",
		Objects: []SecretProviderClassObject{
			{ID: "secret/db-password", Version: "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c"},
			{ID: "cert/web-tls", Version: "0f1e2d3c4b5a69788796a5b4c3d2e1f0"},
		},
	}, ps.Status)
}

// TestJSONFieldNames pins the wire names to upstream's.
func TestJSONFieldNames(t *testing.T) {
	data, err := json.Marshal(fullClass())
	require.NoError(t, err)
	assert.JSONEq(t, `{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
		"metadata": {"name": "c", "namespace": "ns", "labels": {"l": "1"}},
		"spec": {
			"provider": "azure",
			"parameters": {"keyvaultName": "kv"},
			"secretObjects": [{"secretName": "s", "type": "Opaque", "labels": {"a": "1"}, "annotations": {"b": "2"},
				"data": [{"objectName": "o", "key": "k"}]}]
		},
		"status": {"byPod": [{"id": "p", "namespace": "ns"}]}
	}`, string(data))

	data, err = json.Marshal(fullPodStatus())
	require.NoError(t, err)
	assert.JSONEq(t, `{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClassPodStatus",
		"metadata": {"name": "p-ns-c", "namespace": "ns", "labels": {"internal.secrets-store.csi.k8s.io/node-name": "n1"}},
		"status": {"podName": "p", "secretProviderClassName": "c", "mounted": true, "targetPath": "/t",
			"objects": [{"id": "secret/s", "version": "v1"}]}
	}`, string(data))
}

func TestDeepCopySecretProviderClass(t *testing.T) {
	orig := fullClass()
	cp := orig.DeepCopy()
	require.Equal(t, orig, cp)

	cp.Labels["l"] = "changed"
	cp.Spec.Parameters["keyvaultName"] = "changed"
	cp.Spec.SecretObjects[0].Labels["a"] = "changed"
	cp.Spec.SecretObjects[0].Annotations["b"] = "changed"
	cp.Spec.SecretObjects[0].Data[0].Key = "changed"
	cp.Spec.SecretObjects[0].SecretName = "changed"
	cp.Status.ByPod[0].ID = "changed"
	assert.Equal(t, fullClass(), orig, "the original must not share memory with its copy")

	obj := orig.DeepCopyObject()
	assert.Equal(t, orig, obj)
	assert.NotSame(t, orig, obj)

	var nilClass *SecretProviderClass
	assert.Nil(t, nilClass.DeepCopy())
	assert.Nil(t, nilClass.DeepCopyObject())
	empty := &SecretProviderClass{}
	assert.Equal(t, empty, empty.DeepCopy(), "nil maps and slices stay nil")
}

func TestDeepCopyLists(t *testing.T) {
	list := &SecretProviderClassList{ListMeta: metav1.ListMeta{ResourceVersion: "7"}, Items: []SecretProviderClass{*fullClass()}}
	cp := list.DeepCopyObject().(*SecretProviderClassList)
	require.Equal(t, list, cp)
	cp.Items[0].Spec.Parameters["keyvaultName"] = "changed"
	cp.Items[0].Name = "changed"
	assert.Equal(t, "kv", list.Items[0].Spec.Parameters["keyvaultName"])
	assert.Equal(t, "c", list.Items[0].Name)

	psList := &SecretProviderClassPodStatusList{Items: []SecretProviderClassPodStatus{*fullPodStatus()}}
	psCopy := psList.DeepCopyObject().(*SecretProviderClassPodStatusList)
	require.Equal(t, psList, psCopy)
	psCopy.Items[0].Status.Objects[0].Version = "changed"
	psCopy.Items[0].Labels[InternalNodeLabel] = "changed"
	assert.Equal(t, fullPodStatus(), &psList.Items[0])

	var nilList *SecretProviderClassPodStatusList
	assert.Nil(t, nilList.DeepCopyObject())
}

func TestDeepCopyPodStatus(t *testing.T) {
	orig := fullPodStatus()
	cp := orig.DeepCopyObject().(*SecretProviderClassPodStatus)
	require.Equal(t, orig, cp)
	cp.Status.Objects[0].ID = "changed"
	cp.Status.Objects = append(cp.Status.Objects, SecretProviderClassObject{ID: "x"})
	cp.Labels[InternalNodeLabel] = "changed"
	assert.Equal(t, fullPodStatus(), orig)
}

func TestSchemeAndUnstructuredConversion(t *testing.T) {
	scheme := runtime.NewScheme()
	require.NoError(t, AddToScheme(scheme))
	for kind, want := range map[string]runtime.Object{
		"SecretProviderClass":              &SecretProviderClass{},
		"SecretProviderClassList":          &SecretProviderClassList{},
		"SecretProviderClassPodStatus":     &SecretProviderClassPodStatus{},
		"SecretProviderClassPodStatusList": &SecretProviderClassPodStatusList{},
	} {
		obj, err := scheme.New(SchemeGroupVersion.WithKind(kind))
		require.NoError(t, err, kind)
		assert.IsType(t, want, obj, kind)
	}
	gvks, _, err := scheme.ObjectKinds(&SecretProviderClass{})
	require.NoError(t, err)
	assert.Equal(t, "secrets-store.csi.x-k8s.io/v1, Kind=SecretProviderClass", gvks[0].String())

	for _, orig := range []runtime.Object{fullClass(), fullPodStatus()} {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(orig)
		require.NoError(t, err)
		u := &unstructured.Unstructured{Object: m}
		back := orig.DeepCopyObject()
		// Zero it, then fill it from the unstructured form.
		switch b := back.(type) {
		case *SecretProviderClass:
			*b = SecretProviderClass{}
		case *SecretProviderClassPodStatus:
			*b = SecretProviderClassPodStatus{}
		}
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, back))
		assert.Equal(t, orig, back)
	}
	assert.Equal(t, "secretproviderclasses", SecretProviderClassesResource.Resource)
	assert.Equal(t, "secretproviderclasspodstatuses", SecretProviderClassPodStatusesResource.Resource)
	assert.Equal(t, SchemeGroupVersion, SecretProviderClassesResource.GroupVersion())
}
