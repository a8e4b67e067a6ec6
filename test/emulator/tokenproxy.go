package emulator

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/golang-jwt/jwt/v5"
)

// AKS identity binding's token proxy, as the Azure SDK for Go reaches it
// (azidentity EnableAzureProxy, which kvdriver's useAzureTokenProxy mounts
// follow): a TLS connection to the proxy's address with the cluster's proxy
// server name (SNI), carrying the requests MSAL would send to Entra ID with
// their Host header unchanged. The proxy serves the tenant's OpenID
// configuration and exchanges a service-account token for audience
// api://AKSIdentityBinding for an access token of a managed identity the
// service account may use.
//
// The real proxy checks the token against the cluster that issued it and
// asks the cluster's RBAC whether the service account may use the identity
// (verb use-managed-identity on the client ID in API group
// cid.wi.aks.azure.com); the emulator checks the token's signature against
// the issuer's keys (TrustIssuer) and an IdentityBinding that names the
// service account, so a test states in one call what the cluster would
// grant.

// BindingAudience is the audience of the service-account tokens the token
// proxy accepts.
const BindingAudience = "api://AKSIdentityBinding"

// ServiceTokenProxy records the token proxy's requests.
const ServiceTokenProxy Service = "tokenproxy"

// TokenProxyOptions place the token proxy.
type TokenProxyOptions struct {
	// Host is the host name of the proxy URL clients are given
	// (https://HOST); a CONNECT to it reaches the proxy. Default
	// kubernetes.default.svc.cluster.local, the upstream provider's default.
	Host string
	// SNIName is the TLS server name the proxy answers to. Required.
	SNIName string
}

// IdentityBinding lets service-account tokens from Issuer with subject
// Subject (system:serviceaccount:<ns>:<sa>) obtain tokens of the managed
// identity ClientID through the token proxy.
type IdentityBinding struct {
	ClientID string
	Issuer   string
	Subject  string
}

type tokenProxyService struct {
	*core
	entra *entraService

	mu       sync.RWMutex
	opts     TokenProxyOptions
	bindings []IdentityBinding
}

// EnableTokenProxy starts answering as the cluster's token proxy.
func (e *Emulator) EnableTokenProxy(opts TokenProxyOptions) error {
	if opts.SNIName == "" {
		return errors.New("enable token proxy: SNIName is required")
	}
	if opts.Host == "" {
		opts.Host = "kubernetes.default.svc.cluster.local"
	}
	e.proxy.mu.Lock()
	e.proxy.opts = opts
	e.proxy.mu.Unlock()
	return nil
}

// AddIdentityBinding grants b. The identity must be registered.
func (e *Emulator) AddIdentityBinding(b IdentityBinding) error {
	if _, ok := e.dir.lookup(b.ClientID); !ok {
		return fmt.Errorf("add identity binding: no principal with client ID %s", b.ClientID)
	}
	if b.Issuer == "" || b.Subject == "" {
		return errors.New("add identity binding: Issuer and Subject are required")
	}
	e.proxy.mu.Lock()
	e.proxy.bindings = append(e.proxy.bindings, b)
	e.proxy.mu.Unlock()
	return nil
}

// handles reports whether a tunnel to host reaches the token proxy.
func (s *tokenProxyService) handles(host string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.opts.SNIName != "" && strings.EqualFold(host, s.opts.Host)
}

// serve answers one request that came through a tunnel to the proxy's host.
// sni is the server name the client sent in its TLS handshake.
func (s *tokenProxyService) serve(w http.ResponseWriter, r *http.Request, sni string) {
	host := strings.ToLower(hostOnly(r.Host))
	rec := Request{Service: ServiceTokenProxy, Host: host, Method: r.Method, Path: r.URL.Path}
	rec.Status = s.route(w, r, host, sni, &rec)
	s.rec.add(rec)
	s.logf("tokenproxy %s %s%s sni=%q client=%q -> %d", r.Method, host, r.URL.Path, sni, rec.Identity, rec.Status)
}

func (s *tokenProxyService) route(w http.ResponseWriter, r *http.Request, host, sni string, rec *Request) int {
	c, ok := cloudByAuthority(host)
	if !ok {
		// The proxy forwards to Entra ID by the Host header.
		return writeEntraError(w, r, Clouds[0], http.StatusBadRequest, "invalid_request", 90002,
			fmt.Sprintf("AADSTS90002: The token proxy does not forward to '%s': the Host header must be an Entra ID authority host.", host))
	}
	s.mu.RLock()
	want := s.opts.SNIName
	s.mu.RUnlock()
	if sni != want {
		return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 900023,
			fmt.Sprintf("AADSTS900023: The TLS server name '%s' is not this cluster's token proxy.", sni))
	}
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(segs) < 2 {
		return s.entra.notFound(w, r, c)
	}
	tenant, rest := segs[0], strings.Join(segs[1:], "/")
	rec.Tenant = tenant
	switch rest {
	case "v2.0/.well-known/openid-configuration":
		return s.entra.openIDConfiguration(w, r, c, tenant)
	case "oauth2/v2.0/token":
		return s.token(w, r, c, tenant, rec)
	}
	return s.entra.notFound(w, r, c)
}

func cloudByAuthority(host string) (Cloud, bool) {
	for _, c := range Clouds {
		if host == c.AuthorityHost {
			return c, true
		}
	}
	return Cloud{}, false
}

// token exchanges a binding-audience service-account token.
func (s *tokenProxyService) token(w http.ResponseWriter, r *http.Request, c Cloud, tenant string, rec *Request) int {
	form, status := tokenForm(w, r, c, rec)
	if status != 0 {
		return status
	}
	for _, p := range []string{"grant_type", "client_id", "scope", "client_assertion_type", "client_assertion"} {
		if form.Get(p) == "" {
			return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 900144,
				fmt.Sprintf("AADSTS900144: The request body must contain the following parameter: '%s'.", p))
		}
	}
	rec.Grant = "client_assertion"
	if gt := form.Get("grant_type"); gt != "client_credentials" {
		return writeEntraError(w, r, c, http.StatusBadRequest, "unsupported_grant_type", 70003,
			fmt.Sprintf("AADSTS70003: The app requested an unsupported grant type '%s'.", gt))
	}
	if at := form.Get("client_assertion_type"); at != clientAssertionTypeJWT {
		return writeEntraError(w, r, c, http.StatusBadRequest, "invalid_request", 50027,
			fmt.Sprintf("AADSTS50027: Invalid client_assertion_type '%s'.", at))
	}
	resource, status := s.entra.resourceFromScope(w, r, c, form.Get("scope"))
	if status != 0 {
		return status
	}
	clientID := form.Get("client_id")
	p, ok := s.dir.lookup(clientID)
	if !ok || !strings.EqualFold(p.TenantID, tenant) {
		return writeEntraError(w, r, c, http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("AADSTS700016: Application with identifier '%s' was not found in the directory '%s'.", clientID, tenant))
	}
	if e := s.checkBindingAssertion(clientID, form.Get("client_assertion")); e != nil {
		return writeEntraError(w, r, c, e.status, e.code, e.number, e.description)
	}
	token, claims, err := s.signer.issue(p, resource, s.tokenLife)
	if err != nil {
		return writeEntraError(w, r, c, http.StatusInternalServerError, "server_error", 90033,
			"AADSTS90033: A transient error has occurred. Please try again.")
	}
	writeTokenResponse(w, token, claims)
	return http.StatusOK
}

// checkBindingAssertion verifies a service-account token for the binding
// audience and that a binding lets its subject use clientID.
func (s *tokenProxyService) checkBindingAssertion(clientID, assertion string) *entraError {
	var unverified jwt.RegisteredClaims
	if _, _, err := jwt.NewParser().ParseUnverified(assertion, &unverified); err != nil {
		return &entraError{status: http.StatusBadRequest, code: "invalid_request", number: 50027,
			description: "AADSTS50027: JWT token is invalid or malformed."}
	}
	if e := s.entra.verifyExternal(unverified, assertion); e != nil {
		return e
	}
	if !containsString(unverified.Audience, BindingAudience) {
		return invalidClient(700212, "AADSTS700212: No matching federated identity record found for presented assertion audience '%s'. The token proxy accepts only tokens for %s.",
			strings.Join(unverified.Audience, ","), BindingAudience)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	issuerKnown := false
	for _, b := range s.bindings {
		if b.ClientID != clientID || b.Issuer != unverified.Issuer {
			continue
		}
		issuerKnown = true
		if b.Subject == unverified.Subject {
			return nil
		}
	}
	if !issuerKnown {
		return invalidClient(700211, "AADSTS700211: No matching federated identity record found for presented assertion issuer '%s': no identity binding of this cluster for '%s'.", unverified.Issuer, clientID)
	}
	return invalidClient(700213, "AADSTS700213: No matching federated identity record found for presented assertion subject '%s': it may not use managed identity '%s'.", unverified.Subject, clientID)
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
