package emulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"strings"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

// Content types of a certificate's secret, as Key Vault names them.
const (
	ContentTypePKCS12 = "application/x-pkcs12"
	ContentTypePEM    = "application/x-pem-file"
)

// Key types Key Vault knows (the JSON Web Key kty values).
const (
	KeyTypeRSA    = "RSA"
	KeyTypeRSAHSM = "RSA-HSM"
	KeyTypeEC     = "EC"
	KeyTypeECHSM  = "EC-HSM"
)

// certValidity is the validity of generated certificates: Key Vault's default
// policy asks for 12 months.
const certValidity = 365 * 24 * time.Hour

// maxChainLength bounds CertificateOptions.ChainLength.
const maxChainLength = 8

// generatedChain is a freshly generated certificate chain and the leaf's key.
type generatedChain struct {
	key   crypto.Signer
	chain []*x509.Certificate // leaf first, root last
}

// generateChain creates a root CA, length-2 intermediates and a leaf signed by
// the last intermediate (length 1: a self-signed leaf). The CA keys are P-256
// (fast to generate and irrelevant to consumers); the leaf key has keyType.
// Every certificate carries a subject key identifier and, except a
// self-signed leaf, the issuer's as its authority key identifier, so a
// consumer can order the chain.
func generateChain(length int, keyType string, subject pkix.Name, dnsNames []string) (*generatedChain, error) {
	if length < 1 || length > maxChainLength {
		return nil, fmt.Errorf("chain length %d out of range 1..%d", length, maxChainLength)
	}
	leafKey, err := newSigner(keyType, 0, "")
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	notAfter := now.Add(certValidity)
	leafTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               subject,
		DNSNames:              dnsNames,
		NotBefore:             now,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if _, ok := leafKey.(*rsa.PrivateKey); ok {
		leafTmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if leafTmpl.SubjectKeyId, err = subjectKeyID(leafKey.Public()); err != nil {
		return nil, err
	}
	if length == 1 {
		leafTmpl.AuthorityKeyId = leafTmpl.SubjectKeyId
		leaf, err := signCert(leafTmpl, leafTmpl, leafKey.Public(), leafKey)
		if err != nil {
			return nil, err
		}
		return &generatedChain{key: leafKey, chain: []*x509.Certificate{leaf}}, nil
	}

	// CAs from the root down: cas[0] is the root.
	base := subject.CommonName
	if base == "" {
		base = "kvnode emulator"
	}
	var cas []*x509.Certificate
	var parentKey crypto.Signer
	for i := 0; i < length-1; i++ {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate CA key: %w", err)
		}
		name := base + " Root CA"
		if i > 0 {
			name = fmt.Sprintf("%s Intermediate CA %d", base, i)
		}
		tmpl := &x509.Certificate{
			SerialNumber:          randomSerial(),
			Subject:               pkix.Name{CommonName: name, Organization: []string{"kvnode emulator"}},
			NotBefore:             now,
			NotAfter:              notAfter.Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            length - 2 - i,
			MaxPathLenZero:        length-2-i == 0,
		}
		if tmpl.SubjectKeyId, err = subjectKeyID(key.Public()); err != nil {
			return nil, err
		}
		parent, signer := tmpl, crypto.Signer(key)
		if i > 0 {
			parent, signer = cas[i-1], parentKey
		}
		tmpl.AuthorityKeyId = parent.SubjectKeyId
		ca, err := signCert(tmpl, parent, key.Public(), signer)
		if err != nil {
			return nil, err
		}
		cas = append(cas, ca)
		parentKey = key
	}
	issuer := cas[len(cas)-1]
	leafTmpl.AuthorityKeyId = issuer.SubjectKeyId
	leaf, err := signCert(leafTmpl, issuer, leafKey.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	chain := []*x509.Certificate{leaf}
	for i := len(cas) - 1; i >= 0; i-- {
		chain = append(chain, cas[i])
	}
	return &generatedChain{key: leafKey, chain: chain}, nil
}

func signCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

// subjectKeyID is RFC 5280's method 1: the SHA-1 of the subjectPublicKey bits.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:], nil
}

// newSigner generates a key of Key Vault type kty (RSA, RSA-HSM, EC, EC-HSM).
// size applies to RSA (default 2048), curve to EC (default P-256).
func newSigner(kty string, size int, curve string) (crypto.Signer, error) {
	switch strings.ToUpper(kty) {
	case "", KeyTypeRSA, KeyTypeRSAHSM:
		if size == 0 {
			size = 2048
		}
		if size != 2048 && size != 3072 && size != 4096 {
			return nil, fmt.Errorf("RSA key size %d not supported (2048, 3072, 4096)", size)
		}
		k, err := rsa.GenerateKey(rand.Reader, size)
		if err != nil {
			return nil, fmt.Errorf("generate RSA key: %w", err)
		}
		return k, nil
	case KeyTypeEC, KeyTypeECHSM:
		c, err := ellipticCurve(curve)
		if err != nil {
			return nil, err
		}
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate EC key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("key type %q not supported (RSA, RSA-HSM, EC, EC-HSM)", kty)
}

func ellipticCurve(name string) (elliptic.Curve, error) {
	switch strings.ToUpper(name) {
	case "", "P-256":
		return elliptic.P256(), nil
	case "P-384":
		return elliptic.P384(), nil
	case "P-521":
		return elliptic.P521(), nil
	}
	return nil, fmt.Errorf("curve %q not supported (P-256, P-384, P-521)", name)
}

func curveName(c elliptic.Curve) string { return c.Params().Name }

// parseSubject reads an X.500 name in Key Vault's policy form
// ("CN=example.com, O=Example, C=US").
func parseSubject(s string) (pkix.Name, error) {
	var n pkix.Name
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return pkix.Name{}, fmt.Errorf("subject %q: %q is not KEY=value", s, part)
		}
		k, v = strings.ToUpper(strings.TrimSpace(k)), strings.TrimSpace(v)
		switch k {
		case "CN":
			n.CommonName = v
		case "O":
			n.Organization = append(n.Organization, v)
		case "OU":
			n.OrganizationalUnit = append(n.OrganizationalUnit, v)
		case "C":
			n.Country = append(n.Country, v)
		case "L":
			n.Locality = append(n.Locality, v)
		case "ST", "S":
			n.Province = append(n.Province, v)
		default:
			return pkix.Name{}, fmt.Errorf("subject %q: attribute %q not supported", s, k)
		}
	}
	return n, nil
}

// certSecretValue renders the secret of a certificate: base64 of a PFX without
// password (contentType application/x-pkcs12) or PEM text, the PKCS#8 private
// key first, then the certificates (application/x-pem-file).
//
// In order, the certificates are leaf first, then issuers up to the root. With
// shuffle, the PEM lists them in a random order that never starts with the
// leaf, and the PFX keeps the leaf in the first bag (it carries the
// localKeyId that ties it to the key, as every PKCS#12 writer does) and lists
// the CA certificates in a random order other than issuer-first.
func certSecretValue(contentType string, key crypto.Signer, chain []*x509.Certificate, shuffle bool) (string, error) {
	switch contentType {
	case ContentTypePKCS12:
		cas := append([]*x509.Certificate(nil), chain[1:]...)
		if shuffle {
			cas = shuffled(cas, func(p []*x509.Certificate) bool { return !sameOrder(p, chain[1:]) })
		}
		// Key Vault's PFX files open in OpenSSL 3 without -legacy and in
		// Windows: 3DES with SHA-1 for keys and certificates, empty password.
		pfx, err := pkcs12.LegacyDES.WithRand(rand.Reader).Encode(key, chain[0], cas, "")
		if err != nil {
			return "", fmt.Errorf("encode PFX: %w", err)
		}
		return base64.StdEncoding.EncodeToString(pfx), nil
	case ContentTypePEM:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return "", fmt.Errorf("marshal private key: %w", err)
		}
		var buf bytes.Buffer
		_ = pem.Encode(&buf, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
		certs := chain
		if shuffle {
			certs = shuffled(chain, func(p []*x509.Certificate) bool { return p[0] != chain[0] })
		}
		for _, c := range certs {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		return buf.String(), nil
	}
	return "", fmt.Errorf("content type %q not supported for certificates (%s, %s)", contentType, ContentTypePKCS12, ContentTypePEM)
}

// shuffled returns a random permutation of certs for which ok holds; with
// fewer than two certificates there is nothing to shuffle and certs is
// returned as is.
func shuffled(certs []*x509.Certificate, ok func([]*x509.Certificate) bool) []*x509.Certificate {
	out := append([]*x509.Certificate(nil), certs...)
	if len(out) < 2 {
		return out
	}
	for {
		mrand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		if ok(out) {
			return out
		}
	}
}

func sameOrder(a, b []*x509.Certificate) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// jsonWebKey is the public part of a key as Key Vault returns it.
type jsonWebKey struct {
	KID    string   `json:"kid"`
	KTY    string   `json:"kty"`
	KeyOps []string `json:"key_ops"`
	N      string   `json:"n,omitempty"`
	E      string   `json:"e,omitempty"`
	Crv    string   `json:"crv,omitempty"`
	X      string   `json:"x,omitempty"`
	Y      string   `json:"y,omitempty"`
}

// publicJWK describes pub as a JSON Web Key, base64url without padding.
func publicJWK(pub crypto.PublicKey, kty string, ops []string) (jsonWebKey, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return jsonWebKey{KTY: kty, KeyOps: ops, N: b64(k.N.Bytes()), E: b64(big.NewInt(int64(k.E)).Bytes())}, nil
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		ecdh, err := k.ECDH()
		if err != nil {
			return jsonWebKey{}, fmt.Errorf("EC public key: %w", err)
		}
		raw := ecdh.Bytes() // 0x04 || X || Y, each size bytes
		return jsonWebKey{KTY: kty, KeyOps: ops, Crv: curveName(k.Curve), X: b64(raw[1 : 1+size]), Y: b64(raw[1+size:])}, nil
	}
	return jsonWebKey{}, errors.New("unsupported public key type")
}

// keyOps are the operations Key Vault lists for a key of kind kty.
func keyOps(kty string) []string {
	if strings.HasPrefix(kty, KeyTypeEC) {
		return []string{"sign", "verify"}
	}
	return []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}
}

// x5t is the base64url SHA-1 thumbprint of a certificate.
func x5t(c *x509.Certificate) string {
	sum := sha1.Sum(c.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
