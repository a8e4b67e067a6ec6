package imds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/pkg/tokensource"
)

// TestTokenWireFormat checks the 200 answer field by field: every value a
// JSON string, IMDS's fields, expires_in counted from now.
func TestTokenWireFormat(t *testing.T) {
	w := newTestWorld(t, nil)
	addr := w.serve(t, podIP)[podIP]
	status, hdr, body := rawRequest(t, addr, get(TokenPath+"?"+goodQuery, md))
	require.Equal(t, http.StatusOK, status, body)
	assert.Equal(t, "application/json; charset=utf-8", hdr.Get("Content-Type"))

	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &m))
	assert.Equal(t, map[string]any{
		"access_token":  "tok-" + idA.ClientID + "-https://vault.azure.net",
		"refresh_token": "",
		"expires_in":    "3600",
		"expires_on":    fmt.Sprint(fixedNow.Add(time.Hour).Unix()),
		"not_before":    fmt.Sprint(fixedNow.Add(-5 * time.Minute).Unix()),
		"resource":      "https://vault.azure.net",
		"token_type":    "Bearer",
		"client_id":     idA.ClientID,
	}, m)
	for k, v := range m {
		assert.IsType(t, "", v, "IMDS answers every value as a JSON string; %s is not", k)
	}
	// adal/aad-pod-identity clients decode the numbers as json.Number, which
	// takes quoted numbers.
	var adal struct {
		ExpiresIn json.Number `json:"expires_in"`
		ExpiresOn json.Number `json:"expires_on"`
		NotBefore json.Number `json:"not_before"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &adal))
	n, err := adal.ExpiresIn.Int64()
	require.NoError(t, err)
	assert.Equal(t, int64(3600), n)
}

// TestTokenResourceEchoed: resource comes back exactly as requested
// (unescaped), JSON-escaped where needed.
func TestTokenResourceEchoed(t *testing.T) {
	w := newTestWorld(t, nil)
	addr := w.serve(t, podIP)[podIP]
	resource := `api://app<&>"x"/é`
	q := "api-version=2019-08-01&resource=" + strings.NewReplacer(":", "%3A", "/", "%2F", "<", "%3C", "&", "%26", ">", "%3E", `"`, "%22", "é", "%C3%A9").Replace(resource)
	status, _, body := rawRequest(t, addr, get(TokenPath+"?"+q, md))
	require.Equal(t, http.StatusOK, status, body)
	var m map[string]string
	require.NoError(t, json.Unmarshal([]byte(body), &m))
	assert.Equal(t, resource, m["resource"])
	assert.Equal(t, "tok-"+idA.ClientID+"-"+resource, m["access_token"])
}

// TestAzidentityAcceptsAnswer runs the unmodified azidentity
// ManagedIdentityCredential against the server: its transport dials the
// server's loopback port whatever address the SDK asks for, so no packet is
// sent towards 169.254.169.254.
func TestAzidentityAcceptsAnswer(t *testing.T) {
	for _, v := range []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "IDENTITY_SERVER_THUMBPRINT"} {
		t.Setenv(v, "")
	}
	w := newTestWorld(t, time.Now)
	addr := w.serve(t, multiIP)[multiIP]
	var dialed []string
	client := &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, target string) (net.Conn, error) {
			dialed = append(dialed, target)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
	}}
	cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ID:            azidentity.ClientID(idC.ClientID),
		ClientOptions: azcore.ClientOptions{Transport: client, Retry: policy.RetryOptions{MaxRetries: -1}},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
	require.NoError(t, err)
	assert.Equal(t, "tok-"+idC.ClientID+"-https://vault.azure.net", at.Token)
	assert.WithinDuration(t, w.tokens.exp, at.ExpiresOn, time.Second)
	assert.Equal(t, []string{"169.254.169.254:80"}, dialed)

	// An identity the pod is not bound to is an authentication failure, not
	// "credential unavailable" (which would let a chain try something else).
	cred, err = azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ID:            azidentity.ClientID(idB.ClientID),
		ClientOptions: azcore.ClientOptions{Transport: client, Retry: policy.RetryOptions{MaxRetries: -1}},
	})
	require.NoError(t, err)
	_, err = cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
	var authErr *azidentity.AuthenticationFailedError
	require.ErrorAs(t, err, &authErr)
	assert.Equal(t, http.StatusForbidden, authErr.RawResponse.StatusCode)
	assert.NotContains(t, err.Error(), idA.ClientID)
}

// TestUpstreamFailures maps TokenSource errors to IMDS-style answers without
// echoing anything the error carried.
func TestUpstreamFailures(t *testing.T) {
	w := newTestWorld(t, nil)
	addr := w.serve(t, podIP)[podIP]
	planted := "eyJplanted.secret.token"
	cases := []struct {
		name       string
		err        error
		status     int
		body       string
		retryAfter string
	}{
		{"cache busy", fmt.Errorf("wrapped: %w", tokencache.ErrUpstreamBusy), 429,
			`{"error":"too_many_requests","error_description":"Too many token requests to the node's identity endpoint; retry after a short wait"}`, "1"},
		{"identity not on the node", &tokensource.UpstreamError{Status: 400, Code: "invalid_request", Description: "Identity not found"}, 400,
			`{"error":"invalid_request","error_description":"Identity not found"}`, ""},
		{"identity being assigned", &tokensource.UpstreamError{Status: 404}, 404,
			`{"error":"not_found","error_description":"The node's identity endpoint answered 404"}`, ""},
		{"IMDS updating", &tokensource.UpstreamError{Status: 410, Code: "service_unavailable", Description: "updating"}, 410,
			`{"error":"service_unavailable","error_description":"updating"}`, ""},
		{"IMDS throttling", &tokensource.UpstreamError{Status: 429, Code: "too_many_requests", Description: "slow down"}, 429,
			`{"error":"too_many_requests","error_description":"slow down"}`, "1"},
		{"IMDS 500", &tokensource.UpstreamError{Status: 500, Code: "unknown_error", Description: planted}, 502,
			`{"error":"unknown_error","error_description":"The node's identity endpoint answered 500"}`, ""},
		{"IMDS 401", &tokensource.UpstreamError{Status: 401}, 502,
			`{"error":"unknown_error","error_description":"The node's identity endpoint answered 401"}`, ""},
		{"transport failure", errors.New("dial tcp 169.254.169.254:80: connect: connection refused"), 502,
			`{"error":"unknown_error","error_description":"The node's identity endpoint could not be reached"}`, ""},
		{"Entra ID refuses the exchange", entraFailure(400, "AADSTS70021: No matching federated identity record found"), 403,
			`{"error":"invalid_request","error_description":"Entra ID refused the token exchange for this pod's service account (AADSTS70021)"}`, ""},
		{"Entra ID failing", entraFailure(503, "AADSTS90033: A transient error has occurred"), 502,
			`{"error":"unknown_error","error_description":"The workload identity token exchange failed for now (Entra ID or the Kubernetes API server); retry"}`, ""},
		{"Entra ID throttling", entraFailure(429, "AADSTS50196: throttled"), 429,
			`{"error":"too_many_requests","error_description":"Entra ID is throttling token requests; retry after a short wait"}`, "1"},
		{"no service-account token", &azidentity.AuthenticationFailedError{}, 502,
			`{"error":"unknown_error","error_description":"The workload identity token exchange failed for now (Entra ID or the Kubernetes API server); retry"}`, ""},
		{"no source for the identity kind", tokensource.ErrNoSource, 500,
			`{"error":"unknown_error","error_description":"This node cannot issue tokens for the bound identity's kind"}`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.tokens.fail(tc.err)
			status, hdr, body := rawRequest(t, addr, get(TokenPath+"?"+goodQuery, md))
			assert.Equal(t, tc.status, status)
			assert.Equal(t, tc.body, body)
			assert.Equal(t, tc.retryAfter, hdr.Get("Retry-After"))
			assert.NotContains(t, body, planted)
		})
	}
	assert.NotContains(t, w.logs.String(), planted, "an upstream 5xx description is never logged")
	assert.Contains(t, w.logs.String(), "token request failed")
}

func TestMetrics(t *testing.T) {
	w := newTestWorld(t, nil)
	cache := tokencache.New(tokencache.SourceFunc(func(context.Context, tokencache.Key) (tokencache.Token, error) {
		return tokencache.Token{AccessToken: "t", ExpiresOn: time.Now().Add(time.Hour)}, nil
	}), tokencache.Options{})
	tokens := tokensource.Cached{IMDS: cache}
	srv, err := New(Config{Pods: w.srv.pods, Bindings: w.srv.bindings, Tokens: tokens, CacheStats: tokens.Stats, Registry: prometheus.NewRegistry()})
	require.NoError(t, err)
	w.srv = srv
	addrs := w.serve(t, podIP, "")
	for range 3 {
		status, _, body := rawRequest(t, addrs[podIP], get(TokenPath+"?"+goodQuery, md))
		require.Equal(t, http.StatusOK, status, body)
	}
	status, _, _ := rawRequest(t, addrs[podIP], get(`/metadata/identity\oauth2\token/`, md))
	require.Equal(t, http.StatusNotFound, status)
	status, _, _ = rawRequest(t, addrs[podIP], get(TokenPath+"?"+goodQuery+"&client_id="+idB.ClientID, md))
	require.Equal(t, http.StatusForbidden, status)

	status, _, body := rawRequest(t, addrs[""], get("/metrics"))
	require.Equal(t, http.StatusOK, status)
	for _, want := range []string{
		`kvnode_nmi_requests_total{endpoint="token",outcome="ok"} 3`,
		`kvnode_nmi_requests_total{endpoint="token",outcome="forbidden"} 1`,
		`kvnode_nmi_requests_total{endpoint="unknown",outcome="not_found"} 1`,
		`kvnode_nmi_request_duration_seconds_count{endpoint="token"} 4`,
		`kvnode_nmi_token_cache_hits_total 2`,
		`kvnode_nmi_token_cache_misses_total 1`,
		`kvnode_nmi_upstream_requests_total 1`,
		`kvnode_nmi_upstream_errors_total 0`,
	} {
		assert.Contains(t, body, want+"\n")
	}
}

// TestAppendJSONString matches encoding/json's escaping.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " backslash \`, "ctl \x00\x01\x1f\x7f \n\r\t\b\f", "<script>&amp;",
		"é ü 中文 🙂", "line\u2028sep\u2029", "bad \xff\xfe utf8", "eyJ0eXAiOiJKV1Qi.eyJhdWQiOiJ4In0.sig-_",
	} {
		want, err := json.Marshal(s)
		require.NoError(t, err)
		assert.Equal(t, string(want), string(appendJSONString(nil, s)), "%q", s)
	}
}

// TestMaybeEscapeIn8 checks the word-at-a-time test against the byte rule
// for every byte value at every position: it may flag harmless bytes, never
// miss one that needs escaping.
func TestMaybeEscapeIn8(t *testing.T) {
	for c := range 256 {
		must := c < ' ' || c >= 0x80 || strings.IndexByte(`"\<>&`, byte(c)) >= 0
		flagged := c < '-' || c >= 0x80 || strings.IndexByte(`<>\`, byte(c)) >= 0
		for p := range 8 {
			w := []byte("abcdefgh")
			w[p] = byte(c)
			got := maybeEscapeIn8(string(w))
			if must && !got {
				t.Fatalf("maybeEscapeIn8 misses byte %#x at %d", c, p)
			}
			if got != flagged {
				t.Fatalf("maybeEscapeIn8 with byte %#x at %d = %v, want %v", c, p, got, flagged)
			}
			long := "0123456789abcdef" + string(w) + "ABCDEFGH" + string(w[:p])
			j, err := json.Marshal(long)
			require.NoError(t, err)
			require.Equal(t, string(j), string(appendJSONString(nil, long)), "%q", long)
		}
	}
}

// entraFailure is azidentity's error for an answer of Entra ID's token
// endpoint with status and, in its body, message.
func entraFailure(status int, message string) error {
	return fmt.Errorf("workload identity: %w", &azidentity.AuthenticationFailedError{RawResponse: &http.Response{
		StatusCode: status, Status: http.StatusText(status), Header: http.Header{},
		Body:    io.NopCloser(strings.NewReader(`{"error":"invalid_request","error_description":"` + message + `"}`)),
		Request: &http.Request{Method: http.MethodPost, URL: &url.URL{Scheme: "https", Host: "login.microsoftonline.com", Path: "/t/oauth2/v2.0/token"}},
	}})
}
