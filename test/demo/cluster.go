package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kvnode/kvnode/pkg/csi"
	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/controlplane"
)

// driverName is the CSI driver the pods' volumes name.
const driverName = csi.DefaultDriverName

// chartNamespace is where the chart is installed.
const chartNamespace = "kube-system"

// chartIdentity is the chart's ServiceAccount for one component, installed
// with its ClusterRole and ClusterRoleBinding.
type chartIdentity struct {
	serviceAccount string // namespace/name
	objects        []string
	// config authenticates as the ServiceAccount.
	config *rest.Config
}

// Components of the chart the demo runs, by the name of their
// ServiceAccount, ClusterRole and ClusterRoleBinding.
const (
	kvdriverComponent = "kvnode-kvdriver"
	nmiComponent      = "kvnode-nmi"
)

// installChartRBAC renders the Helm chart and creates the ServiceAccount,
// ClusterRole and ClusterRoleBinding of kvdriver and of nmi, so that each
// runs with exactly the rights the chart gives it.
func installChartRBAC(ctx context.Context, cp *controlplane.ControlPlane, helm, chart, dir string) (map[string]*chartIdentity, error) {
	helmHome := filepath.Join(dir, "helm")
	cmd := exec.CommandContext(ctx, helm, "template", "kvnode", chart, "--namespace", chartNamespace)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+helmHome+"/cache", "HELM_CONFIG_HOME="+helmHome+"/config", "HELM_DATA_HOME="+helmHome+"/data")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	manifest, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template %s: %w: %s", chart, err, strings.TrimSpace(stderr.String()))
	}
	if err := cp.EnsureNamespace(ctx, chartNamespace); err != nil {
		return nil, err
	}
	out := map[string]*chartIdentity{kvdriverComponent: {}, nmiComponent: {}}
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read the chart's manifest: %w", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			continue // a kind client-go does not know; not RBAC
		}
		if err := createRBACObject(ctx, cp.Client, obj, out); err != nil {
			return nil, err
		}
	}
	for name, id := range out {
		if id.serviceAccount == "" || len(id.objects) < 3 {
			return nil, fmt.Errorf("the chart rendered %v for %s; want its ServiceAccount, ClusterRole and ClusterRoleBinding", id.objects, name)
		}
		ns, sa, _ := strings.Cut(id.serviceAccount, "/")
		if id.config, err = cp.AsServiceAccount(ctx, ns, sa); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// createRBACObject creates obj if it is the RBAC of one of the components
// in out.
func createRBACObject(ctx context.Context, client kubernetes.Interface, obj any, out map[string]*chartIdentity) error {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil
	}
	id := out[m.GetName()]
	if id == nil {
		return nil
	}
	var err error
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		id.serviceAccount = o.Namespace + "/" + o.Name
		id.objects = append(id.objects, "ServiceAccount")
	case *rbacv1.ClusterRole:
		_, err = client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		id.objects = append(id.objects, "ClusterRole")
	case *rbacv1.ClusterRoleBinding:
		_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		id.objects = append(id.objects, "ClusterRoleBinding")
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("create the chart's %s %s: %w", id.objects[len(id.objects)-1], m.GetName(), err)
	}
	return nil
}

// classInfo is what the demo needs to know of the SecretProviderClass.
type classInfo struct {
	name, vault, tenant string
	objects             int
}

// createClass stores the SecretProviderClass in file, as kubectl apply
// would, in namespace.
func createClass(ctx context.Context, dyn dynamic.Interface, namespace, file string) (*classInfo, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read the SecretProviderClass: %w", err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(b, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	u := &unstructured.Unstructured{Object: obj}
	if u.GetKind() != "SecretProviderClass" {
		return nil, fmt.Errorf("%s: kind %q, want SecretProviderClass", file, u.GetKind())
	}
	u.SetNamespace(namespace)
	params, _, err := unstructured.NestedStringMap(obj, "spec", "parameters")
	if err != nil {
		return nil, fmt.Errorf("%s: spec.parameters: %w", file, err)
	}
	info := &classInfo{name: u.GetName(), vault: params["keyvaultName"], tenant: params["tenantId"],
		objects: strings.Count(params["objects"], "objectName:")}
	if _, err := dyn.Resource(spc.SecretProviderClassesResource).Namespace(namespace).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create SecretProviderClass %s/%s: %w", namespace, info.name, err)
	}
	return info, nil
}

// demoPod is a pod the demo stores. No kubelet runs it: the demo is its
// kubelet.
type demoPod struct {
	name, serviceAccount string
	// class, when set, is the SecretProviderClass of an inline CSI volume.
	class string
	// spSecret, when set, is the volume's nodePublishSecretRef.
	spSecret string
	// node, when set, puts the pod on the node.
	node string
}

// createPod stores p in namespace.
func createPod(ctx context.Context, client kubernetes.Interface, namespace string, p demoPod) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: p.name, Labels: map[string]string{"app": p.serviceAccount}},
		Spec: corev1.PodSpec{
			NodeName:           p.node,
			ServiceAccountName: p.serviceAccount,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.invalid/" + p.serviceAccount + ":1"}},
		},
	}
	if p.class != "" {
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: volumeName, MountPath: "/mnt/secrets-store", ReadOnly: true}}
		csiVol := &corev1.CSIVolumeSource{
			Driver:           driverName,
			ReadOnly:         ptr.To(true),
			VolumeAttributes: map[string]string{"secretProviderClass": p.class},
		}
		if p.spSecret != "" {
			csiVol.NodePublishSecretRef = &corev1.LocalObjectReference{Name: p.spSecret}
		}
		pod.Spec.Volumes = []corev1.Volume{{Name: volumeName, VolumeSource: corev1.VolumeSource{CSI: csiVol}}}
	}
	out, err := client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", namespace, p.name, err)
	}
	return out, nil
}

// reportRunning reports pod Running with address ip, as kubelet does once
// the CNI has wired the pod's network.
func reportRunning(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, ip string) (*corev1.Pod, error) {
	pod = pod.DeepCopy()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	out, err := client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("report pod %s/%s running: %w", pod.Namespace, pod.Name, err)
	}
	return out, nil
}
