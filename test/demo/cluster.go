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

// driverRBAC is the chart's identity for kvdriver, installed.
type driverRBAC struct {
	serviceAccount string
	objects        []string
	// config authenticates as the ServiceAccount.
	config *rest.Config
}

// installChartRBAC renders the Helm chart and creates its ServiceAccount,
// ClusterRole and ClusterRoleBinding for kvdriver, so that kvdriver runs with
// exactly the rights the chart gives it.
func installChartRBAC(ctx context.Context, cp *controlplane.ControlPlane, helm, chart, dir string) (*driverRBAC, error) {
	helmHome := filepath.Join(dir, "helm")
	// The demo runs kvdriver only: render the chart without nmi, so that the
	// RBAC found below is kvdriver's alone.
	cmd := exec.CommandContext(ctx, helm, "template", "kvnode", chart, "--namespace", chartNamespace, "--set", "nmi.enabled=false")
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
	out := &driverRBAC{}
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
	if out.serviceAccount == "" || len(out.objects) < 3 {
		return nil, fmt.Errorf("the chart rendered %v; want kvdriver's ServiceAccount, ClusterRole and ClusterRoleBinding", out.objects)
	}
	ns, name, _ := strings.Cut(out.serviceAccount, "/")
	if out.config, err = cp.AsServiceAccount(ctx, ns, name); err != nil {
		return nil, err
	}
	return out, nil
}

// createRBACObject creates obj if it is one of the chart's RBAC objects.
func createRBACObject(ctx context.Context, client kubernetes.Interface, obj any, out *driverRBAC) error {
	var err error
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		out.serviceAccount = o.Namespace + "/" + o.Name
		out.objects = append(out.objects, "ServiceAccount")
	case *rbacv1.ClusterRole:
		_, err = client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		out.objects = append(out.objects, "ClusterRole")
	case *rbacv1.ClusterRoleBinding:
		_, err = client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		out.objects = append(out.objects, "ClusterRoleBinding")
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("create the chart's %s: %w", out.objects[len(out.objects)-1], err)
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

// createPod stores a pod that mounts class as an inline CSI volume with the
// service principal's Secret as nodePublishSecretRef. No kubelet runs it:
// the demo is its kubelet.
func createPod(ctx context.Context, client kubernetes.Interface, namespace, name, serviceAccount, class string) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount,
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.invalid/web:1",
				VolumeMounts: []corev1.VolumeMount{{Name: volumeName, MountPath: "/mnt/secrets-store", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: volumeName, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver:               driverName,
				ReadOnly:             ptr.To(true),
				VolumeAttributes:     map[string]string{"secretProviderClass": class},
				NodePublishSecretRef: &corev1.LocalObjectReference{Name: spSecretName},
			}}}},
		},
	}
	out, err := client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", namespace, name, err)
	}
	return out, nil
}
