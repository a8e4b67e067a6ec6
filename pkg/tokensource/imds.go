package tokensource

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

	"github.com/kvnode/kvnode/pkg/tokencache"
)

// TokenPath is the path of IMDS's managed-identity token endpoint, which
// nmi serves to pods and asks of the node's IMDS.
const TokenPath = "/metadata/identity/oauth2/token"

// upstreamAPIVersion is the identity endpoint version NodeIMDS asks for.
const upstreamAPIVersion = "2018-02-01"

// maxUpstreamBody bounds what NodeIMDS reads of an answer.
const maxUpstreamBody = 1 << 20

// NodeIMDS fetches managed-identity tokens from the node's IMDS: it is the
// tokencache.Source behind Cached.IMDS. The key's Identity is the client ID
// of a managed identity assigned to the node; its Tenant is ignored (IMDS
// implies it).
type NodeIMDS struct {
	tokenURL string
	client   *http.Client
	now      func() time.Time
}

var _ tokencache.Source = (*NodeIMDS)(nil)

// NewNodeIMDS returns a NodeIMDS for the IMDS at baseURL (normally
// http://169.254.169.254), reached with client. The client must not go
// through a proxy (IMDS is reached directly) and needs no overall timeout:
// tokencache bounds each call.
func NewNodeIMDS(baseURL string, client *http.Client) *NodeIMDS {
	return &NodeIMDS{
		tokenURL: strings.TrimRight(baseURL, "/") + TokenPath,
		client:   client,
		now:      time.Now,
	}
}

// UpstreamError is an error answer from the upstream identity endpoint. It
// keeps IMDS's error code, and its description for 4xx answers (such as
// "Identity not found"), never the body itself.
type UpstreamError struct {
	Status      int
	Code        string
	Description string
}

func (e *UpstreamError) Error() string {
	msg := "identity endpoint answered " + strconv.Itoa(e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Description != "" && e.Status < 500 {
		msg += ": " + e.Description
	}
	return msg
}

// errBadTokenAnswer is returned for a 200 answer that is not a usable token;
// the body is not quoted, as it may hold one.
var errBadTokenAnswer = errors.New("identity endpoint answered 200 without a usable token")

// Token requests a token for key.Identity and key.Resource.
func (u *NodeIMDS) Token(ctx context.Context, key tokencache.Key) (tokencache.Token, error) {
	q := url.Values{}
	q.Set("api-version", upstreamAPIVersion)
	q.Set("resource", key.Resource)
	if key.Identity != "" {
		q.Set("client_id", key.Identity)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.tokenURL+"?"+q.Encode(), nil)
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("build IMDS token request: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := u.client.Do(req)
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("IMDS token request for %s: %w", key.Identity, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("IMDS token request for %s: read answer: %w", key.Identity, err)
	}
	if resp.StatusCode != http.StatusOK {
		return tokencache.Token{}, upstreamError(resp.StatusCode, body)
	}
	tok, err := parseTokenAnswer(body, u.now())
	if err != nil {
		return tokencache.Token{}, fmt.Errorf("IMDS token request for %s: %w", key.Identity, err)
	}
	return tok, nil
}

// upstreamError keeps the error code and a short description from an IMDS
// error body.
func upstreamError(status int, body []byte) *UpstreamError {
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	ue := &UpstreamError{Status: status}
	if json.Unmarshal(body, &e) == nil {
		ue.Code = clip(e.Error, 64)
		if status < 500 {
			ue.Description = clip(e.Description, 512)
		}
	}
	return ue
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// parseTokenAnswer reads IMDS's token JSON, whose numbers are strings
// (numbers are accepted too).
func parseTokenAnswer(body []byte, now time.Time) (tokencache.Token, error) {
	var a struct {
		AccessToken string      `json:"access_token"`
		ExpiresIn   json.Number `json:"expires_in"`
		ExpiresOn   json.Number `json:"expires_on"`
		NotBefore   json.Number `json:"not_before"`
		TokenType   string      `json:"token_type"`
	}
	if err := json.Unmarshal(body, &a); err != nil || a.AccessToken == "" {
		return tokencache.Token{}, errBadTokenAnswer
	}
	if a.TokenType != "" && !strings.EqualFold(a.TokenType, "Bearer") {
		return tokencache.Token{}, fmt.Errorf("identity endpoint answered token type %q, want Bearer", clip(a.TokenType, 32))
	}
	var tok tokencache.Token
	tok.AccessToken = a.AccessToken
	if on, err := a.ExpiresOn.Int64(); err == nil && on > 0 {
		tok.ExpiresOn = time.Unix(on, 0)
	} else if in, err := a.ExpiresIn.Int64(); err == nil && in > 0 {
		tok.ExpiresOn = now.Add(time.Duration(in) * time.Second)
	} else {
		return tokencache.Token{}, errors.New("identity endpoint answered a token without expires_on or expires_in")
	}
	if nb, err := a.NotBefore.Int64(); err == nil && nb > 0 {
		tok.NotBefore = time.Unix(nb, 0)
	}
	return tok, nil
}
