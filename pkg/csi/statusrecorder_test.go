package csi

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kvnode/kvnode/pkg/spc"
)

// writerFunc adapts a function to StatusWriter.
type writerFunc func(context.Context, *spc.SecretProviderClassPodStatus) error

func (f writerFunc) Write(ctx context.Context, st *spc.SecretProviderClassPodStatus) error {
	return f(ctx, st)
}

func podStatusFor(name, target string) *spc.SecretProviderClassPodStatus {
	return &spc.SecretProviderClassPodStatus{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name},
		Status:     spc.SecretProviderClassPodStatusStatus{TargetPath: target},
	}
}

func TestStatusRecorderRetriesAndKeepsTheNewest(t *testing.T) {
	var (
		mu      sync.Mutex
		calls   int
		written []string
	)
	w := writerFunc(func(_ context.Context, st *spc.SecretProviderClassPodStatus) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= 2 {
			return errors.New("apiserver unavailable")
		}
		written = append(written, st.Name+"="+st.Status.TargetPath)
		return nil
	})
	r := NewStatusRecorder(w, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, 2); close(done) }()

	r.Record(podStatusFor("p-apps-c", "/old"))
	r.Record(podStatusFor("p-apps-c", "/new")) // a rotation before the first write landed
	require.Eventually(t, func() bool { return r.Pending() == 0 }, 5*time.Second, time.Millisecond)
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"p-apps-c=/new"}, written, "two failures retried, then only the newest status written")
}

func TestStatusRecorderDropsWhatTheAPIServerCannotAccept(t *testing.T) {
	calls := 0
	w := writerFunc(func(context.Context, *spc.SecretProviderClassPodStatus) error {
		calls++
		return apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "apps")
	})
	r := NewStatusRecorder(w, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, 1); close(done) }()
	r.Record(podStatusFor("p-apps-c", "/t"))
	require.Eventually(t, func() bool { return r.Pending() == 0 }, 5*time.Second, time.Millisecond)
	cancel()
	<-done
	assert.Equal(t, 1, calls, "not retried")
}
