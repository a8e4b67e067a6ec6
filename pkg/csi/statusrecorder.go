package csi

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/spc"
)

// StatusWriter writes one SecretProviderClassPodStatus to the API server
// (PodStatusWriter).
type StatusWriter interface {
	Write(ctx context.Context, st *spc.SecretProviderClassPodStatus) error
}

// StatusRecorder records SecretProviderClassPodStatus objects in the
// background, so that an API server round trip (a few milliseconds, more
// under load) is not on the path of every publish. For each object the
// newest status wins; failed writes are retried with exponential back-off,
// and a write the API server can never accept (namespace gone, invalid) is
// dropped with a log line.
type StatusRecorder struct {
	writer StatusWriter
	queue  workqueue.TypedRateLimitingInterface[string]

	mu      sync.Mutex
	pending map[string]*spc.SecretProviderClassPodStatus
}

// NewStatusRecorder returns a recorder writing through w; retries start
// after baseDelay and back off to five minutes.
func NewStatusRecorder(w StatusWriter, baseDelay time.Duration) *StatusRecorder {
	rl := workqueue.NewTypedItemExponentialFailureRateLimiter[string](baseDelay, 5*time.Minute)
	return &StatusRecorder{
		writer:  w,
		queue:   workqueue.NewTypedRateLimitingQueueWithConfig(rl, workqueue.TypedRateLimitingQueueConfig[string]{Name: "podstatus"}),
		pending: map[string]*spc.SecretProviderClassPodStatus{},
	}
}

// Record queues st to be written; it never blocks.
func (r *StatusRecorder) Record(st *spc.SecretProviderClassPodStatus) {
	key := st.Namespace + "/" + st.Name
	r.mu.Lock()
	r.pending[key] = st
	r.mu.Unlock()
	r.queue.Add(key)
}

// Pending is the number of statuses not yet written.
func (r *StatusRecorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// Run writes queued statuses with workers goroutines until ctx ends.
func (r *StatusRecorder) Run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	r.queue.ShutDown()
	wg.Wait()
}

func (r *StatusRecorder) processNext(ctx context.Context) bool {
	key, shutdown := r.queue.Get()
	if shutdown {
		return false
	}
	defer r.queue.Done(key)
	r.mu.Lock()
	st := r.pending[key]
	r.mu.Unlock()
	if st == nil {
		r.queue.Forget(key)
		return true
	}
	err := r.writer.Write(ctx, st)
	switch {
	case err == nil, apierrors.IsNotFound(err), apierrors.IsInvalid(err):
		if err != nil {
			klog.ErrorS(err, "dropping a SecretProviderClassPodStatus the API server cannot accept", "status", key)
		}
		r.mu.Lock()
		if r.pending[key] == st { // unless a newer one arrived meanwhile
			delete(r.pending, key)
		}
		r.mu.Unlock()
		r.queue.Forget(key)
	default:
		klog.ErrorS(err, "writing SecretProviderClassPodStatus failed; will retry", "status", key, "retries", r.queue.NumRequeues(key))
		r.queue.AddRateLimited(key)
	}
	return true
}
