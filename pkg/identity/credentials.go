package identity

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// Mode is how a workload authenticates to Azure.
type Mode string

// The authentication modes of the upstream Azure provider.
const (
	// ServicePrincipal uses a client ID and secret from the mount's
	// nodePublishSecretRef.
	ServicePrincipal Mode = "ServicePrincipal"
	// WorkloadIdentity exchanges the pod's service-account token for an
	// access token of an application with a matching federated credential.
	WorkloadIdentity Mode = "WorkloadIdentity"
	// PodIdentity asks nmi for a token of the pod's bound identity.
	PodIdentity Mode = "PodIdentity"
	// VMManagedIdentity uses a managed identity assigned to the node, through
	// the instance metadata service.
	VMManagedIdentity Mode = "VMManagedIdentity"
	// IdentityBinding exchanges the pod's service-account token for
	// api://AKSIdentityBinding through the cluster's token proxy (AKS
	// identity binding; see tokenproxy.go).
	IdentityBinding Mode = "IdentityBinding"
)

// Request describes the credential a mount needs. Which fields matter depends
// on Mode.
type Request struct {
	Mode Mode
	// AuthorityHost is the Entra ID authority, e.g.
	// https://login.microsoftonline.com/ (the cloud's).
	AuthorityHost string
	TenantID      string
	// ClientID is the application's client ID (ServicePrincipal,
	// WorkloadIdentity), or the managed identity's (IdentityBinding).
	ClientID string
	// ClientSecret is the service principal's secret.
	ClientSecret string
	// ServiceAccountToken is the pod's token for api://AzureADTokenExchange
	// (WorkloadIdentity) or api://AKSIdentityBinding (IdentityBinding), and
	// Namespace/ServiceAccount say whose it is.
	ServiceAccountToken string
	Namespace           string
	ServiceAccount      string
	// PodName, with Namespace, names the pod whose identity nmi serves
	// (PodIdentity).
	PodName string
	// ManagedIdentityID is a user-assigned identity's client ID
	// (VMManagedIdentity); empty selects the node's only identity.
	ManagedIdentityID string
}

// FieldError is a Request that cannot produce a credential; Field names the
// mount parameter or secret key at fault.
type FieldError struct {
	Field   string
	Problem string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Problem }

// Options configure Credentials.
type Options struct {
	// ClientOptions are passed to every azidentity credential: the cloud
	// is set per request; Transport, Retry and the like come from here.
	ClientOptions azcore.ClientOptions
	// MaxEntries bounds the credentials kept; default 1,000.
	MaxEntries int
	// NMIEndpoint is nmi's /host/token/ base URL for PodIdentity; default
	// DefaultNMIEndpoint.
	NMIEndpoint string
	// TokenProxy is the cluster's token proxy for IdentityBinding; nil
	// refuses identity-binding requests with ErrTokenProxyUnconfigured.
	TokenProxy *TokenProxy
}

// credKey identifies a reusable credential. The client secret appears only
// as a hash, so that a rotated secret gets a new credential and the map never
// holds the secret as a key.
type credKey struct {
	mode         Mode
	authority    string
	tenant       string
	clientID     string
	secretHash   [sha256.Size]byte
	namespace    string
	serviceAcct  string
	podName      string
	managedIdent string
}

// id is a stable, non-secret string for k, for callers that key their own
// caches (SDK clients) by credential.
func (k credKey) id() string {
	h := sha256.New()
	for _, s := range []string{string(k.mode), k.authority, k.tenant, k.clientID, k.namespace, k.serviceAcct, k.podName, k.managedIdent} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	h.Write(k.secretHash[:])
	return hex.EncodeToString(h.Sum(nil)[:16])
}

type cached struct {
	cred     azcore.TokenCredential
	id       string
	lastUsed time.Time
	// assertion holds the newest service-account token for a workload
	// identity credential; the credential reads it whenever it needs a new
	// access token.
	assertion *atomic.Pointer[string]
}

// Credentials builds azidentity credentials and keeps them, so that the same
// identity reuses one credential (and its token cache) across mounts: no
// Entra ID request while its access token is valid.
type Credentials struct {
	opts Options
	// nmi is the one client every pod-identity credential talks to nmi
	// with, so they share its connections.
	nmi *http.Client
	// proxy is the one transport every identity-binding credential talks
	// to the token proxy with; proxyErr says why there is none.
	proxy    *proxyTransport
	proxyErr error

	mu      sync.Mutex
	entries map[credKey]*cached
}

// NewCredentials returns an empty credential set.
func NewCredentials(opts Options) *Credentials {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 1000
	}
	if opts.NMIEndpoint == "" {
		opts.NMIEndpoint = DefaultNMIEndpoint
	}
	c := &Credentials{opts: opts, nmi: &http.Client{Timeout: 30 * time.Second}, entries: map[credKey]*cached{}}
	if opts.TokenProxy == nil {
		c.proxyErr = ErrTokenProxyUnconfigured
	} else {
		c.proxy, c.proxyErr = newProxyTransport(*opts.TokenProxy)
	}
	return c
}

// Credential returns the credential for req and a stable identifier of it
// (never secret) for keying per-credential caches.
//
// Workload-identity credentials are kept per service account, not per client
// ID: a token cached for one service account's federated credential is never
// handed to a pod of another service account that names the same client ID.
func (c *Credentials) Credential(req Request) (azcore.TokenCredential, string, error) {
	key, err := keyFor(req)
	if err != nil {
		return nil, "", err
	}
	if req.Mode == IdentityBinding {
		if err := c.proxyReady(); err != nil {
			return nil, "", err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok {
		e.lastUsed = time.Now()
		if e.assertion != nil {
			tok := req.ServiceAccountToken
			e.assertion.Store(&tok)
		}
		return e.cred, e.id, nil
	}
	e, err := c.build(key, req)
	if err != nil {
		return nil, "", err
	}
	if len(c.entries) >= c.opts.MaxEntries {
		c.evictOldestLocked()
	}
	c.entries[key] = e
	return e.cred, e.id, nil
}

// proxyReady checks that identity-binding credentials can reach a token
// proxy: it is configured, its server name is known and its CA loads. A
// failure is the node's configuration, reported before any exchange is tried
// (an error inside the exchange would reach the caller as an authentication
// failure).
func (c *Credentials) proxyReady() error {
	if c.proxyErr != nil {
		return c.proxyErr
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.proxy.transport(ctx)
	return err
}

func keyFor(req Request) (credKey, error) {
	k := credKey{mode: req.Mode, authority: req.AuthorityHost, tenant: req.TenantID}
	switch req.Mode {
	case ServicePrincipal:
		if req.TenantID == "" {
			return k, &FieldError{Field: "tenantId", Problem: "required for a service principal"}
		}
		if req.ClientID == "" {
			return k, &FieldError{Field: "clientid", Problem: "missing from the nodePublishSecretRef secret"}
		}
		if req.ClientSecret == "" {
			return k, &FieldError{Field: "clientsecret", Problem: "missing from the nodePublishSecretRef secret"}
		}
		k.clientID = req.ClientID
		k.secretHash = sha256.Sum256([]byte(req.ClientSecret))
	case WorkloadIdentity:
		if req.TenantID == "" {
			return k, &FieldError{Field: "tenantId", Problem: "required for workload identity"}
		}
		if req.ClientID == "" {
			return k, &FieldError{Field: "clientID", Problem: "required for workload identity"}
		}
		if req.ServiceAccountToken == "" {
			return k, &FieldError{Field: "csi.storage.k8s.io/serviceAccount.tokens",
				Problem: "no token for audience api://AzureADTokenExchange: the CSIDriver object needs tokenRequests with that audience"}
		}
		if req.Namespace == "" || req.ServiceAccount == "" {
			return k, &FieldError{Field: "csi.storage.k8s.io/serviceAccount.name", Problem: "the pod's service account is required for workload identity"}
		}
		k.clientID, k.namespace, k.serviceAcct = req.ClientID, req.Namespace, req.ServiceAccount
	case IdentityBinding:
		if req.TenantID == "" {
			return k, &FieldError{Field: "tenantId", Problem: "required for identity binding"}
		}
		if req.ClientID == "" {
			return k, &FieldError{Field: "clientID", Problem: "required for identity binding: the managed identity's client ID"}
		}
		if req.ServiceAccountToken == "" {
			return k, &FieldError{Field: "csi.storage.k8s.io/serviceAccount.tokens",
				Problem: "no token for audience " + BindingAudience + ": the CSIDriver object needs tokenRequests with that audience"}
		}
		if req.Namespace == "" || req.ServiceAccount == "" {
			return k, &FieldError{Field: "csi.storage.k8s.io/serviceAccount.name", Problem: "the pod's service account is required for identity binding"}
		}
		k.clientID, k.namespace, k.serviceAcct = req.ClientID, req.Namespace, req.ServiceAccount
	case VMManagedIdentity:
		k.managedIdent = req.ManagedIdentityID
	case PodIdentity:
		// nmi chooses the identity per pod, so the credential is per pod.
		if req.Namespace == "" || req.PodName == "" {
			return k, &FieldError{Field: "csi.storage.k8s.io/pod.name", Problem: "the pod's namespace and name are required for pod identity"}
		}
		k.namespace, k.podName = req.Namespace, req.PodName
	default:
		return k, &FieldError{Field: "mode", Problem: fmt.Sprintf("unknown authentication mode %q", req.Mode)}
	}
	return k, nil
}

func (c *Credentials) build(key credKey, req Request) (*cached, error) {
	opts := c.opts.ClientOptions
	if req.AuthorityHost != "" {
		opts.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: req.AuthorityHost, Services: opts.Cloud.Services}
	}
	e := &cached{id: key.id(), lastUsed: time.Now()}
	var err error
	switch req.Mode {
	case PodIdentity:
		e.cred = &podIdentityCredential{endpoint: strings.TrimRight(c.opts.NMIEndpoint, "/"),
			client: c.nmi, namespace: req.Namespace, pod: req.PodName}
	case ServicePrincipal:
		e.cred, err = azidentity.NewClientSecretCredential(req.TenantID, req.ClientID, req.ClientSecret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: KnownAuthority(opts.Cloud.ActiveDirectoryAuthorityHost)})
	case WorkloadIdentity, IdentityBinding:
		e.assertion = &atomic.Pointer[string]{}
		tok := req.ServiceAccountToken
		e.assertion.Store(&tok)
		holder := e.assertion
		caOpts := &azidentity.ClientAssertionCredentialOptions{ClientOptions: opts,
			DisableInstanceDiscovery: KnownAuthority(opts.Cloud.ActiveDirectoryAuthorityHost)}
		if req.Mode == IdentityBinding {
			// As the Azure SDK's EnableAzureProxy and the upstream
			// provider: every request to the proxy, no instance
			// discovery.
			caOpts.ClientOptions.Transport = c.proxy
			caOpts.DisableInstanceDiscovery = true
		}
		e.cred, err = azidentity.NewClientAssertionCredential(req.TenantID, req.ClientID,
			func(context.Context) (string, error) { return *holder.Load(), nil }, caOpts)
	case VMManagedIdentity:
		mi := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		if id := req.ManagedIdentityID; id != "" {
			if strings.HasPrefix(strings.ToLower(id), "/subscriptions/") {
				mi.ID = azidentity.ResourceID(id)
			} else {
				mi.ID = azidentity.ClientID(id)
			}
		}
		e.cred, err = azidentity.NewManagedIdentityCredential(mi)
	}
	if err != nil {
		return nil, fmt.Errorf("build %s credential: %w", req.Mode, err)
	}
	return e, nil
}

func (c *Credentials) evictOldestLocked() {
	var (
		oldest credKey
		when   time.Time
		found  bool
	)
	for k, e := range c.entries {
		if !found || e.lastUsed.Before(when) {
			oldest, when, found = k, e.lastUsed, true
		}
	}
	if found {
		delete(c.entries, oldest)
	}
}
