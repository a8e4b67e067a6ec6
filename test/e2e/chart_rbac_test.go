package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	applycorev1 "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

// The chart's RBAC, proved on a real kube-apiserver: the whole chart is
// installed into a namespace of its own, and each component's ServiceAccount
// (impersonated with the groups the API server gives a ServiceAccount
// token) makes every call its code makes, which must succeed, and the calls
// it must never make, which must be refused.
//
// The allowed calls are read from the code:
//   - kvdriver: the SecretProviderClass informer's list and watch and its
//     get of a class it lacks (pkg/csi/kube.go); a pod status's create, and
//     get and update when it exists (PodStatusWriter); events' create and,
//     for a repeat, patch (client-go's event recorder, pkg/csi/events.go);
//     Secret sync's server-side apply (a patch, which creates the Secret
//     the first time) and its strategic merge patch of owner references
//     (pkg/secretsync/syncer.go). kvdriver asks no TokenRequest: kubelet hands
//     it the pod's tokens with each mount (the CSIDriver's tokenRequests).
//   - nmi: the pod informer's list and watch, field-selected by node
//     (pkg/podindex); the ServiceAccount reflector's list and watch
//     (pkg/bindings/serviceaccounts.go); the AzureIdentity and
//     AzureIdentityBinding informers' list and watch (pkg/bindings); a
//     TokenRequest of the calling pod's ServiceAccount for
//     api://AzureADTokenExchange (pkg/tokensource/workload.go).
//
// Each probe is a real API call, except these, which are asked of the
// authorizer with a SubjectAccessReview: the bind and escalate verbs (no
// request tests them without first holding a right the components lack,
// creating a binding or a role), impersonation, and pods/exec and
// nodes/proxy (streamed or proxied to a kubelet, which the test has none
// of). One review per component that must be allowed checks the reviews
// themselves.

const (
	rbacNamespace = "kvnode-rbac" // the chart's namespace in this test
	rbacApp       = "app"         // the workloads'
	rbacNode      = "node-1"
)

var (
	azureIdentitiesGVR       = schema.GroupVersionResource{Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentities"}
	azureIdentityBindingsGVR = schema.GroupVersionResource{Group: "aadpodidentity.k8s.io", Version: "v1", Resource: "azureidentitybindings"}
	spcGVR                   = schema.GroupVersionResource{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasses"}
	spcPodStatusGVR          = schema.GroupVersionResource{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasspodstatuses"}
)

// rbacClients act as one component's ServiceAccount.
type rbacClients struct {
	user   string
	groups []string
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	pod    *corev1.Pod // the workload pod on rbacNode
}

// rbacProbe is one call a component makes (allowed) or must never make.
type rbacProbe struct {
	name string
	call func(ctx context.Context, c *rbacClients) error
	// admission: refused by the chart's admission policy, not by RBAC.
	admission bool
	// review: asked of the authorizer (SubjectAccessReview), not made.
	review bool
}

// impersonating returns clients that act as the chart's ServiceAccount
// name in namespace, as a token of that ServiceAccount would.
func impersonating(t *testing.T, cp *controlplane.ControlPlane, namespace, name string, pod *corev1.Pod) *rbacClients {
	t.Helper()
	c := &rbacClients{user: "system:serviceaccount:" + namespace + ":" + name,
		groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}, pod: pod}
	cfg := rest.CopyConfig(cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: c.user, Groups: c.groups}
	var err error
	c.kube, err = kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	c.dyn, err = dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	return c
}

// watchOnce opens a watch and closes it.
func watchOnce(ctx context.Context, ri dynamic.ResourceInterface, opts metav1.ListOptions) error {
	w, err := ri.Watch(ctx, opts)
	if err == nil {
		w.Stop()
	}
	return err
}

// listAndWatch is an informer's first two calls.
func listAndWatch(ri func(*rbacClients) dynamic.ResourceInterface, opts metav1.ListOptions) func(ctx context.Context, c *rbacClients) error {
	return func(ctx context.Context, c *rbacClients) error {
		l, err := ri(c).List(ctx, opts)
		if err != nil {
			return err
		}
		opts.ResourceVersion = l.GetResourceVersion()
		return watchOnce(ctx, ri(c), opts)
	}
}

func resource(gvr schema.GroupVersionResource, namespace string) func(*rbacClients) dynamic.ResourceInterface {
	return func(c *rbacClients) dynamic.ResourceInterface {
		if namespace == "" {
			return c.dyn.Resource(gvr)
		}
		return c.dyn.Resource(gvr).Namespace(namespace)
	}
}

var (
	podsGVR            = corev1.SchemeGroupVersion.WithResource("pods")
	secretsGVR         = corev1.SchemeGroupVersion.WithResource("secrets")
	serviceAccountsGVR = corev1.SchemeGroupVersion.WithResource("serviceaccounts")
)

// reviewed is a probe that asks the authorizer whether c may verb resource
// (a SubjectAccessReview) and answers Forbidden when it may not, so that it
// reads like a refused call.
func reviewed(name string, admin kubernetes.Interface, verb, group, resource, namespace string) rbacProbe {
	res, sub, _ := strings.Cut(resource, "/")
	return rbacProbe{name: name, review: true, call: func(ctx context.Context, c *rbacClients) error {
		sar, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: c.user, Groups: c.groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: res, Subresource: sub, Namespace: namespace},
		}}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if sar.Status.Allowed {
			return nil
		}
		return apierrors.NewForbidden(schema.GroupResource{Group: group, Resource: resource}, "", nil)
	}}
}

// neverProbes are the calls neither component may make.
func neverProbes(admin kubernetes.Interface) []rbacProbe {
	return []rbacProbe{
		{name: "get a Secret", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Secrets(rbacApp).Get(ctx, "unmanaged", metav1.GetOptions{})
			return err
		}},
		{name: "list Secrets of a namespace", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Secrets(rbacApp).List(ctx, metav1.ListOptions{})
			return err
		}},
		{name: "list Secrets cluster-wide", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{name: "watch Secrets cluster-wide", call: func(ctx context.Context, c *rbacClients) error {
			return watchOnce(ctx, resource(secretsGVR, "")(c), metav1.ListOptions{})
		}},
		{name: "delete a Secret", call: func(ctx context.Context, c *rbacClients) error {
			return c.kube.CoreV1().Secrets(rbacApp).Delete(ctx, "unmanaged", metav1.DeleteOptions{})
		}},
		{name: "create a Pod", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Pods(rbacApp).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "intruder"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}}}, metav1.CreateOptions{})
			return err
		}},
		{name: "patch a Pod", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Pods(rbacApp).Patch(ctx, c.pod.Name, types.StrategicMergePatchType,
				[]byte(`{"metadata":{"labels":{"aadpodidbinding":"other"}}}`), metav1.PatchOptions{})
			return err
		}},
		{name: "delete a Pod", call: func(ctx context.Context, c *rbacClients) error {
			return c.kube.CoreV1().Pods(rbacApp).Delete(ctx, c.pod.Name, metav1.DeleteOptions{})
		}},
		{name: "get a Node", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Nodes().Get(ctx, rbacNode, metav1.GetOptions{})
			return err
		}},
		{name: "update a Node", call: func(ctx context.Context, c *rbacClients) error {
			n, err := admin.CoreV1().Nodes().Get(ctx, rbacNode, metav1.GetOptions{})
			if err != nil {
				return err
			}
			n.Labels = map[string]string{"taken": "over"}
			_, err = c.kube.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			return err
		}},
		{name: "annotate a ServiceAccount (bind it an identity)", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().ServiceAccounts(rbacApp).Patch(ctx, "web", types.StrategicMergePatchType,
				[]byte(`{"metadata":{"annotations":{"azure.workload.identity/client-id":"other"}}}`), metav1.PatchOptions{})
			return err
		}},
		{name: "create a ServiceAccount", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().ServiceAccounts(rbacApp).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "new"}}, metav1.CreateOptions{})
			return err
		}},
		{name: "create an AzureIdentityBinding", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(azureIdentityBindingsGVR, rbacApp)(c).Create(ctx, azureIdentityBinding("forged", "id", "web"), metav1.CreateOptions{})
			return err
		}},
		{name: "update an AzureIdentity", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(azureIdentitiesGVR, rbacApp)(c).Update(ctx, azureIdentity("id", "other-client"), metav1.UpdateOptions{})
			return err
		}},
		{name: "create a SecretProviderClass", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(spcGVR, rbacApp)(c).Create(ctx, secretProviderClass("forged"), metav1.CreateOptions{})
			return err
		}},
		{name: "delete a SecretProviderClass", call: func(ctx context.Context, c *rbacClients) error {
			return resource(spcGVR, rbacApp)(c).Delete(ctx, "cls", metav1.DeleteOptions{})
		}},
		{name: "create a RoleBinding", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.RbacV1().RoleBindings(rbacApp).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "grab"},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "admin"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: c.user}}}, metav1.CreateOptions{})
			return err
		}},
		{name: "create a ClusterRoleBinding", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "grab"},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
				Subjects: []rbacv1.Subject{{Kind: "User", Name: c.user}}}, metav1.CreateOptions{})
			return err
		}},
		{name: "create a ClusterRole", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "grab"},
				Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}}}, metav1.CreateOptions{})
			return err
		}},
		reviewed("escalate Roles", admin, "escalate", rbacv1.GroupName, "roles", rbacApp),
		reviewed("escalate ClusterRoles", admin, "escalate", rbacv1.GroupName, "clusterroles", ""),
		reviewed("bind ClusterRoles", admin, "bind", rbacv1.GroupName, "clusterroles", ""),
		reviewed("bind Roles", admin, "bind", rbacv1.GroupName, "roles", rbacApp),
		reviewed("impersonate ServiceAccounts", admin, "impersonate", "", "serviceaccounts", rbacApp),
		reviewed("exec into Pods", admin, "create", "", "pods/exec", rbacApp),
		reviewed("the kubelet API (nodes/proxy)", admin, "get", "", "nodes/proxy", ""),
	}
}

func kvdriverProbes(admin kubernetes.Interface) (allowed, denied []rbacProbe) {
	const statusName = "web-0-app-cls"
	allowed = []rbacProbe{
		{name: "list and watch SecretProviderClasses cluster-wide", call: listAndWatch(resource(spcGVR, ""), metav1.ListOptions{})},
		{name: "get a SecretProviderClass", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(spcGVR, rbacApp)(c).Get(ctx, "cls", metav1.GetOptions{})
			return err
		}},
		{name: "create a SecretProviderClassPodStatus", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(spcPodStatusGVR, rbacApp)(c).Create(ctx, podStatus(statusName, c.pod.Name), metav1.CreateOptions{})
			return err
		}},
		{name: "get and update a SecretProviderClassPodStatus", call: func(ctx context.Context, c *rbacClients) error {
			st, err := resource(spcPodStatusGVR, rbacApp)(c).Get(ctx, statusName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			st.Object["status"].(map[string]any)["objects"] = []any{map[string]any{"id": "secret/password", "version": "2"}}
			_, err = resource(spcPodStatusGVR, rbacApp)(c).Update(ctx, st, metav1.UpdateOptions{})
			return err
		}},
		{name: "create and patch an event on a pod", call: func(ctx context.Context, c *rbacClients) error {
			now := metav1.Now()
			ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: c.pod.Name + ".kvnode-rbac", Namespace: rbacApp},
				InvolvedObject: corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: rbacApp, Name: c.pod.Name, UID: c.pod.UID},
				Type:           corev1.EventTypeWarning, Reason: "ToleratedParameter", Message: "a tolerated mistake",
				Source: corev1.EventSource{Component: "kvdriver", Host: rbacNode}, Count: 1, FirstTimestamp: now, LastTimestamp: now}
			if _, err := c.kube.CoreV1().Events(rbacApp).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
				return err
			}
			_, err := c.kube.CoreV1().Events(rbacApp).Patch(ctx, ev.Name, types.StrategicMergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{})
			return err
		}},
		{name: "apply a synced Secret (creating it)", call: func(ctx context.Context, c *rbacClients) error {
			return applySyncedSecret(ctx, c, "synced", corev1.SecretTypeOpaque)
		}},
		{name: "apply a synced Secret again (changing it)", call: func(ctx context.Context, c *rbacClients) error {
			return applySyncedSecret(ctx, c, "synced", corev1.SecretTypeOpaque)
		}},
		{name: "add a pod to a synced Secret's owners", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Secrets(rbacApp).Patch(ctx, "synced", types.StrategicMergePatchType,
				[]byte(`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":"`+c.pod.Name+`","uid":"`+string(c.pod.UID)+`"}]}}`),
				metav1.PatchOptions{FieldManager: "kvdriver"})
			return err
		}},
		// The reviews' own check: one that must be allowed is.
		reviewed("update SecretProviderClassPodStatuses (reviewed)", admin, "update", "secrets-store.csi.x-k8s.io", "secretproviderclasspodstatuses", rbacApp),
	}
	denied = []rbacProbe{
		{name: "update a Secret (no update verb)", call: func(ctx context.Context, c *rbacClients) error {
			s, err := admin.CoreV1().Secrets(rbacApp).Get(ctx, "synced", metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = c.kube.CoreV1().Secrets(rbacApp).Update(ctx, s, metav1.UpdateOptions{})
			return err
		}},
		{name: "patch a Secret it does not manage", admission: true, call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Secrets(rbacApp).Patch(ctx, "unmanaged", types.StrategicMergePatchType,
				[]byte(`{"metadata":{"labels":{"secrets-store.csi.k8s.io/managed":"true"}}}`), metav1.PatchOptions{})
			return err
		}},
		{name: "apply a service-account-token Secret", admission: true, call: func(ctx context.Context, c *rbacClients) error {
			return applySyncedSecret(ctx, c, "minted", corev1.SecretTypeServiceAccountToken)
		}},
		{name: "get a Pod", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Pods(rbacApp).Get(ctx, c.pod.Name, metav1.GetOptions{})
			return err
		}},
		{name: "list Pods", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{name: "list ServiceAccounts", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().ServiceAccounts("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{name: "request a ServiceAccount token (kubelet hands it the pod's)", call: func(ctx context.Context, c *rbacClients) error {
			return requestWorkloadToken(ctx, c)
		}},
		{name: "list AzureIdentities", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(azureIdentitiesGVR, "")(c).List(ctx, metav1.ListOptions{})
			return err
		}},
		{name: "update a SecretProviderClass", call: func(ctx context.Context, c *rbacClients) error {
			cls, err := resource(spcGVR, rbacApp)(c).Get(ctx, "cls", metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = resource(spcGVR, rbacApp)(c).Update(ctx, cls, metav1.UpdateOptions{})
			return err
		}},
		{name: "delete a SecretProviderClassPodStatus", call: func(ctx context.Context, c *rbacClients) error {
			return resource(spcPodStatusGVR, rbacApp)(c).Delete(ctx, statusName, metav1.DeleteOptions{})
		}},
	}
	return allowed, append(denied, neverProbes(admin)...)
}

func nmiProbes(admin kubernetes.Interface) (allowed, denied []rbacProbe) {
	allowed = []rbacProbe{
		{name: "list and watch its node's Pods", call: func(ctx context.Context, c *rbacClients) error {
			opts := metav1.ListOptions{FieldSelector: "spec.nodeName=" + rbacNode}
			l, err := c.kube.CoreV1().Pods("").List(ctx, opts)
			if err != nil {
				return err
			}
			if len(l.Items) != 1 || l.Items[0].UID != c.pod.UID {
				return fmt.Errorf("the node's pods are not the one workload pod: %d pods", len(l.Items))
			}
			opts.ResourceVersion = l.ResourceVersion
			return watchOnce(ctx, resource(podsGVR, "")(c), opts)
		}},
		{name: "list and watch ServiceAccounts cluster-wide", call: listAndWatch(resource(serviceAccountsGVR, ""), metav1.ListOptions{})},
		{name: "list and watch AzureIdentities cluster-wide", call: listAndWatch(resource(azureIdentitiesGVR, ""), metav1.ListOptions{})},
		{name: "list and watch AzureIdentityBindings cluster-wide", call: listAndWatch(resource(azureIdentityBindingsGVR, ""), metav1.ListOptions{})},
		{name: "request the pod's ServiceAccount token for Entra ID", call: requestWorkloadToken},
		// The reviews' own check: one that must be allowed is.
		reviewed("create ServiceAccount tokens (reviewed)", admin, "create", "", "serviceaccounts/token", rbacApp),
	}
	denied = []rbacProbe{
		{name: "get a Pod (nmi reads pods only through its informer)", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Pods(rbacApp).Get(ctx, c.pod.Name, metav1.GetOptions{})
			return err
		}},
		{name: "create an event", call: func(ctx context.Context, c *rbacClients) error {
			_, err := c.kube.CoreV1().Events(rbacApp).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "nmi.event"},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: rbacApp, Name: c.pod.Name}}, metav1.CreateOptions{})
			return err
		}},
		{name: "write a Secret", call: func(ctx context.Context, c *rbacClients) error {
			return applySyncedSecret(ctx, c, "from-nmi", corev1.SecretTypeOpaque)
		}},
		{name: "list SecretProviderClasses", call: func(ctx context.Context, c *rbacClients) error {
			_, err := resource(spcGVR, "")(c).List(ctx, metav1.ListOptions{})
			return err
		}},
	}
	return allowed, append(denied, neverProbes(admin)...)
}

// applySyncedSecret is kvdriver's Secret apply (pkg/secretsync): labelled
// as managed, with the type the class names.
func applySyncedSecret(ctx context.Context, c *rbacClients, name string, typ corev1.SecretType) error {
	ac := applycorev1.Secret(name, rbacApp).WithType(typ).
		WithLabels(map[string]string{"secrets-store.csi.k8s.io/managed": "true"}).
		WithData(map[string][]byte{"username": []byte("admin")})
	if typ == corev1.SecretTypeServiceAccountToken {
		// Valid, so that what refuses it is the admission policy.
		ac.WithAnnotations(map[string]string{corev1.ServiceAccountNameKey: "web"})
	}
	_, err := c.kube.CoreV1().Secrets(rbacApp).Apply(ctx, ac, metav1.ApplyOptions{FieldManager: "kvdriver", Force: true})
	return err
}

// requestWorkloadToken is nmi's TokenRequest (pkg/tokensource): the
// workload pod's ServiceAccount, for Entra ID.
func requestWorkloadToken(ctx context.Context, c *rbacClients) error {
	tr, err := c.kube.CoreV1().ServiceAccounts(rbacApp).CreateToken(ctx, c.pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"api://AzureADTokenExchange"}, ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
	if err == nil && tr.Status.Token == "" {
		return errors.New("TokenRequest answered no token")
	}
	return err
}

func secretProviderClass(name string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
		"metadata": map[string]any{"name": name, "namespace": rbacApp},
		"spec":     map[string]any{"provider": "azure", "parameters": map[string]any{"keyvaultName": "vault", "tenantId": "tenant"}},
	}}
}

func podStatus(name, pod string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClassPodStatus",
		"metadata": map[string]any{"name": name, "namespace": rbacApp},
		"status": map[string]any{"podName": pod, "secretProviderClassName": "cls", "mounted": true,
			"targetPath": "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/secrets/mount"},
	}}
}

func azureIdentity(name, clientID string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentity",
		"metadata": map[string]any{"name": name, "namespace": rbacApp},
		"spec":     map[string]any{"type": int64(0), "clientID": clientID, "resourceID": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name},
	}}
}

func azureIdentityBinding(name, identity, selector string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "aadpodidentity.k8s.io/v1", "kind": "AzureIdentityBinding",
		"metadata": map[string]any{"name": name, "namespace": rbacApp},
		"spec":     map[string]any{"azureIdentity": identity, "selector": selector},
	}}
}

// rbacFixtures creates, as the admin, the objects the probes touch: a
// node, a workload pod on it with its ServiceAccount, a class, an
// AzureIdentity and its binding, and a Secret kvnode does not manage.
func rbacFixtures(t *testing.T, cp *controlplane.ControlPlane) *corev1.Pod {
	t.Helper()
	ctx := callCtx(t)
	admin := cp.Client
	_, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: rbacNode}}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cp.CreateServiceAccount(ctx, rbacApp, "web", nil)
	require.NoError(t, err)
	pod, err := admin.CoreV1().Pods(rbacApp).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0"},
		Spec: corev1.PodSpec{NodeName: rbacNode, ServiceAccountName: "web", Containers: []corev1.Container{{Name: "web", Image: "web"}}}}, metav1.CreateOptions{})
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(cp.Config)
	require.NoError(t, err)
	for gvr, o := range map[schema.GroupVersionResource]*unstructured.Unstructured{
		spcGVR: secretProviderClass("cls"), azureIdentitiesGVR: azureIdentity("id", "client-1"), azureIdentityBindingsGVR: azureIdentityBinding("bind", "id", "web"),
	} {
		_, err := dyn.Resource(gvr).Namespace(rbacApp).Create(ctx, o, metav1.CreateOptions{})
		require.NoError(t, err, "%s", gvr.Resource)
	}
	_, err = admin.CoreV1().Secrets(rbacApp).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unmanaged"},
		Data: map[string][]byte{"password": []byte("not kvnode's")}}, metav1.CreateOptions{})
	require.NoError(t, err)
	return pod
}

// TestChartRBAC installs the chart into its own namespace and proves, as
// each component's ServiceAccount, that every call its code makes is
// allowed and that the calls it must never make are refused.
func TestChartRBAC(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{CRDDirectoryPaths: []string{filepath.Join(chartDir, "crds")}})
	require.NoError(t, cp.EnsureNamespace(context.Background(), rbacNamespace))
	applyObjects(t, cp.Config, renderChartIn(t, rbacNamespace), false)
	pod := rbacFixtures(t, cp)

	kvdriver := impersonating(t, cp, rbacNamespace, "kvnode-kvdriver", pod)
	// The admission policy is in force once the API server's policy
	// informer has it.
	require.Eventually(t, func() bool {
		_, err := kvdriver.kube.CoreV1().Secrets(rbacApp).Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "probe"}},
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), syncPolicyName)
	}, 30*time.Second, 100*time.Millisecond, "the admission policy never took effect")

	for _, tc := range []struct {
		component string
		probes    func(kubernetes.Interface) (allowed, denied []rbacProbe)
	}{
		{"kvdriver", kvdriverProbes},
		{"nmi", nmiProbes},
	} {
		t.Run(tc.component, func(t *testing.T) {
			c := impersonating(t, cp, rbacNamespace, "kvnode-"+tc.component, pod)
			allowed, denied := tc.probes(cp.Client)
			for _, p := range allowed {
				err := p.call(callCtx(t), c)
				assert.NoError(t, err, "%s may %s", tc.component, p.name)
			}
			for _, p := range denied {
				err := p.call(callCtx(t), c)
				if !assert.True(t, apierrors.IsForbidden(err), "%s must not %s: %v", tc.component, p.name, err) {
					continue
				}
				switch {
				case p.admission:
					assert.Contains(t, err.Error(), syncPolicyName, "%s: %s is refused by the admission policy", tc.component, p.name)
				case p.review:
				default:
					assert.Contains(t, err.Error(), `User "`+c.user+`" cannot`, "%s: %s is refused by RBAC", tc.component, p.name)
				}
			}
		})
	}
}
