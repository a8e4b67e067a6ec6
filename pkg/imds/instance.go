package imds

import (
	"io"
	"net/http"
	"strings"

	"k8s.io/klog/v2"
)

// InstancePath is IMDS's instance metadata endpoint. nmi answers it only
// when Config.Instance is set: the node's metadata (its name, subscription,
// network, tags) is not the pods' business unless the operator says so.
const InstancePath = "/metadata/instance"

// maxInstanceBody bounds a forwarded instance metadata answer.
const maxInstanceBody = 1 << 20

// InstanceProxy forwards instance metadata requests to the node's IMDS.
type InstanceProxy struct {
	// BaseURL is the node's IMDS, e.g. http://169.254.169.254.
	BaseURL string
	// Client makes the upstream calls; they leave the node through OUTPUT,
	// so nmi's own interception does not catch them.
	Client *http.Client
}

// isInstancePath reports whether p is InstancePath or a sub-path of it made
// of letters and digits only ("/metadata/instance/compute/vmId"): no dot
// segments, no escapes, no empty segments, nothing else reaches upstream.
func isInstancePath(p string) bool {
	rest, ok := strings.CutPrefix(p, InstancePath)
	if !ok {
		return false
	}
	for rest != "" {
		if rest[0] != '/' {
			return false
		}
		rest = rest[1:]
		seg := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg, rest = rest[:i], rest[i:]
		} else {
			rest = ""
		}
		if seg == "" {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
				return false
			}
		}
	}
	return true
}

// serveInstance forwards one instance metadata request, validated as IMDS
// validates it (Metadata header, no X-Forwarded-For, GET, a strict query
// with an api-version), and returns IMDS's status and body as they are.
func (s *Server) serveInstance(w http.ResponseWriter, r *http.Request, path, rawQuery string) int {
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
	if rerr == nil && q.apiVersion == "" {
		rerr = badRequest("Required query variable 'api-version' is missing")
	}
	if rerr != nil {
		return s.writeError(w, rerr)
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, s.instance.BaseURL+path+"?"+rawQuery, nil)
	if err != nil {
		return s.writeError(w, &requestError{status: http.StatusBadGateway, code: "bad_gateway", desc: "The node's metadata endpoint could not be reached"})
	}
	req.Header.Set("Metadata", "true")
	resp, err := s.instance.Client.Do(req)
	if err != nil {
		klog.FromContext(r.Context()).Error(err, "instance metadata upstream failed")
		return s.writeError(w, &requestError{status: http.StatusBadGateway, code: "bad_gateway", desc: "The node's metadata endpoint could not be reached"})
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxInstanceBody+1))
	if err != nil || len(body) > maxInstanceBody {
		return s.writeError(w, &requestError{status: http.StatusBadGateway, code: "bad_gateway", desc: "The node's metadata answer could not be read"})
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	if resp.StatusCode != http.StatusOK {
		w.Header()["Connection"] = s.connClose
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
	return resp.StatusCode
}
