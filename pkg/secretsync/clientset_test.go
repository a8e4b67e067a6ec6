package secretsync

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// clientsetWriter is a SecretWriter over a Clientset (the fake one here):
// the calls kube.Core makes, as the typed client makes them.
type clientsetWriter struct{ c kubernetes.Interface }

func (w clientsetWriter) ApplySecret(ctx context.Context, namespace, name string, body []byte, opts metav1.ApplyOptions) (*corev1.Secret, error) {
	return w.c.CoreV1().Secrets(namespace).Patch(ctx, name, types.ApplyPatchType, body, opts.ToPatchOptions())
}

func (w clientsetWriter) PatchSecret(ctx context.Context, namespace, name string, pt types.PatchType, body []byte, opts metav1.PatchOptions) (*corev1.Secret, error) {
	return w.c.CoreV1().Secrets(namespace).Patch(ctx, name, pt, body, opts)
}
