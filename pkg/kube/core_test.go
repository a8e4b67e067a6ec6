package kube

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// Every call Core makes, against a real API server.
func TestCoreCalls(t *testing.T) {
	testenv.RequireNetns(t)
	cp := controlplane.Start(t, controlplane.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, cp.EnsureNamespace(ctx, "apps"))
	core, err := NewCore(cp.Config)
	require.NoError(t, err)

	t.Run("list and watch pods of one node", func(t *testing.T) {
		for _, p := range []struct{ name, node string }{{"a", "node-a"}, {"b", "node-b"}} {
			_, err := cp.Client.CoreV1().Pods("apps").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p.name},
				Spec:       corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
			}, metav1.CreateOptions{})
			require.NoError(t, err)
		}
		lw := core.ListWatch("pods", "", func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=node-a" })
		obj, err := lw.ListWithContext(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		list, ok := obj.(*corev1.PodList)
		require.True(t, ok, "%T", obj)
		require.Len(t, list.Items, 1)
		assert.Equal(t, "a", list.Items[0].Name)

		w, err := lw.WatchWithContext(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
		require.NoError(t, err)
		defer w.Stop()
		for _, p := range []struct{ name, node string }{{"c", "node-b"}, {"d", "node-a"}} {
			_, err := cp.Client.CoreV1().Pods("apps").Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: p.name},
				Spec:       corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
			}, metav1.CreateOptions{})
			require.NoError(t, err)
		}
		select {
		case ev := <-w.ResultChan():
			require.Equal(t, watch.Added, ev.Type)
			assert.Equal(t, "d", ev.Object.(*corev1.Pod).Name, "only node-a's pods are watched")
		case <-ctx.Done():
			t.Fatal("no watch event")
		}
	})

	t.Run("informer over ListWatch", func(t *testing.T) {
		inf := cache.NewSharedIndexInformer(core.ListWatch("pods", "apps", nil), &corev1.Pod{}, 0, cache.Indexers{})
		ictx, stop := context.WithCancel(ctx)
		wait := Run(ictx, inf)
		defer func() { stop(); wait() }()
		require.True(t, cache.WaitForCacheSync(ctx.Done(), inf.HasSynced))
		assert.Len(t, inf.GetStore().ListKeys(), 4)
	})

	t.Run("TokenRequest", func(t *testing.T) {
		_, err := cp.CreateServiceAccount(ctx, "apps", "web", nil)
		require.NoError(t, err)
		secs := int64(600)
		out, err := core.CreateToken(ctx, "apps", "web", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{"api://AzureADTokenExchange"}, ExpirationSeconds: &secs}}, metav1.CreateOptions{})
		require.NoError(t, err)
		assert.NotEmpty(t, out.Status.Token)
		_, err = core.CreateToken(ctx, "apps", "nobody", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		assert.True(t, apierrors.IsNotFound(err), "%v", err)
	})

	t.Run("apply and patch Secrets", func(t *testing.T) {
		_, err := core.PatchSecret(ctx, "apps", "s", types.StrategicMergePatchType, []byte(`{"metadata":{"labels":{"a":"b"}}}`), metav1.PatchOptions{})
		assert.True(t, apierrors.IsNotFound(err), "a patch never creates: %v", err)
		body := []byte(`{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s","namespace":"apps","labels":{"managed":"true"}},"type":"Opaque","data":{"k":"dg=="}}`)
		s, err := core.ApplySecret(ctx, "apps", "s", body, metav1.ApplyOptions{FieldManager: "kvnode-test", Force: true})
		require.NoError(t, err)
		assert.Equal(t, []byte("v"), s.Data["k"])
		require.Len(t, s.ManagedFields, 1)
		assert.Equal(t, "kvnode-test", s.ManagedFields[0].Manager)
		assert.Equal(t, metav1.ManagedFieldsOperationApply, s.ManagedFields[0].Operation)
		s, err = core.PatchSecret(ctx, "apps", "s", types.StrategicMergePatchType, []byte(`{"metadata":{"labels":{"extra":"1"}}}`), metav1.PatchOptions{FieldManager: "kvnode-test"})
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"managed": "true", "extra": "1"}, s.Labels)
	})

	t.Run("event sink", func(t *testing.T) {
		sink := core.EventSink()
		ev, err := sink.Create(&corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: "web.1", Namespace: "apps"},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "apps", Name: "web"},
			Reason:         "Test", Message: "first", Type: corev1.EventTypeNormal, Count: 1,
		})
		require.NoError(t, err)
		assert.Equal(t, "apps", ev.Namespace)
		patch, err := json.Marshal(map[string]any{"count": 2, "message": "second"})
		require.NoError(t, err)
		ev, err = sink.Patch(ev, patch)
		require.NoError(t, err)
		assert.Equal(t, int32(2), ev.Count)
		ev.Message = "third"
		ev, err = sink.Update(ev)
		require.NoError(t, err)
		assert.Equal(t, "third", ev.Message)
	})
}

// The daemons link client-go's REST client, not its Clientset: see the
// comment on Core. This keeps the packages that would bring every built-in
// API group out of both binaries.
func TestDaemonsLinkNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/kvnode/kvnode/cmd/nmi", "github.com/kvnode/kvnode/cmd/kvdriver").Output()
	require.NoError(t, err)
	forbidden := []string{
		"k8s.io/client-go/kubernetes",
		"k8s.io/client-go/kubernetes/scheme",
		"k8s.io/client-go/informers",
		"k8s.io/client-go/discovery",
		"k8s.io/client-go/applyconfigurations/meta/v1",
		"k8s.io/api/apps/v1",
	}
	deps := strings.Fields(string(out))
	for _, f := range forbidden {
		assert.NotContains(t, deps, f)
	}
	assert.Less(t, len(deps), 700, "packages linked into the daemons")
}
