package csi

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
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
func NewPodEvents(client kubernetes.Interface, component, node string) *PodEvents {
	b := record.NewBroadcaster(record.WithContext(context.Background()))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &PodEvents{
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: node}),
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
