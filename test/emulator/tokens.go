package emulator

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// AccessClaims are the claims of an access token the emulator's Entra ID issues
// and its Key Vault checks. They follow Entra's v1 access-token claim names.
type AccessClaims struct {
	TenantID string `json:"tid"`
	ObjectID string `json:"oid"`
	AppID    string `json:"appid"`
	// ResourceID is set for managed identities (Entra's xms_mirid claim).
	ResourceID string `json:"xms_mirid,omitempty"`
	jwt.RegisteredClaims
}

// tokenSigner signs and verifies the emulator's access tokens.
type tokenSigner struct {
	key   *rsa.PrivateKey
	keyID string
}

func newTokenSigner() (*tokenSigner, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	return &tokenSigner{key: key, keyID: randomID()[:8]}, nil
}

// issue returns a signed access token for p, valid for resource during life.
// resource is normalised to have no trailing slash, as Entra does for v1 audiences.
func (s *tokenSigner) issue(p Principal, resource string, life time.Duration) (token string, claims AccessClaims, err error) {
	now := time.Now().Truncate(time.Second)
	claims = AccessClaims{
		TenantID:   p.TenantID,
		ObjectID:   p.ObjectID,
		AppID:      p.ClientID,
		ResourceID: p.ResourceID,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    "https://sts.windows.net/" + p.TenantID + "/",
			Subject:   p.ObjectID,
			Audience:  jwt.ClaimStrings{NormalizeResource(resource)},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Minute)),
			ExpiresAt: jwt.NewNumericDate(now.Add(life)),
			ID:        randomID(),
		},
	}
	// Entra ID writes a single audience as a string, not a one-element array
	// (jwt.ClaimStrings' default).
	b, err := json.Marshal(claims)
	if err != nil {
		return "", AccessClaims{}, err
	}
	var m jwt.MapClaims
	if err := json.Unmarshal(b, &m); err != nil {
		return "", AccessClaims{}, err
	}
	m["aud"] = claims.Audience[0]
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, m)
	t.Header["kid"] = s.keyID
	token, err = t.SignedString(s.key)
	return token, claims, err
}

// verify checks a bearer token's signature, lifetime and audience and returns
// its claims. audience is compared after NormalizeResource.
func (s *tokenSigner) verify(token, audience string) (AccessClaims, error) {
	var c AccessClaims
	_, err := jwt.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return &s.key.PublicKey, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithExpirationRequired(),
		jwt.WithAudience(NormalizeResource(audience)))
	if err != nil {
		return AccessClaims{}, fmt.Errorf("invalid access token: %w", err)
	}
	return c, nil
}

// NormalizeResource turns a resource or scope ("https://vault.azure.net/.default",
// "https://vault.azure.net/") into the audience Entra puts in a token
// ("https://vault.azure.net").
func NormalizeResource(r string) string {
	r = strings.TrimSuffix(r, "/.default")
	return strings.TrimRight(r, "/")
}

// bearer extracts the token from an "Authorization: Bearer <token>" header.
func bearer(header string) (string, error) {
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", errors.New("no bearer token")
	}
	return tok, nil
}
