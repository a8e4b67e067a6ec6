package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Issuer signs service-account tokens as a cluster's API server would, for
// tests that need a federated token without a control plane: trust it with
// TrustIssuer(i.URL, i.JWKS()).
type Issuer struct {
	URL string
	key *ecdsa.PrivateKey
}

// NewIssuer returns an issuer named url with a fresh P-256 key.
func NewIssuer(url string) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Issuer{URL: url, key: key}, nil
}

// JWKS is the issuer's public key set.
func (i *Issuer) JWKS() []byte {
	pad := func(b *big.Int) string {
		out := make([]byte, 32)
		b.FillBytes(out)
		return base64.RawURLEncoding.EncodeToString(out)
	}
	doc, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
		"x": pad(i.key.X), "y": pad(i.key.Y),
	}}})
	return doc
}

// ServiceAccountToken signs a token of namespace/name for audience, valid
// for an hour.
func (i *Issuer) ServiceAccountToken(namespace, name, audience string) (string, error) {
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{
		Issuer: i.URL, Subject: "system:serviceaccount:" + namespace + ":" + name,
		Audience: jwt.ClaimStrings{audience},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	})
	tok.Header["kid"] = "k1"
	return tok.SignedString(i.key)
}
