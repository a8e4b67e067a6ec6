package controlplane

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestControlPlaneIssuesServiceAccountTokens(t *testing.T) {
	testenv.RequireNetns(t)
	cp := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	assert.True(t, strings.HasPrefix(cp.Issuer, "https://127.0.0.1:"), "issuer %q", cp.Issuer)
	_, err := cp.CreateServiceAccount(ctx, "apps", "web", map[string]string{"azure.workload.identity/client-id": "c1"})
	require.NoError(t, err)

	st, err := cp.ServiceAccountToken(ctx, "apps", "web", []string{"api://AzureADTokenExchange"}, 10*time.Minute, nil)
	require.NoError(t, err)
	claims := jwt.MapClaims{}
	_, _, err = jwt.NewParser().ParseUnverified(st.Token, claims)
	require.NoError(t, err)
	assert.Equal(t, "system:serviceaccount:apps:web", claims["sub"])
	assert.Equal(t, cp.Issuer, claims["iss"])
	aud, err := claims.GetAudience()
	require.NoError(t, err)
	assert.Equal(t, jwt.ClaimStrings{"api://AzureADTokenExchange"}, aud)

	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	raw, err := cp.JWKS(ctx)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &jwks))
	require.NotEmpty(t, jwks.Keys)

	// RBAC is on: the ServiceAccount may not list Secrets.
	saCfg, err := cp.AsServiceAccount(ctx, "apps", "web")
	require.NoError(t, err)
	saClient, err := kubernetes.NewForConfig(saCfg)
	require.NoError(t, err)
	_, err = saClient.CoreV1().Secrets("apps").List(ctx, metav1.ListOptions{})
	assert.True(t, apierrors.IsForbidden(err), "want Forbidden, got %v", err)
}

// TestControlPlaneRestartsAPIServer: while kube-apiserver is stopped calls
// fail; once it is started again, the same address, CA, admin certificate
// and service-account tokens issued before the restart work, and the data
// is still there.
func TestControlPlaneRestartsAPIServer(t *testing.T) {
	testenv.RequireNetns(t)
	cp := Start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := cp.CreateServiceAccount(ctx, "apps", "web", nil)
	require.NoError(t, err)
	saCfg, err := cp.AsServiceAccount(ctx, "apps", "web")
	require.NoError(t, err)
	saClient, err := kubernetes.NewForConfig(saCfg)
	require.NoError(t, err)

	require.NoError(t, cp.StopAPIServer())
	_, err = cp.Client.CoreV1().ServiceAccounts("apps").Get(ctx, "web", metav1.GetOptions{})
	require.Error(t, err, "kube-apiserver answered while stopped")

	require.NoError(t, cp.StartAPIServer())
	_, err = cp.Client.CoreV1().ServiceAccounts("apps").Get(ctx, "web", metav1.GetOptions{})
	require.NoError(t, err, "the admin client after the restart")
	_, err = saClient.CoreV1().Secrets("apps").List(ctx, metav1.ListOptions{})
	assert.True(t, apierrors.IsForbidden(err), "the service-account token after the restart: want Forbidden, got %v", err)
}
