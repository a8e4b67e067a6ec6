package bindings

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kvnode/kvnode/pkg/podauth"
)

func serviceAccount(namespace, name, clientID string) *corev1.ServiceAccount {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
		Labels: map[string]string{"app": name}, Annotations: map[string]string{"unrelated": "x"}}}
	if clientID != "" {
		sa.Annotations[ClientIDAnnotation] = clientID
	}
	return sa
}

// The Reflector buffers a watch-list's initial events in a store of its own
// with the store's transformer, then calls Replace with what it holds: the
// buffer must hold no copy of an unannotated ServiceAccount, and an
// annotation removed before the list completes must not survive it.
func TestServiceAccountWatchListBuffer(t *testing.T) {
	r := newResolver(Config{DefaultTenantID: "tenant"})
	s := &saStore{r: r}
	buf := cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc, cache.WithTransformer(s.Transformer()))
	for i := range 1000 {
		require.NoError(t, buf.Add(serviceAccount("ns", "plain-"+string(rune('a'+i%26))+string(rune('a'+i/26)), "")))
	}
	require.NoError(t, buf.Add(serviceAccount("ns", "bound", "11111111-1111-1111-1111-111111111111")))
	require.NoError(t, buf.Add(serviceAccount("ns", "unbound-later", "22222222-2222-2222-2222-222222222222")))
	require.NoError(t, buf.Update(serviceAccount("ns", "unbound-later", "")))
	require.NoError(t, buf.Add(serviceAccount("ns", "deleted", "33333333-3333-3333-3333-333333333333")))
	require.NoError(t, buf.Delete(serviceAccount("ns", "deleted", "33333333-3333-3333-3333-333333333333")))
	copies := 0
	for _, obj := range buf.List() {
		sa := obj.(*corev1.ServiceAccount)
		if sa != unannotated {
			copies++
			assert.Equal(t, "bound", sa.Name)
			assert.Empty(t, sa.Labels, "buffered objects are cut down")
			assert.NotContains(t, sa.Annotations, "unrelated")
		}
	}
	assert.Equal(t, 1, copies, "only the annotated ServiceAccount is buffered as an object of its own")

	assert.False(t, s.HasSynced())
	require.NoError(t, s.Replace(buf.List(), "10"))
	assert.True(t, s.HasSynced())
	assert.Equal(t, map[saKey][]podauth.Identity{
		{"ns", "bound"}: {{ClientID: "11111111-1111-1111-1111-111111111111", TenantID: "tenant", Source: podauth.SourceWorkloadIdentity}},
	}, r.bySA)
}

// After the initial list the Reflector calls Add, Update and Delete in
// watch order: each applies at once, and a relist drops what it lacks.
func TestServiceAccountEvents(t *testing.T) {
	r := newResolver(Config{DefaultTenantID: "tenant", NodeIdentities: []string{"AAAAAAAA-0000-0000-0000-000000000000"}})
	s := &saStore{r: r}
	require.NoError(t, s.Replace(nil, "1"))
	pod := podauth.Pod{Namespace: "ns", ServiceAccount: "app"}
	assert.Empty(t, r.IdentitiesFor(pod))

	require.NoError(t, s.Add(serviceAccount("ns", "app", "44444444-4444-4444-4444-444444444444")))
	assert.Equal(t, []podauth.Identity{{ClientID: "44444444-4444-4444-4444-444444444444", TenantID: "tenant", Source: podauth.SourceWorkloadIdentity}}, r.IdentitiesFor(pod))

	require.NoError(t, s.Update(serviceAccount("ns", "app", "aaaaaaaa-0000-0000-0000-000000000000")))
	assert.Equal(t, []podauth.Identity{{ClientID: "aaaaaaaa-0000-0000-0000-000000000000", Source: podauth.SourceIMDS}}, r.IdentitiesFor(pod),
		"a node identity, compared without case, comes from the node's IMDS")

	require.NoError(t, s.Update(serviceAccount("ns", "app", "")))
	assert.Empty(t, r.IdentitiesFor(pod), "the annotation was removed")

	require.NoError(t, s.Add(serviceAccount("ns", "app", "55555555-5555-5555-5555-555555555555")))
	require.NoError(t, s.Delete(cache.DeletedFinalStateUnknown{Key: "ns/app", Obj: serviceAccount("ns", "app", "55555555-5555-5555-5555-555555555555")}))
	assert.Empty(t, r.IdentitiesFor(pod), "deleted")

	require.NoError(t, s.Add(serviceAccount("ns", "app", "66666666-6666-6666-6666-666666666666")))
	require.NoError(t, s.Replace([]any{serviceAccount("ns", "other", "77777777-7777-7777-7777-777777777777")}, "9"))
	assert.Empty(t, r.IdentitiesFor(pod), "a relist without the ServiceAccount drops it")
	assert.Len(t, r.IdentitiesFor(podauth.Pod{Namespace: "ns", ServiceAccount: "other"}), 1)
}
