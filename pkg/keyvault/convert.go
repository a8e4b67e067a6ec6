package keyvault

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"software.sslmate.com/src/go-pkcs12"
)

// Content types Key Vault gives the secret that backs a certificate.
const (
	ContentTypePKCS12 = "application/x-pkcs12"
	ContentTypePEM    = "application/x-pem-file"
)

// PEM block types written to the mount.
const (
	pemPublicKey   = "PUBLIC KEY"
	pemPrivateKey  = "PRIVATE KEY"
	pemCertificate = "CERTIFICATE"
)

// Secret is a secret as Key Vault returns it.
type Secret struct {
	Value       string
	ContentType string
	// CertificateBacked is set for the secret that backs a certificate
	// (Key Vault gives it a kid): only those are converted.
	CertificateBacked bool
}

// SecretContent converts a secret, as Key Vault returns it, into the bytes
// of the file for obj, as the upstream Azure provider writes them, with the
// certificate chain in order. warning is a tolerated mistake in obj
// ("" if none); the content is then what upstream writes.
//
//   - A certificate-backed secret stored as application/x-pkcs12, format
//     pem (the default): the PFX becomes PEM, the private key (PKCS#8)
//     first, then the certificates from the leaf to the root (see
//     PFXToPEM). Encoding is not used: Key Vault always stores a PFX as
//     base64.
//   - The same with format pfx: the PFX as stored (base64 text), decoded by
//     obj.Encoding (base64: the binary PFX).
//   - A certificate-backed secret stored as application/x-pem-file: the PEM
//     with its private key first and its certificates ordered leaf to root
//     (kept as stored when already in that order, or when the chain is
//     incomplete), decoded by obj.Encoding when that is not utf-8, as
//     upstream decodes it. Format pfx does not apply (a warning; upstream
//     writes the PEM).
//   - A certificate-backed secret of another content type is an error, as
//     upstream.
//   - Any other secret, whatever its content type: the value as stored,
//     decoded by obj.Encoding (utf-8: as is). Format pfx does not apply (a
//     warning; upstream writes the value as stored).
//
// Errors name the object, the encoding or format, never the value.
func SecretContent(obj Object, secret Secret) (content []byte, warning string, err error) {
	format, err := normalizeFormat(obj.Format)
	if err != nil {
		return nil, "", err
	}
	enc, err := normalizeEncoding(obj.Encoding)
	if err != nil {
		return nil, "", err
	}
	value := secret.Value
	ct := strings.ToLower(strings.TrimSpace(secret.ContentType))
	if !secret.CertificateBacked {
		if format == FormatPFX {
			warning = fmt.Sprintf("objectFormat pfx applies to the secret of a certificate; %s is a plain secret (content type %q), written as stored, as the upstream provider writes it",
				obj.Name, secret.ContentType)
		}
		content, err := decodeValue(obj.Name, value, enc)
		return content, warning, err
	}
	switch {
	case ct == ContentTypePKCS12 && format == FormatPFX:
		content, err := decodeValue(obj.Name, value, enc)
		return content, "", err
	case ct == ContentTypePKCS12:
		pfx, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
		if err != nil {
			return nil, "", fmt.Errorf("secret %s: content type %s but the value is not base64: %w", obj.Name, ContentTypePKCS12, scrubbed(err))
		}
		out, err := PFXToPEM(pfx)
		if err != nil {
			return nil, "", fmt.Errorf("secret %s: %w", obj.Name, err)
		}
		return out, "", nil
	case ct == ContentTypePEM:
		if format == FormatPFX {
			warning = fmt.Sprintf("objectFormat pfx: the certificate %s is stored as %s, not as a PFX; written as PEM, as the upstream provider writes it",
				obj.Name, ContentTypePEM)
		}
		if enc != EncodingUTF8 {
			content, err := decodeValue(obj.Name, value, enc)
			return content, warning, err
		}
		return OrderPEM([]byte(value)), warning, nil
	default:
		return nil, "", fmt.Errorf("secret %s backs a certificate but its content type %q is neither %s nor %s",
			obj.Name, secret.ContentType, ContentTypePKCS12, ContentTypePEM)
	}
}

// OrderPEM puts a PEM bundle in the order PFXToPEM writes: the private
// key(s) first, then the certificates from the leaf to the root (see
// OrderChain: the leaf is the certificate of the bundle's key; an
// incomplete chain keeps its stored order after the leaf). Blocks are kept
// as stored, key formats included. A bundle already in that order, or one
// that is not all PEM (text before, between or after the blocks), or whose
// certificates do not parse, is returned unchanged.
func OrderPEM(bundle []byte) []byte {
	var keys, others []*pem.Block
	var certs []*x509.Certificate
	var order []string // block kinds in stored order: "key", "cert"
	rest := bytes.TrimSpace(bundle)
	for len(rest) > 0 {
		if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
			return bundle // not only PEM blocks: leave it alone
		}
		b, r := pem.Decode(rest)
		if b == nil {
			return bundle
		}
		rest = bytes.TrimSpace(r)
		if len(order) == maxBundleBlocks {
			return bundle // no chain is this long: not worth ordering
		}
		switch {
		case b.Type == pemCertificate:
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return bundle
			}
			certs = append(certs, c)
			order = append(order, "cert")
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			keys = append(keys, b)
			order = append(order, "key")
		default:
			others = append(others, b)
			order = append(order, "other")
		}
	}
	// The leaf is usually the one certificate that issued none of the
	// others; the key, costly to parse, decides only when that is unclear.
	var leafKey crypto.PublicKey
	if len(keys) == 1 && len(certs) > 1 && findLeaf(certs, nil) < 0 {
		if k, err := parsePrivateKeyBlock(keys[0]); err == nil {
			if s, ok := k.(crypto.Signer); ok {
				leafKey = s.Public()
			}
		}
	}
	ordered := OrderChain(certs, leafKey)
	inOrder := true
	for i, kind := range order {
		if kind == "key" && i >= len(keys) {
			inOrder = false
		}
	}
	for i := range certs {
		if certs[i] != ordered[i] {
			inOrder = false
		}
	}
	if inOrder || len(others) > 0 {
		return bundle
	}
	var buf bytes.Buffer
	for _, k := range keys {
		buf.Write(pem.EncodeToMemory(k))
	}
	for _, c := range ordered {
		buf.Write(pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw}))
	}
	return buf.Bytes()
}

// maxBundleBlocks bounds the blocks OrderPEM orders (ordering is
// quadratic in them): a Key Vault secret holds at most 25 KB, some 20
// certificates.
const maxBundleBlocks = 64

// parsePrivateKeyBlock parses a PKCS#8, PKCS#1 or SEC 1 private key.
func parsePrivateKeyBlock(b *pem.Block) (crypto.PrivateKey, error) {
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return x509.ParseECPrivateKey(b.Bytes)
}

// decodeValue decodes a secret's value with enc.
func decodeValue(name, value string, enc Encoding) ([]byte, error) {
	switch enc {
	case EncodingBase64:
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("secret %s: objectEncoding base64: the value is not valid base64: %w", name, scrubbed(err))
		}
		return b, nil
	case EncodingHex:
		b, err := hex.DecodeString(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("secret %s: objectEncoding hex: the value is not valid hex: %w", name, scrubbed(err))
		}
		return b, nil
	default:
		return []byte(value), nil
	}
}

// scrubbed drops the detail of a decoding error: hex's InvalidByteError
// prints the offending byte, which is part of the secret.
func scrubbed(err error) error {
	var off base64.CorruptInputError
	if errors.As(err, &off) {
		return fmt.Errorf("illegal data at offset %d", int64(off))
	}
	if errors.Is(err, hex.ErrLength) {
		return hex.ErrLength
	}
	return errors.New("illegal character")
}

func normalizeFormat(f Format) (Format, error) {
	switch Format(strings.ToLower(string(f))) {
	case "", FormatPEM:
		return FormatPEM, nil
	case FormatPFX:
		return FormatPFX, nil
	}
	return "", fmt.Errorf("objectFormat %q is not pem or pfx", f)
}

func normalizeEncoding(e Encoding) (Encoding, error) {
	switch Encoding(strings.ToLower(string(e))) {
	case "", EncodingUTF8, "utf8":
		return EncodingUTF8, nil
	case EncodingHex:
		return EncodingHex, nil
	case EncodingBase64:
		return EncodingBase64, nil
	}
	return "", fmt.Errorf("objectEncoding %q is not utf-8, hex or base64", e)
}

// KeyPEM renders the public part of a JSON Web Key as a PEM "PUBLIC KEY"
// block (PKIX, SubjectPublicKeyInfo). It supports RSA and RSA-HSM keys and EC
// and EC-HSM keys on P-256, P-384 and P-521; symmetric (oct) keys have no
// public part and are an error.
func KeyPEM(jwk *azkeys.JSONWebKey) ([]byte, error) {
	if jwk == nil || jwk.Kty == nil {
		return nil, errors.New("key has no key type (kty)")
	}
	var pub crypto.PublicKey
	switch kty := *jwk.Kty; kty {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		k, err := rsaPublicKey(jwk)
		if err != nil {
			return nil, fmt.Errorf("%s key: %w", kty, err)
		}
		pub = k
	case azkeys.KeyTypeEC, azkeys.KeyTypeECHSM:
		k, err := ecPublicKey(jwk)
		if err != nil {
			return nil, fmt.Errorf("%s key: %w", kty, err)
		}
		pub = k
	case azkeys.KeyTypeOct, azkeys.KeyTypeOctHSM:
		return nil, fmt.Errorf("key type %s is a symmetric key: it has no public key to write (supported: RSA, RSA-HSM, EC, EC-HSM)", kty)
	default:
		return nil, fmt.Errorf("key type %q is not supported (supported: RSA, RSA-HSM, EC, EC-HSM)", kty)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublicKey, Bytes: der}), nil
}

func rsaPublicKey(jwk *azkeys.JSONWebKey) (*rsa.PublicKey, error) {
	if len(jwk.N) == 0 || len(jwk.E) == 0 {
		return nil, errors.New("modulus (n) or exponent (e) missing")
	}
	e := new(big.Int).SetBytes(jwk.E)
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
		return nil, errors.New("public exponent (e) out of range")
	}
	n := new(big.Int).SetBytes(jwk.N)
	if n.BitLen() < 1024 {
		return nil, fmt.Errorf("modulus (n) of %d bits is too small", n.BitLen())
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

func ecPublicKey(jwk *azkeys.JSONWebKey) (*ecdsa.PublicKey, error) {
	if jwk.Crv == nil {
		return nil, errors.New("curve (crv) missing")
	}
	var curve elliptic.Curve
	switch *jwk.Crv {
	case azkeys.CurveNameP256:
		curve = elliptic.P256()
	case azkeys.CurveNameP384:
		curve = elliptic.P384()
	case azkeys.CurveNameP521:
		curve = elliptic.P521()
	default:
		return nil, fmt.Errorf("curve %q is not supported (supported: P-256, P-384, P-521)", *jwk.Crv)
	}
	size := (curve.Params().BitSize + 7) / 8
	if len(jwk.X) == 0 || len(jwk.Y) == 0 || len(jwk.X) > size || len(jwk.Y) > size {
		return nil, fmt.Errorf("coordinates (x, y) missing or longer than %d bytes", size)
	}
	// The uncompressed point 04 || X || Y, coordinates left-padded to the
	// field size (a JWK may drop leading zero bytes).
	point := make([]byte, 1+2*size)
	point[0] = 4
	copy(point[1+size-len(jwk.X):1+size], jwk.X)
	copy(point[1+2*size-len(jwk.Y):], jwk.Y)
	k, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("point is not on curve %s: %w", *jwk.Crv, err)
	}
	return k, nil
}

// CertificatePEM renders a DER certificate (a Key Vault certificate's cer) as
// a PEM "CERTIFICATE" block.
func CertificatePEM(der []byte) ([]byte, error) {
	if len(der) == 0 {
		return nil, errors.New("certificate has no content (cer)")
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), nil
}

// PFXToPEM converts a PKCS#12 file without a password (as Key Vault stores a
// certificate's secret) into PEM: the private key as PKCS#8 "PRIVATE KEY",
// then the certificates ordered by OrderChain.
func PFXToPEM(pfx []byte) ([]byte, error) {
	key, first, cas, err := pkcs12.DecodeChain(pfx, "")
	if err != nil {
		return nil, fmt.Errorf("decode PFX: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key as PKCS#8: %w", err)
	}
	var leafKey crypto.PublicKey
	if s, ok := key.(crypto.Signer); ok {
		leafKey = s.Public()
	}
	var buf bytes.Buffer
	buf.Write(pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}))
	for _, c := range OrderChain(append([]*x509.Certificate{first}, cas...), leafKey) {
		buf.Write(pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw}))
	}
	return buf.Bytes(), nil
}

// OrderChain orders certificates as TLS servers must send them: the leaf,
// then each certificate's issuer up to the root. The leaf is the certificate
// whose public key is leafKey; without a match (or a nil leafKey) it is the
// one certificate that issued none of the others.
//
// An issuer is found by the child's authority key ID matching a subject key
// ID, or, where either is missing, by issuer and subject names. When the
// chain is incomplete (a certificate that is no link of the leaf's chain) or
// ambiguous (two candidate issuers, two candidate leaves), the original order
// is kept, except that a known leaf still comes first; so is a list longer
// than any chain (maxBundleBlocks). certs is not modified.
func OrderChain(certs []*x509.Certificate, leafKey crypto.PublicKey) []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(certs))
	if len(certs) < 2 || len(certs) > maxBundleBlocks {
		return append(out, certs...)
	}
	leaf := findLeaf(certs, leafKey)
	if leaf < 0 {
		return append(out, certs...)
	}
	used := make([]bool, len(certs))
	used[leaf] = true
	out = append(out, certs[leaf])
	for cur := certs[leaf]; len(out) < len(certs) && !selfIssued(cur); {
		next := -1
		for i, c := range certs {
			if used[i] || !issuedBy(cur, c) {
				continue
			}
			if next >= 0 { // two candidate issuers
				return leafFirst(certs, leaf)
			}
			next = i
		}
		if next < 0 {
			break
		}
		used[next] = true
		out = append(out, certs[next])
		cur = certs[next]
	}
	if len(out) != len(certs) {
		return leafFirst(certs, leaf)
	}
	return out
}

// findLeaf returns the index of the leaf, or -1.
func findLeaf(certs []*x509.Certificate, leafKey crypto.PublicKey) int {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := leafKey.(equaler); ok {
		found := -1
		for i, c := range certs {
			if k.Equal(c.PublicKey) {
				if found >= 0 {
					found = -1
					break
				}
				found = i
			}
		}
		if found >= 0 {
			return found
		}
	}
	// No key to go by: the one certificate that is nobody's issuer.
	found := -1
	for i, c := range certs {
		issuer := false
		for j, o := range certs {
			if i != j && issuedBy(o, c) {
				issuer = true
				break
			}
		}
		if !issuer {
			if found >= 0 {
				return -1
			}
			found = i
		}
	}
	return found
}

// issuedBy reports whether parent looks like child's issuer.
func issuedBy(child, parent *x509.Certificate) bool {
	if child == parent {
		return false
	}
	if len(child.AuthorityKeyId) > 0 && len(parent.SubjectKeyId) > 0 {
		return bytes.Equal(child.AuthorityKeyId, parent.SubjectKeyId)
	}
	return bytes.Equal(child.RawIssuer, parent.RawSubject)
}

// selfIssued reports whether c is a root: its own issuer.
func selfIssued(c *x509.Certificate) bool {
	if !bytes.Equal(c.RawIssuer, c.RawSubject) {
		return false
	}
	return len(c.AuthorityKeyId) == 0 || len(c.SubjectKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, c.SubjectKeyId)
}

func leafFirst(certs []*x509.Certificate, leaf int) []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(certs))
	out = append(out, certs[leaf])
	out = append(out, certs[:leaf]...)
	return append(out, certs[leaf+1:]...)
}
