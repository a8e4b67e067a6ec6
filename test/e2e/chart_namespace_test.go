package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/rest"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

// The chart installs into any namespace: every namespaced object is
// there, and everything that names kvnode's ServiceAccounts (the bindings'
// subjects, the admission policy's match) names them there.
func TestChartInstallsIntoItsNamespace(t *testing.T) {
	const ns = "secrets-infra"
	objs := renderChartIn(t, ns)
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "DaemonSet":
			assert.Equal(t, ns, o.GetNamespace(), "%s %s", o.GetKind(), o.GetName())
		default:
			assert.Empty(t, o.GetNamespace(), "%s %s is cluster-scoped", o.GetKind(), o.GetName())
		}
		assert.NotContains(t, fmt.Sprint(o.Object), "kube-system", "%s %s", o.GetKind(), o.GetName())
	}
	byKind := kinds(objs)
	for _, name := range []string{"kvnode-kvdriver", "kvnode-nmi"} {
		subjects, _, _ := unstructured.NestedSlice(byKind["ClusterRoleBinding/"+name].Object, "subjects")
		assert.Equal(t, []any{map[string]any{"kind": "ServiceAccount", "name": name, "namespace": ns}}, subjects)
	}
	conds, _, _ := unstructured.NestedSlice(byKind["ValidatingAdmissionPolicy/kvnode-kvdriver-secrets"].Object, "spec", "matchConditions")
	require.Len(t, conds, 1)
	assert.Equal(t, `request.userInfo.username == "system:serviceaccount:`+ns+`:kvnode-kvdriver"`, conds[0].(map[string]any)["expression"])
}

// versionedKubeconfig returns a kubeconfig for helm that reaches cp's
// kube-apiserver as its admin through a loopback proxy answering /version
// with the version it is built from (tools/kube): built without version
// stamps, it reports v0.0.0, which the chart's kubeVersion refuses.
func versionedKubeconfig(t *testing.T, cp *controlplane.ControlPlane) string {
	t.Helper()
	target, err := url.Parse(cp.Config.Host)
	require.NoError(t, err)
	rt, err := rest.TransportFor(cp.Config)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = rt
	mux := http.NewServeMux()
	mux.Handle("/", proxy)
	mux.HandleFunc("/version", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(version.Info{Major: "1", Minor: "37", GitVersion: "v1.37.2", Platform: "linux/amd64"})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	kubeconfig, err := cp.WriteKubeconfig(t.TempDir(), &rest.Config{Host: srv.URL})
	require.NoError(t, err)
	return kubeconfig
}

// TestChartPodSecurity: on a real kube-apiserver's Pod Security admission,
// the pods of both DaemonSets, exactly as rendered, are refused by a
// namespace enforcing baseline (each for the reasons the README gives) and
// admitted by one enforcing privileged; and the chart refuses to install
// into a namespace whose label names another level than privileged.
func TestChartPodSecurity(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{filepath.Join(chartDir, "crds")}})
	ctx := callCtx(t)
	for ns, level := range map[string]string{"kvnode-baseline": "baseline", "kvnode-privileged": "privileged"} {
		_, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"pod-security.kubernetes.io/enforce": level}}}, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	// A pod of the DaemonSet's template, on a node, as the DaemonSet
	// controller would create it.
	podOf := func(t *testing.T, ds *unstructured.Unstructured, ns string) *corev1.Pod {
		t.Helper()
		tmpl, _, err := unstructured.NestedMap(ds.Object, "spec", "template")
		require.NoError(t, err)
		var pt corev1.PodTemplateSpec
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &pt))
		pod := &corev1.Pod{ObjectMeta: pt.ObjectMeta, Spec: pt.Spec}
		pod.Name, pod.Namespace, pod.Spec.NodeName = ds.GetName()+"-x", ns, "node-1"
		return pod
	}
	byKind := kinds(renderChart(t, "flexVolume.enabled=true"))
	for _, tc := range []struct {
		ds string
		// violations are what baseline refuses, as the API server words
		// them.
		violations []string
		// notViolations are what the pod does not need.
		notViolations []string
	}{
		{"DaemonSet/kvnode-kvdriver",
			[]string{`privileged (container "kvdriver" must not set securityContext.privileged=true)`, "host namespaces (hostNetwork=true)",
				`hostPath volumes (volumes "plugin-dir", "registration-dir", "pods-dir"`, "hostPort", `"flexvolume-dir"`},
			[]string{"seccompProfile", "capabilities"}},
		{"DaemonSet/kvnode-nmi",
			[]string{"host namespaces (hostNetwork=true)", `hostPath volumes (volume "xtables-lock")`,
				`non-default capabilities (container "nmi" must not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)`},
			[]string{"privileged", "seccompProfile", "hostPort"}},
	} {
		t.Run(tc.ds, func(t *testing.T) {
			ds := byKind[tc.ds]
			require.NotNil(t, ds)
			_, err := cp.Client.CoreV1().Pods("kvnode-baseline").Create(ctx, podOf(t, ds, "kvnode-baseline"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			require.True(t, apierrors.IsForbidden(err), "baseline refuses the pod: %v", err)
			msg := err.Error()
			assert.Contains(t, msg, `violates PodSecurity "baseline:latest"`)
			for _, v := range tc.violations {
				assert.Contains(t, msg, v)
			}
			for _, v := range tc.notViolations {
				assert.NotContains(t, msg, v)
			}
			_, err = cp.Client.CoreV1().Pods("kvnode-privileged").Create(ctx, podOf(t, ds, "kvnode-privileged"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			require.NoError(t, err, "privileged admits the pod")
		})
	}

	kubeconfig := versionedKubeconfig(t, cp)
	_, stderr, err := helmTemplate(t, "kvnode-baseline", "--dry-run=server", "--kubeconfig", kubeconfig)
	require.Error(t, err, "the chart refuses a namespace enforcing baseline")
	assert.Contains(t, stderr, `namespace kvnode-baseline enforces Pod Security level "baseline"`)
	assert.Contains(t, stderr, "kubectl label --overwrite namespace kvnode-baseline pod-security.kubernetes.io/enforce=privileged")
	_, stderr, err = helmTemplate(t, "kvnode-privileged", "--dry-run=server", "--kubeconfig", kubeconfig)
	require.NoError(t, err, "helm template: %s", stderr)
	require.NoError(t, cp.EnsureNamespace(context.Background(), "kvnode-unlabelled"))
	_, stderr, err = helmTemplate(t, "kvnode-unlabelled", "--dry-run=server", "--kubeconfig", kubeconfig)
	require.NoError(t, err, "an unlabelled namespace has the cluster's default level: %s", stderr)
}

// TestChartNotes: what helm prints after an install says how to check it
// (both rollouts, the CSIDriver, the nodes' registration, nmi's
// readiness), where examples are, the Pod Security label, and how to
// uninstall without leaving nmi's rules behind.
func TestChartNotes(t *testing.T) {
	notes := func(t *testing.T, values ...string) string {
		t.Helper()
		out, err := helmCommand(t, append([]string{"install", "kvnode", chartDir, "--namespace", chartNamespace, "--dry-run=client"}, setArgs(values)...)...).CombinedOutput()
		require.NoError(t, err, "helm install --dry-run: %s", out)
		_, notes, found := strings.Cut(string(out), "\nNOTES:\n")
		require.True(t, found, "no NOTES in %s", out)
		return notes
	}
	label := "kubectl label --overwrite namespace kvnode pod-security.kubernetes.io/enforce=privileged"
	checks := []string{
		"kubectl -n kvnode rollout status daemonset/kvnode-kvdriver",
		"kubectl get csidriver secrets-store.csi.k8s.io",
		"kubectl get csinodes -o custom-columns='NODE:.metadata.name,DRIVERS:.spec.drivers[*].name'",
	}
	examples := []string{"examples/secretproviderclass-demo.yaml", "examples/secretproviderclass-pod-identity-demo.yaml"}
	nmiChecks := []string{
		"kubectl -n kvnode rollout status daemonset/kvnode-nmi",
		"kubectl -n kvnode get pods -l app.kubernetes.io/instance=kvnode,app.kubernetes.io/component=nmi -o wide",
		"nmi --cleanup --node-name=<node> --listen-addr=<node's IP>:2579",
	}
	keepRules := []string{
		"helm upgrade kvnode <this chart> -n kvnode --reuse-values --set nmi.removeRulesOnExit=true",
		"helm uninstall kvnode -n kvnode",
	}
	for _, e := range examples {
		_, err := os.Stat(filepath.Join("..", "..", e))
		require.NoError(t, err, "NOTES name %s", e)
	}

	got := notes(t)
	for _, want := range slices.Concat([]string{label}, checks, examples, nmiChecks, keepRules) {
		assert.Contains(t, got, want)
	}
	assert.Less(t, strings.Index(got, keepRules[0]), strings.Index(got, keepRules[1]), "rules off before the uninstall")

	got = notes(t, "nmi.removeRulesOnExit=true", "nmi.listenAddress=169.254.20.11")
	assert.NotContains(t, got, "--set nmi.removeRulesOnExit=true")
	assert.Contains(t, got, "helm uninstall kvnode -n kvnode")
	assert.Contains(t, got, "nmi --cleanup --node-name=<node> --listen-addr=169.254.20.11:2579")

	got = notes(t, "nmi.enabled=false")
	for _, want := range slices.Concat([]string{label}, checks, examples) {
		assert.Contains(t, got, want)
	}
	assert.NotContains(t, got, "nmi")
}
