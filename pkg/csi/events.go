package csi

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/kvnode/kvnode/pkg/kube"
)

// PodEvents records events on pods through the API server, as kubelet and
// controllers do: client-go's broadcaster aggregates repeats and rate-limits
// per pod, and sends in the background so that a publish never waits on it.
type PodEvents struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

var _ EventSink = (*PodEvents)(nil)

// NewPodEvents returns a recorder whose events name component (kvdriver)
// and node as their source.
func NewPodEvents(client *kube.Core, component, node string) *PodEvents {
	b := record.NewBroadcaster(record.WithContext(context.Background()))
	b.StartRecordingToSink(client.EventSink())
	return &PodEvents{
		broadcaster: b,
		recorder:    b.NewRecorder(kube.Scheme, corev1.EventSource{Component: component, Host: node}),
	}
}

// PodWarning records a Warning event on pod.
func (e *PodEvents) PodWarning(pod PodRef, reason, message string) {
	e.recorder.Event(&corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		corev1.EventTypeWarning, reason, message)
}

// PodNormal records a Normal event on pod.
func (e *PodEvents) PodNormal(pod PodRef, reason, message string) {
	e.recorder.Event(&corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		corev1.EventTypeNormal, reason, message)
}

// Shutdown sends what is queued and stops.
func (e *PodEvents) Shutdown() { e.broadcaster.Shutdown() }
