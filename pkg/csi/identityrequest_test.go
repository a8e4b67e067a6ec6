package csi

import (
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/spc"
)

// TestIdentityRequestBinding: useAzureTokenProxy takes the pod's token for
// api://AKSIdentityBinding and never the workload-identity one, nor falls
// back to the nodePublishSecretRef's service principal.
func TestIdentityRequestBinding(t *testing.T) {
	pod := podInfo{name: "web-0", namespace: "apps", uid: "u", serviceAccount: "web"}
	cfg := &spc.Config{ClientID: "mi-client", TenantID: "t", UseAzureTokenProxy: true}
	for _, tc := range []struct {
		name, tokens string
		want         string
		code         codes.Code
		message      string
	}{
		{name: "both audiences", tokens: `{"api://AzureADTokenExchange":{"token":"wi-token"},"api://AKSIdentityBinding":{"token":"binding-token"}}`, want: "binding-token"},
		{name: "only the workload identity audience", tokens: `{"api://AzureADTokenExchange":{"token":"wi-token"}}`,
			code: codes.InvalidArgument, message: "useAzureTokenProxy: csi.storage.k8s.io/serviceAccount.tokens has no token for audience api://AKSIdentityBinding"},
		{name: "no tokens", code: codes.InvalidArgument, message: "tokenRequests with audience api://AKSIdentityBinding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &csipb.NodePublishVolumeRequest{VolumeContext: map[string]string{},
				Secrets: map[string]string{"clientid": "sp", "clientsecret": "sp-secret"}}
			if tc.tokens != "" {
				req.VolumeContext[attrServiceAccountToken] = tc.tokens
			}
			r, _, err := identityRequest(cfg, pod, req)
			if tc.message != "" {
				require.Error(t, err)
				assert.Equal(t, tc.code, status.Code(err))
				assert.Contains(t, err.Error(), tc.message)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, identity.IdentityBinding, r.Mode)
			assert.Equal(t, tc.want, r.ServiceAccountToken)
			assert.Equal(t, "mi-client", r.ClientID)
			assert.Equal(t, "web", r.ServiceAccount)
		})
	}
}

func TestPublishErrorTokenProxy(t *testing.T) {
	err := publishError(identity.ErrTokenProxyUnconfigured)
	assert.Equal(t, codes.FailedPrecondition, status.Code(err))
	assert.Contains(t, err.Error(), "--token-proxy-url")
}
