package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/kvnode/kvnode/pkg/podauth"
)

// DefaultNMIEndpoint is where nmi serves /host/token/ for the node itself.
const DefaultNMIEndpoint = "http://127.0.0.1:2579"

// podIdentityCredential gets a pod's token from nmi's /host/token/: nmi
// decides which identity the pod is bound to, exactly as it does for the
// pod's own IMDS requests, so kvdriver never chooses an identity for a pod.
type podIdentityCredential struct {
	endpoint  string
	client    *http.Client
	namespace string
	pod       string
}

var _ azcore.TokenCredential = (*podIdentityCredential)(nil)

// hostTokenResponse is nmi's answer: the IMDS token fields, all strings,
// and the client ID of the identity it chose.
type hostTokenResponse struct {
	Token struct {
		AccessToken string `json:"access_token"`
		ExpiresOn   string `json:"expires_on"`
	} `json:"token"`
	ClientID string `json:"clientid"`
}

// GetToken asks nmi for the pod's token for the scope's resource.
func (c *podIdentityCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(opts.Scopes) != 1 {
		return azcore.AccessToken{}, fmt.Errorf("pod identity: want one scope, got %d", len(opts.Scopes))
	}
	resource := strings.TrimSuffix(opts.Scopes[0], "/.default")
	u := c.endpoint + podauth.HostTokenPath + "?resource=" + url.QueryEscape(resource)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return azcore.AccessToken{}, fmt.Errorf("pod identity: %w", err)
	}
	req.Header.Set(podauth.HeaderPodNamespace, c.namespace)
	req.Header.Set(podauth.HeaderPodName, c.pod)
	resp, err := c.client.Do(req)
	if err != nil {
		return azcore.AccessToken{}, fmt.Errorf("pod identity: nmi at %s: %w", c.endpoint, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return azcore.AccessToken{}, fmt.Errorf("pod identity: read nmi's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return azcore.AccessToken{}, &PodIdentityError{Status: resp.StatusCode, Description: errorDescription(body)}
	}
	var out hostTokenResponse
	if err := json.Unmarshal(body, &out); err != nil {
		return azcore.AccessToken{}, errors.New("pod identity: nmi's answer is not the /host/token/ JSON")
	}
	exp, err := strconv.ParseInt(out.Token.ExpiresOn, 10, 64)
	if err != nil || out.Token.AccessToken == "" {
		return azcore.AccessToken{}, errors.New("pod identity: nmi's answer has no token or expiry")
	}
	return azcore.AccessToken{Token: out.Token.AccessToken, ExpiresOn: time.Unix(exp, 0)}, nil
}

// PodIdentityError is nmi refusing or failing a pod's token request.
type PodIdentityError struct {
	Status      int
	Description string
}

// AuthenticationFailed reports whether nmi refused the pod (a 4xx other than
// 429), as opposed to failing to serve it; Key Vault fetch errors classify on
// it.
func (e *PodIdentityError) AuthenticationFailed() bool {
	return e.Status >= 400 && e.Status < 500 && e.Status != http.StatusTooManyRequests
}

func (e *PodIdentityError) Error() string {
	return fmt.Sprintf("pod identity: nmi answered %d: %s", e.Status, e.Description)
}

// errorDescription extracts error_description from an IMDS-style error body;
// nothing else of the body is kept.
func errorDescription(body []byte) string {
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if json.Unmarshal(body, &e) != nil || e.Description == "" {
		return "no error description"
	}
	return e.Description
}
