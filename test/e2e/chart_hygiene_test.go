package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// podContainers returns the init containers and containers of a rendered
// DaemonSet's pod template, by name.
func podContainers(t *testing.T, ds *unstructured.Unstructured) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, field := range []string{"initContainers", "containers"} {
		list, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", field)
		require.NoError(t, err)
		for _, c := range list {
			c := c.(map[string]any)
			out[c["name"].(string)] = c
		}
	}
	return out
}

// checkContainers checks the security context and resources of every
// container of the rendered DaemonSets: RuntimeDefault seccomp for both
// pods; no privilege escalation, a read-only root filesystem and no
// capability but the ones named for every container but kvdriver's, which
// is privileged (and so cannot refuse privilege escalation); CPU and memory
// requests and a memory limit everywhere.
func checkContainers(t *testing.T, byKind map[string]*unstructured.Unstructured) {
	t.Helper()
	for _, name := range []string{"DaemonSet/kvnode-kvdriver", "DaemonSet/kvnode-nmi"} {
		ds, ok := byKind[name]
		if !ok {
			continue
		}
		seccomp, _, _ := unstructured.NestedString(ds.Object, "spec", "template", "spec", "securityContext", "seccompProfile", "type")
		assert.Equal(t, "RuntimeDefault", seccomp, "%s: the pod's seccomp profile", name)
		for cname, c := range podContainers(t, ds) {
			where := name + " container " + cname
			sc, _ := c["securityContext"].(map[string]any)
			require.NotNil(t, sc, where)
			assert.Equal(t, true, sc["readOnlyRootFilesystem"], where)
			if cname == "kvdriver" {
				assert.Equal(t, true, sc["privileged"], where)
				assert.NotContains(t, sc, "allowPrivilegeEscalation", "%s: the API server refuses allowPrivilegeEscalation: false when privileged", where)
			} else {
				assert.NotContains(t, sc, "privileged", where)
				assert.Equal(t, false, sc["allowPrivilegeEscalation"], where)
				drop, _, _ := unstructured.NestedStringSlice(sc, "capabilities", "drop")
				assert.Equal(t, []string{"ALL"}, drop, where)
				if cname != "nmi" { // nmi's two capabilities: checkNMI
					_, added, _ := unstructured.NestedStringSlice(sc, "capabilities", "add")
					assert.False(t, added, "%s adds no capability", where)
				}
			}
			res, _ := c["resources"].(map[string]any)
			for _, path := range [][]string{{"requests", "cpu"}, {"requests", "memory"}, {"limits", "memory"}} {
				v, found, _ := unstructured.NestedFieldNoCopy(res, path...)
				assert.True(t, found && v != nil && fmt.Sprint(v) != "", "%s: resources.%s", where, strings.Join(path, "."))
			}
		}
	}
}

// Every container's resources come from values, the sidecars' and the
// FlexVolume installer's included.
func TestChartContainerResources(t *testing.T) {
	byKind := kinds(renderChart(t, "flexVolume.enabled=true",
		"registrar.resources.limits.memory=80Mi", "livenessProbe.resources.requests.cpu=7m",
		"flexVolume.resources.limits.cpu=100m", "kvdriver.resources.limits.cpu=1", "nmi.resources.requests.memory=48Mi"))
	checkContainers(t, byKind)
	kv := podContainers(t, byKind["DaemonSet/kvnode-kvdriver"])
	nmi := podContainers(t, byKind["DaemonSet/kvnode-nmi"])
	for _, tc := range []struct {
		container map[string]any
		path      []string
		want      any
	}{
		{kv["node-driver-registrar"], []string{"limits", "memory"}, "80Mi"},
		{kv["node-driver-registrar"], []string{"requests", "cpu"}, "5m"},
		{kv["liveness-probe"], []string{"requests", "cpu"}, "7m"},
		{kv["install-flexvolume"], []string{"limits", "cpu"}, "100m"},
		{kv["install-flexvolume"], []string{"limits", "memory"}, "64Mi"},
		{kv["kvdriver"], []string{"limits", "cpu"}, int64(1)},
		{kv["kvdriver"], []string{"limits", "memory"}, "256Mi"},
		{nmi["nmi"], []string{"requests", "memory"}, "48Mi"},
	} {
		got, _, _ := unstructured.NestedFieldNoCopy(tc.container, append([]string{"resources"}, tc.path...)...)
		assert.EqualValues(t, tc.want, got, "%s resources.%s", tc.container["name"], strings.Join(tc.path, "."))
	}
}
