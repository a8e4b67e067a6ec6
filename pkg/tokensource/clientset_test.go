package tokensource

import (
	"context"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// clientsetTokens is a TokenRequester over a Clientset (the fake one here).
type clientsetTokens struct{ c kubernetes.Interface }

func (t clientsetTokens) CreateToken(ctx context.Context, namespace, name string, tr *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error) {
	return t.c.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, opts)
}
