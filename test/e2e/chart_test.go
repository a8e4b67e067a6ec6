package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/pinned"
	"github.com/kvnode/kvnode/test/testenv"
)

// chartNamespace is where the tests install the chart: a namespace of its
// own, as the README recommends, not kube-system.
const chartNamespace = "kvnode"

var chartDir = filepath.Join("..", "..", "charts", "kvnode")

// helmBinary is the pinned Helm CLI: $KVNODE_HELM (make sets it) or the
// cached build of hack/helm-bin.sh.
func helmBinary(t testing.TB) string {
	t.Helper()
	p, err := pinned.Helm.Path()
	require.NoError(t, err, "helm")
	return p
}

// helmCommand is the pinned Helm CLI with args, its cache, configuration
// and data in fresh directories.
func helmCommand(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	return cmd
}

// setArgs turns values into helm's --set flags.
func setArgs(values []string) []string {
	var args []string
	for _, v := range values {
		args = append(args, "--set", v)
	}
	return args
}

// renderChart runs helm template with values and returns the objects.
func renderChart(t testing.TB, values ...string) []*unstructured.Unstructured {
	t.Helper()
	return renderChartIn(t, chartNamespace, values...)
}

// renderChartIn renders the chart into namespace.
func renderChartIn(t testing.TB, namespace string, values ...string) []*unstructured.Unstructured {
	t.Helper()
	out, stderr, err := helmTemplate(t, namespace, setArgs(values)...)
	require.NoError(t, err, "helm template: %s", stderr)
	return decodeObjects(t, out)
}

// helmTemplate runs helm template into namespace with extra arguments and
// returns its output and error output.
func helmTemplate(t testing.TB, namespace string, args ...string) (out []byte, stderr string, err error) {
	t.Helper()
	cmd := helmCommand(t, append([]string{"template", "kvnode", chartDir, "--namespace", namespace}, args...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err = cmd.Output()
	return out, errb.String(), err
}

// decodeObjects decodes a stream of YAML documents.
func decodeObjects(t testing.TB, out []byte) []*unstructured.Unstructured {
	t.Helper()
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
	return installChartRBAC(t, cp, "kvdriver")
}

// installChartRBAC creates the chart's ServiceAccount, ClusterRole and
// ClusterRoleBinding of component (kvdriver, nmi), as the chart renders them
// with its defaults, and returns a client configuration acting as that
// ServiceAccount: the component then runs with the chart's rights and no
// more, and anything the chart forgot fails as Forbidden.
func installChartRBAC(t testing.TB, cp *controlplane.ControlPlane, component string) *rest.Config {
	t.Helper()
	name := "kvnode-" + component
	var rbac []*unstructured.Unstructured
	for _, o := range renderChart(t) {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding":
			if o.GetName() == name {
				rbac = append(rbac, o)
			}
		}
	}
	require.Len(t, rbac, 3, "the chart's ServiceAccount, ClusterRole and ClusterRoleBinding %s", name)
	// A second instance of the component on the same control plane reuses
	// what the first installed.
	if _, err := cp.Client.RbacV1().ClusterRoles().Get(context.Background(), name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		require.NoError(t, cp.EnsureNamespace(context.Background(), chartNamespace))
		applyObjects(t, cp.Config, rbac, false)
	} else {
		require.NoError(t, err)
	}
	cfg, err := cp.AsServiceAccount(context.Background(), chartNamespace, name)
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

// nmiRules is the ClusterRole the chart gives nmi with its defaults: what
// its informers list and watch, and TokenRequest for workload identities.
// TestNMI proves it is enough; this pins it so that it cannot grow unseen.
var nmiRules = []any{
	map[string]any{"apiGroups": []any{""}, "resources": []any{"pods", "serviceaccounts"}, "verbs": []any{"list", "watch"}},
	map[string]any{"apiGroups": []any{""}, "resources": []any{"serviceaccounts/token"}, "verbs": []any{"create"}},
	map[string]any{"apiGroups": []any{"aadpodidentity.k8s.io"}, "resources": []any{"azureidentities", "azureidentitybindings"}, "verbs": []any{"list", "watch"}},
}

// podSpec returns the pod template's spec of a rendered DaemonSet and its
// first container.
func podSpec(t *testing.T, ds *unstructured.Unstructured) (spec, container map[string]any) {
	t.Helper()
	spec, found, err := unstructured.NestedMap(ds.Object, "spec", "template", "spec")
	require.NoError(t, err)
	require.True(t, found)
	containers, _, _ := unstructured.NestedSlice(spec, "containers")
	require.NotEmpty(t, containers)
	return spec, containers[0].(map[string]any)
}

func TestChartLintsRendersAndValidates(t *testing.T) {
	testenv.RequireNetns(t)
	out, err := helmCommand(t, "lint", "--strict", chartDir).CombinedOutput()
	require.NoError(t, err, "helm lint: %s", out)

	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{filepath.Join(chartDir, "crds")}})
	require.NoError(t, cp.EnsureNamespace(context.Background(), chartNamespace))
	for _, tc := range []struct {
		name   string
		values []string
		// nmiArgs are the nmi container's exact arguments; nil: no nmi.
		nmiArgs []string
		// nmiHost is nmi's loopback listener, kvdriver's --nmi-endpoint.
		nmiHost  string
		nmiImage string
		nmiRules []any
		// proxyEnv is kvdriver's token proxy environment; nil: the defaults.
		proxyEnv map[string]string
	}{
		{
			name: "defaults",
			nmiArgs: []string{"--node-name=$(NODE_NAME)", "--listen-addr=$(HOST_IP):2579", "--host-addr=127.0.0.1:2579",
				"--reconcile-interval=30s", "--anti-spoofing=true", "--require-pod-route=true", "--remove-rules-on-exit=false", "-v=2"},
			nmiHost:  "127.0.0.1:2579",
			nmiImage: "ghcr.io/kvnode/nmi:0.1.0",
			nmiRules: nmiRules,
		},
		{
			name:   "flexvolume",
			values: []string{"flexVolume.enabled=true", "kvdriver.objectCacheTTL=30s", "image.tag=v9.9.9"},
			nmiArgs: []string{"--node-name=$(NODE_NAME)", "--listen-addr=$(HOST_IP):2579", "--host-addr=127.0.0.1:2579",
				"--reconcile-interval=30s", "--anti-spoofing=true", "--require-pod-route=true", "--remove-rules-on-exit=false", "-v=2"},
			nmiHost:  "127.0.0.1:2579",
			nmiImage: "ghcr.io/kvnode/nmi:0.1.0",
			nmiRules: nmiRules,
		},
		{
			name: "nmi settings",
			values: []string{"nmi.listenAddress=169.254.20.11", "nmi.listenPort=2580", "nmi.hostPort=2600",
				"nmi.defaultTenantID=5b1f0c8e-7a2d-4c3b-9e1f-2a3b4c5d6e7f", "nmi.nodeIdentities={id-1,id-2}",
				"nmi.skipAzureIdentities=true", "nmi.reconcileInterval=10s", "nmi.antiSpoofing=false", "nmi.requirePodRoute=false",
				"nmi.podInterfacePrefix=cali", "nmi.podCIDR=10.244.0.0/16", "nmi.logVerbosity=4", "nmi.image.tag=v9.9.9",
				"kvdriver.tokenProxy.url=https://proxy.cluster.test/tokens", "kvdriver.tokenProxy.sniName=aproxy.ests.aks", "kvdriver.tokenProxy.caFile=/etc/proxy/ca.crt"},
			nmiArgs: []string{"--node-name=$(NODE_NAME)", "--listen-addr=169.254.20.11:2580", "--host-addr=127.0.0.1:2600",
				"--default-tenant-id=5b1f0c8e-7a2d-4c3b-9e1f-2a3b4c5d6e7f", "--node-identities=id-1,id-2",
				"--skip-azure-identities", "--reconcile-interval=10s", "--anti-spoofing=false", "--require-pod-route=false", "--remove-rules-on-exit=false",
				"--pod-interface-prefix=cali", "--pod-cidr=10.244.0.0/16", "-v=4"},
			nmiHost:  "127.0.0.1:2600",
			nmiImage: "ghcr.io/kvnode/nmi:v9.9.9",
			nmiRules: nmiRules[:2],
			proxyEnv: map[string]string{"AZURE_KUBERNETES_TOKEN_PROXY": "https://proxy.cluster.test/tokens",
				"AZURE_KUBERNETES_SNI_NAME": "aproxy.ests.aks", "AZURE_KUBERNETES_CA_FILE": "/etc/proxy/ca.crt"},
		},
		{
			name:     "nmi disabled",
			values:   []string{"nmi.enabled=false", "kvdriver.tokenProxy.url="},
			proxyEnv: map[string]string{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := renderChart(t, tc.values...)
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
			assert.Equal(t, []any{map[string]any{"audience": "api://AzureADTokenExchange"}, map[string]any{"audience": "api://AKSIdentityBinding"}},
				spec["tokenRequests"], "workload identity and AKS identity binding")

			ds := byKind["DaemonSet/kvnode-kvdriver"]
			kvSpec, kvdriver := podSpec(t, ds)
			wantProxy := tc.proxyEnv
			if wantProxy == nil {
				wantProxy = map[string]string{"AZURE_KUBERNETES_TOKEN_PROXY": "https://kubernetes.default.svc.cluster.local",
					"AZURE_KUBERNETES_CA_FILE": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"}
			}
			gotProxy := map[string]string{}
			for _, e := range kvdriver["env"].([]any) {
				name, _ := e.(map[string]any)["name"].(string)
				if strings.HasPrefix(name, "AZURE_KUBERNETES_") {
					gotProxy[name], _ = e.(map[string]any)["value"].(string)
				}
			}
			assert.Equal(t, wantProxy, gotProxy, "kvdriver's token proxy environment")
			args := kvdriver["args"]
			assert.Contains(t, args, "--endpoint=unix:///csi/csi.sock")
			inits, found, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "initContainers")
			if tc.name == "flexvolume" {
				require.True(t, found)
				assert.Equal(t, []any{"install-flexvolume", "--dir", "/flexvolume/azure~kv"}, inits[0].(map[string]any)["args"])
				assert.Contains(t, args, "--object-cache-ttl=30s")
				assert.Equal(t, "ghcr.io/kvnode/kvnode:v9.9.9", kvdriver["image"])
			} else {
				assert.False(t, found, "no FlexVolume installer unless enabled")
			}

			if tc.nmiArgs == nil {
				for _, key := range []string{"DaemonSet/kvnode-nmi", "ServiceAccount/kvnode-nmi", "ClusterRole/kvnode-nmi", "ClusterRoleBinding/kvnode-nmi"} {
					assert.NotContains(t, byKind, key, "nmi is disabled")
				}
				assert.NotContains(t, fmt.Sprint(args), "--nmi-endpoint", "kvdriver keeps its default endpoint without nmi")
				assert.Nil(t, kvSpec["hostNetwork"], "kvdriver needs the host network only to reach nmi")
			} else {
				checkNMI(t, byKind, tc.nmiArgs, tc.nmiHost, tc.nmiImage, tc.nmiRules)
				// kvdriver asks nmi's loopback listener, so it shares the
				// node's network namespace.
				assert.Contains(t, args, "--nmi-endpoint=http://"+tc.nmiHost)
				assert.Equal(t, true, kvSpec["hostNetwork"])
				assert.Equal(t, "ClusterFirstWithHostNet", kvSpec["dnsPolicy"])
			}

			checkContainers(t, byKind)

			// The API server validates every object (schemas, admission).
			applyObjects(t, cp.Config, objs, true)
		})
	}
}

// checkNMI checks the rendered nmi DaemonSet and RBAC.
func checkNMI(t *testing.T, byKind map[string]*unstructured.Unstructured, wantArgs []string, host, image string, rules []any) {
	t.Helper()
	require.Contains(t, byKind, "DaemonSet/kvnode-nmi")
	spec, nmi := podSpec(t, byKind["DaemonSet/kvnode-nmi"])
	assert.Equal(t, "kvnode-nmi", spec["serviceAccountName"])
	assert.Equal(t, image, nmi["image"])
	assert.Equal(t, true, spec["hostNetwork"], "the rules and the listeners are the node's")
	assert.Equal(t, "ClusterFirstWithHostNet", spec["dnsPolicy"])
	assert.Equal(t, "system-node-critical", spec["priorityClassName"])
	assert.Equal(t, []any{map[string]any{"operator": "Exists"}}, spec["tolerations"])
	assert.Equal(t, map[string]any{"kubernetes.io/os": "linux"}, spec["nodeSelector"])

	var args []string
	for _, a := range nmi["args"].([]any) {
		args = append(args, a.(string))
	}
	assert.Equal(t, wantArgs, args)
	env := map[string]string{}
	for _, e := range nmi["env"].([]any) {
		name, _, _ := unstructured.NestedString(e.(map[string]any), "name")
		path, _, _ := unstructured.NestedString(e.(map[string]any), "valueFrom", "fieldRef", "fieldPath")
		env[name] = path
	}
	assert.Equal(t, map[string]string{"NODE_NAME": "spec.nodeName", "HOST_IP": "status.hostIP"}, env)

	sc := nmi["securityContext"].(map[string]any)
	assert.Nil(t, sc["privileged"], "nmi needs capabilities, not privileged")
	assert.Equal(t, false, sc["allowPrivilegeEscalation"])
	assert.Equal(t, true, sc["readOnlyRootFilesystem"])
	assert.Equal(t, map[string]any{"drop": []any{"ALL"}, "add": []any{"NET_ADMIN", "NET_RAW"}}, sc["capabilities"])

	// Probes go to the loopback listener, which the kubelet reaches on
	// the host network.
	hostAddr, port, _ := strings.Cut(host, ":")
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		get, found, _ := unstructured.NestedMap(nmi, probe, "httpGet")
		require.True(t, found, probe)
		assert.Equal(t, hostAddr, get["host"], probe)
		assert.Equal(t, path, get["path"], probe)
		assert.Equal(t, port, fmt.Sprint(get["port"]), probe)
	}
	vols, _, _ := unstructured.NestedSlice(spec, "volumes")
	assert.Equal(t, []any{map[string]any{"name": "xtables-lock", "hostPath": map[string]any{"path": "/run/xtables.lock", "type": "FileOrCreate"}}}, vols,
		"iptables' lock and nothing else of the node")

	require.Contains(t, byKind, "ClusterRole/kvnode-nmi")
	assert.Equal(t, rules, byKind["ClusterRole/kvnode-nmi"].Object["rules"])
	require.Contains(t, byKind, "ClusterRoleBinding/kvnode-nmi")
	subjects, _, _ := unstructured.NestedSlice(byKind["ClusterRoleBinding/kvnode-nmi"].Object, "subjects")
	assert.Equal(t, []any{map[string]any{"kind": "ServiceAccount", "name": "kvnode-nmi", "namespace": chartNamespace}}, subjects)
	require.Contains(t, byKind, "ServiceAccount/kvnode-nmi")
}

// TestChartTokensInSecrets: from Kubernetes 1.35 the CSIDriver asks
// kubelet for the pods' service-account tokens in the request's secrets
// (kept out of the volume context, which CSI tooling logs); on older
// clusters the field does not exist and is left out.
func TestChartTokensInSecrets(t *testing.T) {
	for _, tc := range []struct {
		kube string
		want any
	}{
		{"1.30.0", nil},
		{"1.34.9", nil},
		{"1.35.0", true},
		{"1.37.2", true},
	} {
		t.Run(tc.kube, func(t *testing.T) {
			out, stderr, err := helmTemplate(t, chartNamespace, "--kube-version", tc.kube)
			require.NoError(t, err, "helm template: %s", stderr)
			drv := kinds(decodeObjects(t, out))["CSIDriver/secrets-store.csi.k8s.io"]
			require.NotNil(t, drv)
			got, found, err := unstructured.NestedFieldNoCopy(drv.Object, "spec", "serviceAccountTokenInSecrets")
			require.NoError(t, err)
			if tc.want == nil {
				assert.False(t, found, "serviceAccountTokenInSecrets on Kubernetes %s", tc.kube)
				return
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestChartMountsExtraFiles: a cluster on Azure Stack mounts its Azure
// environment file into kvdriver (cloudEnvFileName names a path in
// kvdriver's filesystem), as upstream's users add linux.volumes.
func TestChartMountsExtraFiles(t *testing.T) {
	byKind := kinds(renderChart(t,
		"kvdriver.extraVolumes[0].name=azurestack",
		"kvdriver.extraVolumes[0].hostPath.path=/etc/kubernetes/azurestackcloud.json",
		"kvdriver.extraVolumes[0].hostPath.type=File",
		"kvdriver.extraVolumeMounts[0].name=azurestack",
		"kvdriver.extraVolumeMounts[0].mountPath=/etc/kubernetes/azurestackcloud.json",
		"kvdriver.extraVolumeMounts[0].readOnly=true",
	))
	ds := byKind["DaemonSet/kvnode-kvdriver"]
	require.NotNil(t, ds)
	volumes, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "volumes")
	require.NoError(t, err)
	assert.Contains(t, volumes, map[string]any{"name": "azurestack",
		"hostPath": map[string]any{"path": "/etc/kubernetes/azurestackcloud.json", "type": "File"}})
	containers, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	require.NoError(t, err)
	mounts := containers[0].(map[string]any)["volumeMounts"]
	assert.Equal(t, "kvdriver", containers[0].(map[string]any)["name"])
	assert.Contains(t, mounts, map[string]any{"name": "azurestack", "mountPath": "/etc/kubernetes/azurestackcloud.json", "readOnly": true})
	assert.Len(t, mounts, 5, "the default mounts (plugin, pods and two providers directories) and the extra one")
}

// TestChartMountsProviderDirs: the provider plugins' socket directories
// are mounted into kvdriver at their node paths and passed to it.
func TestChartMountsProviderDirs(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  []string
		dirs []string
	}{
		{"defaults", nil, []string{"/etc/kubernetes/secrets-store-csi-providers", "/var/run/secrets-store-csi-providers"}},
		{"one", []string{"kvdriver.providersDirs={/opt/providers}"}, []string{"/opt/providers"}},
		{"none", []string{"kvdriver.providersDirs=null"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := kinds(renderChart(t, tc.set...))["DaemonSet/kvnode-kvdriver"]
			require.NotNil(t, ds)
			volumes, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "volumes")
			require.NoError(t, err)
			containers, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
			require.NoError(t, err)
			kvdriver := containers[0].(map[string]any)
			mounts := kvdriver["volumeMounts"].([]any)
			var args []string
			for _, a := range kvdriver["args"].([]any) {
				args = append(args, a.(string))
			}
			for i, dir := range tc.dirs {
				name := fmt.Sprintf("providers-dir-%d", i)
				assert.Contains(t, volumes, map[string]any{"name": name, "hostPath": map[string]any{"path": dir, "type": "DirectoryOrCreate"}})
				assert.Contains(t, mounts, map[string]any{"name": name, "mountPath": dir})
			}
			if tc.dirs == nil {
				assert.Len(t, mounts, 2)
				for _, a := range args {
					assert.NotContains(t, a, "--providers-dir")
				}
				return
			}
			assert.Contains(t, args, "--providers-dir="+strings.Join(tc.dirs, ","))
		})
	}
}
