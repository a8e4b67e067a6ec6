package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

const chartNamespace = "kube-system"

var chartDir = filepath.Join("..", "..", "charts", "kvnode")

// helmBinary is the pinned Helm CLI: $KVNODE_HELM (make sets it) or the
// cached build of hack/helm-bin.sh.
func helmBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KVNODE_HELM"); p != "" {
		return p
	}
	out, err := exec.Command(filepath.Join("..", "..", "hack", "helm-bin.sh")).Output()
	require.NoError(t, err, "helm: run `make test` (it builds the pinned Helm first) or set KVNODE_HELM")
	return strings.TrimSpace(string(out))
}

// renderChart runs helm template with values and returns the objects.
func renderChart(t testing.TB, values ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "kvnode", chartDir, "--namespace", chartNamespace}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "helm template: %s", stderr.String())
	var objs []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// applyObjects creates objs through the API server, for real or as a
// server-side dry run (which still runs validation and admission).
func applyObjects(t testing.TB, cfg *rest.Config, objs []*unstructured.Unstructured, dryRun bool) {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	require.NoError(t, err)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	opts := metav1.CreateOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		require.NoError(t, err, "%s", gvk)
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if o.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		_, err = ri.Create(context.Background(), o, opts)
		require.NoError(t, err, "create %s %s", gvk.Kind, o.GetName())
	}
}

// installDriverRBAC creates the chart's ServiceAccount, ClusterRole and
// binding for kvdriver and returns a client configuration acting as that
// ServiceAccount, so the e2e driver runs with exactly the chart's rights.
func installDriverRBAC(t testing.TB, cp *controlplane.ControlPlane) *rest.Config {
	t.Helper()
	var rbac []*unstructured.Unstructured
	for _, o := range renderChart(t) {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding":
			rbac = append(rbac, o)
		}
	}
	require.Len(t, rbac, 3)
	applyObjects(t, cp.Config, rbac, false)
	cfg, err := cp.AsServiceAccount(context.Background(), chartNamespace, "kvnode-kvdriver")
	require.NoError(t, err)
	return cfg
}

func kinds(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	out := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		out[o.GetKind()+"/"+o.GetName()] = o
	}
	return out
}

func TestChartLintsRendersAndValidates(t *testing.T) {
	testenv.RequireNetns(t)
	lint := exec.Command(helmBinary(t), "lint", "--strict", chartDir)
	lint.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := lint.CombinedOutput()
	require.NoError(t, err, "helm lint: %s", out)

	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{filepath.Join(chartDir, "crds")}})
	for name, values := range map[string][]string{
		"defaults":   nil,
		"flexvolume": {"flexVolume.enabled=true", "kvdriver.objectCacheTTL=30s", "image.tag=v9.9.9"},
	} {
		t.Run(name, func(t *testing.T) {
			objs := renderChart(t, values...)
			byKind := kinds(objs)
			require.Contains(t, byKind, "CSIDriver/secrets-store.csi.k8s.io")
			require.Contains(t, byKind, "DaemonSet/kvnode-kvdriver")
			require.Contains(t, byKind, "ClusterRole/kvnode-kvdriver")

			// The CSIDriver must match the upstream driver's, or existing
			// pod specs stop working.
			spec := byKind["CSIDriver/secrets-store.csi.k8s.io"].Object["spec"].(map[string]any)
			assert.Equal(t, false, spec["attachRequired"])
			assert.Equal(t, true, spec["podInfoOnMount"])
			assert.Equal(t, true, spec["requiresRepublish"])
			assert.Equal(t, []any{"Ephemeral"}, spec["volumeLifecycleModes"])
			assert.Equal(t, []any{map[string]any{"audience": "api://AzureADTokenExchange"}}, spec["tokenRequests"])

			ds := byKind["DaemonSet/kvnode-kvdriver"]
			containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
			args := containers[0].(map[string]any)["args"]
			assert.Contains(t, args, "--endpoint=unix:///csi/csi.sock")
			inits, found, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "initContainers")
			if name == "flexvolume" {
				require.True(t, found)
				assert.Equal(t, []any{"install-flexvolume", "--dir", "/flexvolume/azure~kv"}, inits[0].(map[string]any)["args"])
				assert.Contains(t, args, "--object-cache-ttl=30s")
				assert.Equal(t, "ghcr.io/kvnode/kvnode:v9.9.9", containers[0].(map[string]any)["image"])
			} else {
				assert.False(t, found, "no FlexVolume installer unless enabled")
			}

			// The API server validates every object (schemas, admission).
			applyObjects(t, cp.Config, objs, true)
		})
	}
}
