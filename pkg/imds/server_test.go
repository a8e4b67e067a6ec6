package imds

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvnode/kvnode/pkg/podauth"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	goodQuery = "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"

	bodyNotFound     = `{"error":"not_found","error_description":"The requested path is not found on the instance metadata service"}`
	bodyNoMetadata   = `{"error":"invalid_request","error_description":"Required metadata header not specified"}`
	bodyForwarded    = `{"error":"invalid_request","error_description":"Request has X-Forwarded-For header; IMDS does not serve requests through a proxy"}`
	bodyOnlyGet      = `{"error":"invalid_request","error_description":"Only GET is allowed"}`
	bodyBadQuery     = `{"error":"invalid_request","error_description":"Query string is malformed"}`
	bodyNoAPIVersion = `{"error":"invalid_request","error_description":"Required query variable 'api-version' is missing"}`
	bodyNoResource   = `{"error":"invalid_request","error_description":"Required audience parameter not specified"}`
	bodyOnlyOne      = `{"error":"invalid_request","error_description":"Only one of client_id, object_id, msi_res_id or mi_res_id may be specified"}`
	bodyNotBound     = `{"error":"invalid_request","error_description":"The requested identity is not bound to this pod"}`
	bodyNoneBound    = `{"error":"invalid_request","error_description":"No identity is bound to this pod"}`
	bodyAmbiguous    = `{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}`
	bodyNoPod        = `{"error":"not_found","error_description":"The request's source address is not a pod on this node"}`
	bodyHostOnly     = `{"error":"invalid_request","error_description":"The host token endpoint only serves the node itself"}`
	bodyNoPodHeaders = `{"error":"invalid_request","error_description":"Required headers 'podns' and 'podname' not specified"}`
	bodyNoSuchPod    = `{"error":"not_found","error_description":"No such pod on this node"}`
)

// tokenBody is the exact answer for identity id and the vault resource at
// fixedNow, from countingTokens.
func tokenBody(id podauth.Identity) string {
	return `{"access_token":"tok-` + id.ClientID + `-https://vault.azure.net","refresh_token":"","expires_in":"3600",` +
		`"expires_on":"1767326645","not_before":"1767322745","resource":"https://vault.azure.net","token_type":"Bearer",` +
		`"client_id":"` + id.ClientID + `"}`
}

// rawRequest writes req on a new connection to addr, byte for byte, and
// reads one answer.
func rawRequest(t *testing.T, addr, req string) (int, http.Header, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, req)
	require.NoError(t, err)
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, string(body)
}

// get builds a raw GET request for target with headers (one "Name: value"
// per entry).
func get(target string, headers ...string) string {
	return reqLine("GET", target, headers...)
}

func reqLine(method, target string, headers ...string) string {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

const md = "Metadata: true"

func TestHostileRequests(t *testing.T) {
	w := newTestWorld(t, nil)
	addrs := w.serve(t, podIP, multiIP, unboundIP, strangerIP, "")
	tok := TokenPath + "?" + goodQuery

	cases := []struct {
		name   string
		from   string // source address as nmi sees it; "" is the node (loopback)
		req    string
		status int
		body   string
	}{
		// Path tricks: all refused before anything else, and never forwarded.
		{"backslash path (CVE-2022-23551)", podIP, get(`/metadata/identity\oauth2\token/?`+goodQuery, md), 404, bodyNotFound},
		{"backslash path, no trailing slash", podIP, get(`/metadata/identity\oauth2\token?`+goodQuery, md), 404, bodyNotFound},
		{"percent-encoded slashes", podIP, get("/metadata/identity%2Foauth2%2Ftoken?"+goodQuery, md), 404, bodyNotFound},
		{"percent-encoded letter", podIP, get("/metadata/identity/oauth2/t%6Fken?"+goodQuery, md), 404, bodyNotFound},
		{"percent-encoded question mark", podIP, get("/metadata/identity/oauth2/token%3F"+goodQuery, md), 404, bodyNotFound},
		{"case variant", podIP, get("/Metadata/identity/oauth2/token?"+goodQuery, md), 404, bodyNotFound},
		{"upper-case token", podIP, get("/metadata/identity/oauth2/TOKEN?"+goodQuery, md), 404, bodyNotFound},
		{"leading double slash", podIP, get("//metadata/identity/oauth2/token?"+goodQuery, md), 404, bodyNotFound},
		{"inner double slash", podIP, get("/metadata//identity/oauth2/token?"+goodQuery, md), 404, bodyNotFound},
		{"dot-dot segment", podIP, get("/metadata/identity/../identity/oauth2/token?"+goodQuery, md), 404, bodyNotFound},
		{"dot segment", podIP, get("/metadata/identity/./oauth2/token?"+goodQuery, md), 404, bodyNotFound},
		{"trailing path segment", podIP, get("/metadata/identity/oauth2/token/x?"+goodQuery, md), 404, bodyNotFound},
		{"path parameter", podIP, get("/metadata/identity/oauth2/token;x=y?"+goodQuery, md), 404, bodyNotFound},
		{"trailing slash", podIP, get("/metadata/identity/oauth2/token/?"+goodQuery, md), 404, bodyNotFound},
		{"fragment", podIP, get("/metadata/identity/oauth2/token#x", md), 404, bodyNotFound},
		{"absolute-form target", podIP, get("http://169.254.169.254/metadata/identity/oauth2/token?"+goodQuery, md), 404, bodyNotFound},
		{"CONNECT authority-form", podIP, reqLine("CONNECT", "169.254.169.254:80", md), 404, bodyNotFound},
		{"OPTIONS asterisk", podIP, reqLine("OPTIONS", "*"), 404, bodyNotFound},
		{"other IMDS path is not proxied", podIP, get("/metadata/instance?api-version=2021-02-01", md), 404, bodyNotFound},
		{"root", podIP, get("/", md), 404, bodyNotFound},
		{"host token without trailing slash", "", get("/host/token?resource=https%3A%2F%2Fvault.azure.net", "podns: default", "podname: app"), 404, bodyNotFound},
		{"healthz with trailing slash", podIP, get("/healthz/"), 404, bodyNotFound},

		// Methods.
		{"POST", podIP, reqLine("POST", tok, md, "Content-Length: 0"), 405, bodyOnlyGet},
		{"HEAD", podIP, reqLine("HEAD", tok, md), 405, ""},
		{"PUT", podIP, reqLine("PUT", tok, md, "Content-Length: 0"), 405, bodyOnlyGet},
		{"CONNECT to the token path", podIP, reqLine("CONNECT", tok, md), 405, bodyOnlyGet},
		{"DELETE host token", "", reqLine("DELETE", "/host/token/?resource=x", "podns: default", "podname: app"), 405, bodyOnlyGet},
		{"POST metrics", podIP, reqLine("POST", "/metrics", "Content-Length: 0"), 405, bodyOnlyGet},

		// Header games.
		{"no Metadata header", podIP, get(tok), 400, bodyNoMetadata},
		{"Metadata: True", podIP, get(tok, "Metadata: True"), 400, bodyNoMetadata},
		{"Metadata: false", podIP, get(tok, "Metadata: false"), 400, bodyNoMetadata},
		{"Metadata twice", podIP, get(tok, md, md), 400, bodyNoMetadata},
		{"X-Forwarded-For", podIP, get(tok, md, "X-Forwarded-For: 10.244.2.8"), 400, bodyForwarded},
		{"empty X-Forwarded-For", podIP, get(tok, md, "X-Forwarded-For:"), 400, bodyForwarded},

		// Parameters.
		{"no query", podIP, get(TokenPath, md), 400, bodyNoAPIVersion},
		{"no api-version", podIP, get(TokenPath+"?resource=https%3A%2F%2Fvault.azure.net", md), 400, bodyNoAPIVersion},
		{"old api-version", podIP, get(TokenPath+"?api-version=2017-09-01&resource=x", md), 400,
			`{"error":"invalid_request","error_description":"Invalid api-version '2017-09-01'"}`},
		{"api-version not a date", podIP, get(TokenPath+"?api-version=latest&resource=x", md), 400,
			`{"error":"invalid_request","error_description":"Invalid api-version 'latest'"}`},
		{"no resource", podIP, get(TokenPath+"?api-version=2018-02-01", md), 400, bodyNoResource},
		{"empty resource", podIP, get(TokenPath+"?api-version=2018-02-01&resource=", md), 400, bodyNoResource},
		{"duplicate resource", podIP, get(tok+"&resource=https%3A%2F%2Fmanagement.azure.com", md), 400,
			`{"error":"invalid_request","error_description":"Duplicate query parameter 'resource'"}`},
		{"duplicate hidden by escaping", podIP, get(tok+"&resourc%65=https%3A%2F%2Fmanagement.azure.com", md), 400,
			`{"error":"invalid_request","error_description":"Duplicate query parameter 'resource'"}`},
		{"duplicate client_id", podIP, get(tok+"&client_id="+idA.ClientID+"&client_id="+idB.ClientID, md), 400,
			`{"error":"invalid_request","error_description":"Duplicate query parameter 'client_id'"}`},
		{"duplicate api-version", podIP, get(tok+"&api-version=2019-08-01", md), 400,
			`{"error":"invalid_request","error_description":"Duplicate query parameter 'api-version'"}`},
		{"semicolon separator", podIP, get(TokenPath+"?api-version=2018-02-01;resource=x", md), 400, bodyBadQuery},
		{"bad escape", podIP, get(tok+"&client_id=%zz", md), 400, bodyBadQuery},
		{"client_id and msi_res_id", podIP, get(tok+"&client_id="+idA.ClientID+"&msi_res_id="+idA.ResourceID, md), 400, bodyOnlyOne},
		{"object_id and mi_res_id", podIP, get(tok+"&object_id="+idA.ObjectID+"&mi_res_id="+idA.ResourceID, md), 400, bodyOnlyOne},
		{"resource with a control character", podIP, get(TokenPath+"?api-version=2018-02-01&resource=https%3A%2F%2Fv%0Aault", md), 400,
			`{"error":"invalid_resource","error_description":"Resource contains a space or a control character"}`},

		// Other identities.
		{"another pod's client_id", podIP, get(tok+"&client_id="+idB.ClientID, md), 403, bodyNotBound},
		{"another pod's object_id", podIP, get(tok+"&object_id="+idB.ObjectID, md), 403, bodyNotBound},
		{"another pod's msi_res_id", podIP, get(tok+"&msi_res_id="+idB.ResourceID, md), 403, bodyNotBound},
		{"another pod's mi_res_id", podIP, get(tok+"&mi_res_id="+idB.ResourceID, md), 403, bodyNotBound},
		{"object_id the binding does not carry", multiIP, get(tok+"&object_id="+idC.ClientID, md), 403, bodyNotBound},
		{"pod with no binding", unboundIP, get(tok, md), 403, bodyNoneBound},
		{"pod with no binding names an identity", unboundIP, get(tok+"&client_id="+idB.ClientID, md), 403, bodyNoneBound},
		{"several bound, none named", multiIP, get(tok, md), 400, bodyAmbiguous},
		{"source address of no pod", strangerIP, get(tok, md), 404, bodyNoPod},
		{"node itself on the IMDS path", "", get(tok, md), 404, bodyNoPod},

		// /host/token/.
		{"host token from a pod", podIP, get("/host/token/?resource=https%3A%2F%2Fvault.azure.net", "podns: default", "podname: app"), 403, bodyHostOnly},
		{"host token from a pod naming another pod", podIP, get("/host/token/?resource=x", "podns: default", "podname: other"), 403, bodyHostOnly},
		{"host token without podns", "", get("/host/token/?resource=x", "podname: app"), 400, bodyNoPodHeaders},
		{"host token with two podname headers", "", get("/host/token/?resource=x", "podns: default", "podname: app", "podname: other"), 400, bodyNoPodHeaders},
		{"host token without resource", "", get("/host/token/", "podns: default", "podname: app"), 400, bodyNoResource},
		{"host token for an unknown pod", "", get("/host/token/?resource=x", "podns: default", "podname: ghost"), 404, bodyNoSuchPod},
		{"host token with X-Forwarded-For", "", get("/host/token/?resource=x", "podns: default", "podname: app", "X-Forwarded-For: 10.0.0.1"), 400, bodyForwarded},
		{"host token for another pod's identity", "", get("/host/token/?resource=x&client_id="+idB.ClientID, "podns: default", "podname: app"), 403, bodyNotBound},

		// Controls: what is allowed still works.
		{"own identity, no selector", podIP, get(tok, md), 200, tokenBody(idA)},
		{"own identity by client_id in upper case", podIP, get(tok+"&client_id="+strings.ToUpper(idA.ClientID), md), 200, tokenBody(idA)},
		{"own identity by msi_res_id in another case", podIP, get(tok+"&msi_res_id="+strings.ToLower(idA.ResourceID), md), 200, tokenBody(idA)},
		{"one of several by client_id", multiIP, get(tok+"&client_id="+idC.ClientID, md), 200, tokenBody(idC)},
		{"metadata header name in lower case", podIP, get(tok, "metadata: true"), 200, tokenBody(idA)},
		{"host token", "", get("/host/token/?resource=https%3A%2F%2Fvault.azure.net", "podns: default", "podname: app"), 200,
			`{"token":` + tokenBody(idA) + `,"clientid":"` + idA.ClientID + `"}`},
		{"healthz", podIP, get("/healthz"), 200, "ok\n"},
	}
	require.GreaterOrEqual(t, len(cases), 25)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := w.tokens.calls.Load()
			status, hdr, body := rawRequest(t, addrs[tc.from], tc.req)
			assert.Equal(t, tc.status, status)
			assert.Equal(t, tc.body, body)
			switch {
			case status == http.StatusOK && tc.name != "healthz":
				assert.Equal(t, int64(1), w.tokens.calls.Load()-before, "one token lookup")
				assert.Equal(t, "application/json; charset=utf-8", hdr.Get("Content-Type"))
			case status != http.StatusOK:
				assert.Equal(t, before, w.tokens.calls.Load(), "a refused request must not reach the token source")
				assert.Equal(t, "application/json; charset=utf-8", hdr.Get("Content-Type"))
			}
			if status == http.StatusMethodNotAllowed {
				assert.Equal(t, "GET", hdr.Get("Allow"))
			}
		})
	}
	assert.NotContains(t, w.logs.String(), "tok-", "no token is ever logged")
	assert.Contains(t, w.logs.String(), `"reason"="The requested identity is not bound to this pod"`)
}

func TestReadyz(t *testing.T) {
	ready := make(chan struct{})
	w := newTestWorld(t, nil)
	srv, err := New(Config{Pods: newFakePods(), Bindings: fakeBindings{}, Tokens: w.tokens, Ready: func() error {
		select {
		case <-ready:
			return nil
		default:
			return assert.AnError
		}
	}})
	require.NoError(t, err)
	w.srv = srv
	addr := w.serve(t, "")[""]

	status, _, body := rawRequest(t, addr, get("/readyz"))
	assert.Equal(t, http.StatusServiceUnavailable, status)
	assert.Equal(t, "not ready\n", body)
	close(ready)
	status, _, body = rawRequest(t, addr, get("/readyz"))
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, "ok\n", body)
}

// TestNotSyncedIsRetryable: until the pod index and bindings have synced,
// a bound pod, an unbound pod and an address of no pod all get 503 with
// Retry-After (retried by every IMDS client), never 403 or 404 from a
// partial view; requests that are wrong whatever the view keep their
// answers. Once synced, the same requests get their real answers.
func TestNotSyncedIsRetryable(t *testing.T) {
	var synced atomic.Bool
	w := newTestWorld(t, nil)
	srv, err := New(Config{Pods: w.srv.pods, Bindings: w.srv.bindings, Tokens: w.tokens, Now: w.srv.now, Synced: synced.Load})
	require.NoError(t, err)
	w.srv = srv
	addrs := w.serve(t, podIP, unboundIP, strangerIP, "")
	tok := get(TokenPath+"?"+goodQuery, md)
	host := get("/host/token/?resource=https%3A%2F%2Fvault.azure.net", "podns: default", "podname: app")
	const starting = `{"error":"service_unavailable","error_description":"nmi is starting and has not read the node's pods and identity bindings yet; retry"}`

	for _, tc := range []struct {
		name, from, req string
		synced          bool
		status          int
		body            string
	}{
		{"bound pod", podIP, tok, false, 503, starting},
		{"unbound pod", unboundIP, tok, false, 503, starting},
		{"no pod at the address", strangerIP, tok, false, 503, starting},
		{"host token", "", host, false, 503, starting},
		{"no Metadata header", podIP, get(TokenPath + "?" + goodQuery), false, 400, bodyNoMetadata},
		{"unknown path", podIP, get("/metadata/identity/oauth2/token/?"+goodQuery, md), false, 404, bodyNotFound},
		{"bound pod, synced", podIP, tok, true, 200, tokenBody(idA)},
		{"unbound pod, synced", unboundIP, tok, true, 403, bodyNoneBound},
		{"no pod at the address, synced", strangerIP, tok, true, 404, bodyNoPod},
		{"host token, synced", "", host, true, 200, `{"token":` + tokenBody(idA) + `,"clientid":"` + idA.ClientID + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synced.Store(tc.synced)
			before := w.tokens.calls.Load()
			status, hdr, body := rawRequest(t, addrs[tc.from], tc.req)
			assert.Equal(t, tc.status, status)
			assert.Equal(t, tc.body, body)
			if status == http.StatusServiceUnavailable {
				assert.Equal(t, "1", hdr.Get("Retry-After"))
				assert.Equal(t, before, w.tokens.calls.Load(), "nothing is looked up before the informers synced")
			}
		})
	}
}

// TestHostAddrs: an address configured as the node's is served on
// /host/token/ like loopback; the IMDS path still needs a pod.
func TestHostAddrs(t *testing.T) {
	const nodeIP = "10.240.0.4"
	w := newTestWorld(t, nil)
	srv, err := New(Config{Pods: w.srv.pods, Bindings: w.srv.bindings, Tokens: w.tokens, Now: w.srv.now,
		HostAddrs: []netip.Addr{netip.MustParseAddr(nodeIP)}})
	require.NoError(t, err)
	w.srv = srv
	addrs := w.serve(t, nodeIP, podIP)

	hostReq := get("/host/token/?resource=https%3A%2F%2Fvault.azure.net", "podns: default", "podname: app")
	status, _, body := rawRequest(t, addrs[nodeIP], hostReq)
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, `{"token":`+tokenBody(idA)+`,"clientid":"`+idA.ClientID+`"}`, body)
	status, _, body = rawRequest(t, addrs[podIP], hostReq)
	assert.Equal(t, http.StatusForbidden, status)
	assert.Equal(t, bodyHostOnly, body)
	status, _, body = rawRequest(t, addrs[nodeIP], get(TokenPath+"?"+goodQuery, md))
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, bodyNoPod, body)
}
