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

// SecretContent converts a secret's value, as Key Vault returns it, into the
// bytes of the file for obj. contentType is the secret's content type:
//
//   - application/x-pkcs12 (a certificate's secret) with format pem: the PFX,
//     base64 in value, becomes PEM: the private key (PKCS#8) first, then the
//     certificates from the leaf to the root (see PFXToPEM). Encoding is not
//     used: Key Vault always stores a PFX as base64.
//   - application/x-pkcs12 with format pfx: the PFX itself, as the base64 text
//     Key Vault stores, or with encoding base64 the decoded binary.
//   - application/x-pem-file (a certificate's secret in PEM): the value as is.
//   - anything else: the value decoded by obj.Encoding (utf-8: as is).
//
// Errors name the object, the encoding or format, never the value.
func SecretContent(obj Object, value, contentType string) ([]byte, error) {
	format, err := normalizeFormat(obj.Format)
	if err != nil {
		return nil, err
	}
	enc, err := normalizeEncoding(obj.Encoding)
	if err != nil {
		return nil, err
	}
	ct := strings.ToLower(strings.TrimSpace(contentType))
	switch {
	case ct == ContentTypePKCS12 && format == FormatPFX:
		if enc == EncodingBase64 {
			return decodeValue(obj.Name, value, EncodingBase64)
		}
		return []byte(value), nil
	case format == FormatPFX:
		return nil, fmt.Errorf("secret %s: objectFormat pfx needs a certificate stored as %s, the secret's content type is %q", obj.Name, ContentTypePKCS12, contentType)
	case ct == ContentTypePKCS12:
		pfx, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("secret %s: content type %s but the value is not base64: %w", obj.Name, ContentTypePKCS12, scrubbed(err))
		}
		out, err := PFXToPEM(pfx)
		if err != nil {
			return nil, fmt.Errorf("secret %s: %w", obj.Name, err)
		}
		return out, nil
	case ct == ContentTypePEM:
		return []byte(value), nil
	default:
		return decodeValue(obj.Name, value, enc)
	}
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
// is kept, except that a known leaf still comes first. certs is not modified.
func OrderChain(certs []*x509.Certificate, leafKey crypto.PublicKey) []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(certs))
	if len(certs) < 2 {
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
