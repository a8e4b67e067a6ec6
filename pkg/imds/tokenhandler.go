package imds

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kvnode/kvnode/pkg/podauth"
	"github.com/kvnode/kvnode/pkg/tokensource"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/tokencache"
)

// serveToken answers GET /metadata/identity/oauth2/token for a pod. A token
// answer sets *answered to the time it is dated.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, rawQuery string, answered *time.Time) int {
	if v := r.Header["Metadata"]; len(v) != 1 || v[0] != "true" {
		return s.writeError(w, badRequest(descNoMetadata))
	}
	if _, ok := r.Header["X-Forwarded-For"]; ok {
		return s.writeError(w, badRequest(descForwarded))
	}
	if r.Method != http.MethodGet {
		return s.writeError(w, methodNotAllowed())
	}
	q, rerr := parseQuery(rawQuery, &s.values)
	if rerr == nil {
		rerr = validateTokenQuery(&q)
	}
	if rerr != nil {
		return s.writeError(w, rerr)
	}
	// The request is well formed from here on: refusals keep the
	// connection, for the client's retry.
	if !s.synced() {
		return s.writeRefusal(w, notSynced())
	}
	ip, ok := sourceAddr(r)
	if !ok {
		return s.writeRefusal(w, notAPod())
	}
	pod, ok := s.pods.PodByIP(ip, podLink(r))
	if !ok {
		klog.FromContext(r.Context()).V(2).Info("token request from an address that is no pod on this node", "source", ip)
		return s.writeRefusal(w, notAPod())
	}
	return s.answerToken(r.Context(), w, pod, &q, false, answered)
}

// serveHostToken answers GET /host/token/ for kvdriver: the node names a pod
// (headers podns, podname) and gets a token of that pod's identity. A token
// answer sets *answered to the time it is dated.
func (s *Server) serveHostToken(w http.ResponseWriter, r *http.Request, rawQuery string, answered *time.Time) int {
	if !s.fromHost(r) {
		klog.FromContext(r.Context()).Info("refused a host token request from outside the node", "source", r.RemoteAddr)
		return s.writeError(w, &requestError{status: http.StatusForbidden, code: "invalid_request", desc: "The host token endpoint only serves the node itself"})
	}
	if _, ok := r.Header["X-Forwarded-For"]; ok {
		return s.writeError(w, badRequest(descForwarded))
	}
	if r.Method != http.MethodGet {
		return s.writeError(w, methodNotAllowed())
	}
	q, rerr := parseQuery(rawQuery, &s.values)
	if rerr == nil {
		rerr = validateResource(q.resource)
	}
	if rerr != nil {
		return s.writeError(w, rerr)
	}
	ns, name := r.Header[podNamespaceHeader], r.Header[podNameHeader]
	if len(ns) != 1 || len(name) != 1 || ns[0] == "" || name[0] == "" {
		return s.writeError(w, badRequest("Required headers '"+podauth.HeaderPodNamespace+"' and '"+podauth.HeaderPodName+"' not specified"))
	}
	if !s.synced() {
		return s.writeRefusal(w, notSynced())
	}
	pod, ok := s.pods.PodByName(ns[0], name[0])
	if !ok {
		return s.writeRefusal(w, &requestError{status: http.StatusNotFound, code: "not_found", desc: "No such pod on this node"})
	}
	return s.answerToken(r.Context(), w, pod, &q, true, answered)
}

// notAPod is the answer to a request whose source address is no pod of
// this node.
func notAPod() *requestError {
	return &requestError{status: http.StatusNotFound, code: "not_found", desc: "The request's source address is not a pod on this node"}
}

// notSynced is the answer while nmi's view of the node's pods and bindings
// is still being listed: retryable, like IMDS's own answers while it is
// updating.
func notSynced() *requestError {
	return &requestError{status: http.StatusServiceUnavailable, code: "service_unavailable",
		desc: "nmi is starting and has not read the node's pods and identity bindings yet; retry"}
}

// answerToken selects the pod's identity and answers with its token, or
// with a refusal that keeps the connection: the request was well formed.
// A token answer sets *answered to the time it is dated.
func (s *Server) answerToken(ctx context.Context, w http.ResponseWriter, pod podauth.Pod, q *tokenQuery, host bool, answered *time.Time) int {
	id, rerr := selectIdentity(s.bindings.IdentitiesFor(pod), q)
	if rerr != nil {
		if rerr.status == http.StatusForbidden {
			klog.FromContext(ctx).Info("refused a token request", "pod", klog.KRef(pod.Namespace, pod.Name), "reason", rerr.desc)
		}
		return s.writeRefusal(w, rerr)
	}
	tok, err := s.tokens.Token(ctx, pod, id, q.resource)
	if err != nil {
		e := upstreamFailure(err)
		klog.FromContext(ctx).Info("token request failed", "pod", klog.KRef(pod.Namespace, pod.Name),
			"clientID", id.ClientID, "resource", q.resource, "status", e.status, "err", err)
		return s.writeRefusal(w, e)
	}
	*answered = s.writeToken(w, host, tok, q.resource, id.ClientID)
	return http.StatusOK
}

// upstreamFailure maps a TokenSource error to an IMDS-style answer. Only
// IMDS's own error code and description (never a response body) pass
// through, and only for statuses a client can act on.
func upstreamFailure(err error) *requestError {
	var (
		ue *tokensource.UpstreamError
		af *azidentity.AuthenticationFailedError
	)
	switch {
	case errors.Is(err, tokencache.ErrUpstreamBusy):
		return &requestError{status: http.StatusTooManyRequests, code: "too_many_requests",
			desc: "Too many token requests to the node's identity endpoint; retry after a short wait"}
	case errors.Is(err, tokensource.ErrNoSource):
		return &requestError{status: http.StatusInternalServerError, code: "unknown_error",
			desc: "This node cannot issue tokens for the bound identity's kind"}
	case errors.As(err, &af) && !entraRefused(af):
		// azidentity reports every failure of the exchange so: Entra ID
		// throttling, failing or out of reach, and the service-account
		// token the API server could not issue. Those pass; a 403 would
		// make the pod's SDK give up for good.
		if af.RawResponse != nil && af.RawResponse.StatusCode == http.StatusTooManyRequests {
			return &requestError{status: http.StatusTooManyRequests, code: "too_many_requests",
				desc: "Entra ID is throttling token requests; retry after a short wait"}
		}
		return &requestError{status: http.StatusBadGateway, code: "unknown_error",
			desc: "The workload identity token exchange failed for now (Entra ID or the Kubernetes API server); retry"}
	case errors.As(err, &af):
		// Entra ID refused a workload-identity exchange: the pod's
		// service account has no federated credential for the identity it
		// is bound to. Tell the pod so, with Entra's error code only.
		desc := "Entra ID refused the token exchange for this pod's service account"
		if code := aadstsCode(err.Error()); code != "" {
			desc += " (" + code + ")"
		}
		return &requestError{status: http.StatusForbidden, code: "invalid_request", desc: desc}
	case errors.As(err, &ue):
		switch ue.Status {
		case http.StatusBadRequest, http.StatusNotFound, http.StatusGone, http.StatusTooManyRequests:
			e := &requestError{status: ue.Status, code: ue.Code, desc: ue.Description}
			if e.code == "" {
				e.code = defaultCode(ue.Status)
			}
			if e.desc == "" {
				e.desc = "The node's identity endpoint answered " + strconv.Itoa(ue.Status)
			}
			return e
		}
		return &requestError{status: http.StatusBadGateway, code: "unknown_error",
			desc: "The node's identity endpoint answered " + strconv.Itoa(ue.Status)}
	}
	return &requestError{status: http.StatusBadGateway, code: "unknown_error",
		desc: "The node's identity endpoint could not be reached"}
}

// entraRefused reports whether Entra ID answered the exchange with a
// refusal (400, 401 or 403: no federated credential, a disabled
// application), as opposed to failing to answer it.
func entraRefused(af *azidentity.AuthenticationFailedError) bool {
	if af.RawResponse == nil {
		return false
	}
	s := af.RawResponse.StatusCode
	return s == http.StatusBadRequest || s == http.StatusUnauthorized || s == http.StatusForbidden
}

// defaultCode is IMDS's error code for a status, for answers that had none.
func defaultCode(status int) string {
	switch status {
	case http.StatusNotFound:
		return "not_found"
	case http.StatusGone:
		return "service_unavailable"
	case http.StatusTooManyRequests:
		return "too_many_requests"
	}
	return "invalid_request"
}

// aadstsCode returns the first "AADSTS<digits>" in msg, or "".
func aadstsCode(msg string) string {
	i := strings.Index(msg, "AADSTS")
	if i < 0 {
		return ""
	}
	j := i + len("AADSTS")
	for j < len(msg) && msg[j] >= '0' && msg[j] <= '9' {
		j++
	}
	if j == i+len("AADSTS") {
		return ""
	}
	return msg[i:j]
}

// The /host/token/ headers in canonical form, as net/http keys them.
var (
	podNamespaceHeader = http.CanonicalHeaderKey(podauth.HeaderPodNamespace)
	podNameHeader      = http.CanonicalHeaderKey(podauth.HeaderPodName)
)
