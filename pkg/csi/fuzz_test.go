package csi

import (
	"encoding/json"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/spc"
)

// FuzzVolumeContext feeds what kubelet puts in a NodePublishVolume: the
// volume context (pod information and the service-account tokens) and the
// secrets. No panic; a token is taken only from valid JSON for the right
// audience; refusals never quote the tokens or the client secret.
func FuzzVolumeContext(f *testing.F) {
	f.Add("web-0", "apps", "uid-1", "web", `{"api://AzureADTokenExchange":{"token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln","expirationTimestamp":"2030-01-01T00:00:00Z"}}`, "client-secret-1", true)
	f.Add("", "apps", "", "", `{"api://other":{"token":"x"}}`, "", false)
	f.Add("p", "n", "u", "s", `{"api://AzureADTokenExchange":`, "s", true)
	f.Fuzz(func(t *testing.T, name, namespace, uid, sa, tokens, clientSecret string, inSecrets bool) {
		req := &csipb.NodePublishVolumeRequest{
			VolumeContext: map[string]string{attrPodName: name, attrPodNamespace: namespace, attrPodUID: uid, attrServiceAccount: sa},
			Secrets:       map[string]string{"clientid": "id", "clientsecret": clientSecret},
		}
		if inSecrets {
			req.Secrets[attrServiceAccountToken] = tokens
		} else {
			req.VolumeContext[attrServiceAccountToken] = tokens
		}
		pod, err := podFromContext(req.GetVolumeContext())
		if err != nil {
			return
		}
		for _, mode := range []string{"", "c1"} {
			cfg := &spc.Config{ClientID: mode, TenantID: "t"}
			r, _, err := identityRequest(cfg, pod, req)
			if err != nil {
				msg := err.Error()
				if len(tokens) >= 8 && strings.Contains(msg, tokens) || len(clientSecret) >= 8 && strings.Contains(msg, clientSecret) {
					t.Fatalf("refusal quotes a credential: %s", msg)
				}
				continue
			}
			if r.ServiceAccountToken != "" {
				var parsed map[string]struct{ Token string }
				if json.Unmarshal([]byte(tokens), &parsed) != nil || parsed[identity.WorkloadAudience].Token != r.ServiceAccountToken {
					t.Fatalf("token %q not read from %q", r.ServiceAccountToken, tokens)
				}
			}
		}
	})
}
