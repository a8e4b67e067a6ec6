package tokensource

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/tokencache"
)

// WorkloadTokenOptions configure WorkloadTokens.
type WorkloadTokenOptions struct {
	// ClientOptions are the Azure SDK's: cloud, transport, retries. The
	// zero value uses the public cloud and the environment's proxy settings.
	ClientOptions azcore.ClientOptions
	// AssertionLifetime is the life of each service-account token requested;
	// default (and the API server's minimum) 10 minutes. It is presented
	// once, at once.
	AssertionLifetime time.Duration
}

// WorkloadTokens is the tokencache.Source for workload identities, as nmi
// serves them: for a key (application, tenant, resource and the service
// account that asks) it asks the TokenRequest API for a token of
// the key's service account with audience identity.WorkloadAudience and a short life,
// and exchanges it at Entra ID for an access token of the key's application
// (azidentity's ClientAssertionCredential). Entra ID checks that the
// application has a federated credential for this issuer and
// system:serviceaccount:<namespace>:<name>.
//
// Each call builds its own credential, so it always makes a fresh exchange:
// the cache in front decides when a token is due, and no second cache inside
// the SDK returns an old token to a refresh.
//
// The service-account token is not bound to a pod: the cache is per service
// account, so the token is not tied to any one pod's life, and a background
// refresh has no pod to bind it to. It is short-lived, never stored and
// never logged.
type WorkloadTokens struct {
	sas  TokenRequester
	opts WorkloadTokenOptions
}

// TokenRequester asks the TokenRequest API for a ServiceAccount's token
// (kube.Core).
type TokenRequester interface {
	CreateToken(ctx context.Context, namespace, name string, tr *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error)
}

var _ tokencache.Source = (*WorkloadTokens)(nil)

// NewWorkloadTokens returns a source that requests service-account tokens
// through sas; it needs "create" on serviceaccounts/token.
func NewWorkloadTokens(sas TokenRequester, opts WorkloadTokenOptions) *WorkloadTokens {
	if opts.AssertionLifetime <= 0 {
		opts.AssertionLifetime = 10 * time.Minute
	}
	return &WorkloadTokens{sas: sas, opts: opts}
}

// errNoTenant is returned for a workload identity without a tenant.
var errNoTenant = errors.New("no tenant ID: annotate the ServiceAccount with azure.workload.identity/tenant-id or set nmi's default tenant")

// Token exchanges a fresh service-account token for an access token of key.
func (w *WorkloadTokens) Token(ctx context.Context, key tokencache.Key) (tokencache.Token, error) {
	sa := key.ServiceAccount
	if sa.Namespace == "" || sa.Name == "" {
		return tokencache.Token{}, fmt.Errorf("workload identity %s: the key names no service account", key.Identity)
	}
	if key.Tenant == "" {
		return tokencache.Token{}, fmt.Errorf("workload identity %s for %s: %w", key.Identity, sa, errNoTenant)
	}
	assertion := func(ctx context.Context) (string, error) {
		return w.serviceAccountToken(ctx, sa.Namespace, sa.Name)
	}
	cred, err := azidentity.NewClientAssertionCredential(key.Tenant, key.Identity, assertion,
		&azidentity.ClientAssertionCredentialOptions{ClientOptions: w.opts.ClientOptions,
			DisableInstanceDiscovery: identity.KnownAuthority(w.opts.ClientOptions.Cloud.ActiveDirectoryAuthorityHost)})
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("workload identity %s: build credential: %w", key.Identity, err)
	}
	tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{ScopeFor(key.Resource)}})
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("workload identity %s for %s: %w", key.Identity, sa, err)
	}
	return tokencache.Token{AccessToken: tok.Token, ExpiresOn: tok.ExpiresOn}, nil
}

// serviceAccountToken asks the TokenRequest API for namespace/name's token
// for Entra ID.
func (w *WorkloadTokens) serviceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	secs := int64(w.opts.AssertionLifetime / time.Second)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{identity.WorkloadAudience},
		ExpirationSeconds: &secs,
	}}
	out, err := w.sas.CreateToken(ctx, namespace, name, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request a token of service account %s/%s: %w", namespace, name, err)
	}
	if out.Status.Token == "" {
		return "", fmt.Errorf("request a token of service account %s/%s: empty answer", namespace, name)
	}
	return out.Status.Token, nil
}

// ScopeFor turns an IMDS-style resource ("https://vault.azure.net") into the
// scope Entra ID's v2 endpoint expects ("https://vault.azure.net/.default").
// A resource with a trailing slash keeps it ("https://management.azure.com/"
// gives "https://management.azure.com//.default"), as Entra ID documents for
// v1 resources.
func ScopeFor(resource string) string {
	if strings.HasSuffix(resource, "/.default") {
		return resource
	}
	return resource + "/.default"
}
