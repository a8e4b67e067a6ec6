package secretsync

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"

	corev1 "k8s.io/api/core/v1"
	"software.sslmate.com/src/go-pkcs12"
)

// PEM block types of the parts of a certificate-backed secret.
const (
	pemCertificate   = "CERTIFICATE"
	pemPrivateKey    = "PRIVATE KEY"
	pemRSAPrivateKey = "RSA PRIVATE KEY"
	pemECPrivateKey  = "EC PRIVATE KEY"
	pemEncryptedKey  = "ENCRYPTED PRIVATE KEY"
)

// The reasons a file cannot give a kubernetes.io/tls Secret its key or
// certificates. They are fixed texts: parser errors are never passed on, so
// that no byte of a file can reach an error message.
var (
	errNoKey          = errors.New("holds no private key (a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block, or a PKCS#12 archive without a password)")
	errManyKeys       = errors.New("holds more than one private key")
	errEncryptedKey   = errors.New("holds an encrypted private key, which kvdriver cannot decrypt")
	errBadKey         = errors.New("holds a private key that is neither PKCS#1, PKCS#8 nor SEC 1")
	errKeyAlgorithm   = errors.New("holds a private key that is neither RSA nor ECDSA")
	errNoCertificates = errors.New("holds no certificate (PEM CERTIFICATE blocks, or a PKCS#12 archive without a password)")
	errNotPKCS12      = errors.New("is neither PEM nor a PKCS#12 archive without a password")
)

// tlsPart returns what the upstream driver puts under key (tls.key or
// tls.crt) of a kubernetes.io/tls Secret synced from file, the mounted
// content of a certificate-backed secret: PEM, or a binary PKCS#12 archive.
func tlsPart(file []byte, key string) ([]byte, error) {
	if key == corev1.TLSPrivateKeyKey {
		return tlsKey(file)
	}
	return tlsCertificates(file)
}

// tlsKey returns file's private key as PEM, in the form the upstream driver
// writes to tls.key: an RSA key as PKCS#1 (RSA PRIVATE KEY), an ECDSA key as
// SEC 1 (EC PRIVATE KEY), whatever form the file holds it in.
func tlsKey(file []byte) ([]byte, error) {
	blocks := pemBlocks(file)
	if len(blocks) == 0 {
		key, _, _, err := pkcs12.DecodeChain(file, "")
		if err != nil {
			return nil, errNotPKCS12
		}
		return encodeKey(key)
	}
	var der []byte
	for _, b := range blocks {
		switch b.Type {
		case pemPrivateKey, pemRSAPrivateKey, pemECPrivateKey:
			if der != nil {
				return nil, errManyKeys
			}
			der = b.Bytes
		case pemEncryptedKey:
			return nil, errEncryptedKey
		}
	}
	if der == nil {
		return nil, errNoKey
	}
	// Try every form whatever the block says, as the upstream driver does:
	// some tools label PKCS#8 keys RSA PRIVATE KEY.
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return encodeKey(k)
	}
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return encodeKey(k)
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return encodeKey(k)
	}
	return nil, errBadKey
}

// encodeKey writes an RSA key as PKCS#1 and an ECDSA key as SEC 1.
func encodeKey(key any) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: pemRSAPrivateKey, Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, errKeyAlgorithm
		}
		return pem.EncodeToMemory(&pem.Block{Type: pemECPrivateKey, Bytes: der}), nil
	case nil:
		return nil, errNoKey
	default:
		return nil, errKeyAlgorithm
	}
}

// tlsCertificates returns file's certificates as PEM, in the order the file
// holds them: kvdriver writes a certificate-backed secret's chain leaf
// first, then intermediates, then the root.
func tlsCertificates(file []byte) ([]byte, error) {
	blocks := pemBlocks(file)
	if len(blocks) == 0 {
		_, leaf, cas, err := pkcs12.DecodeChain(file, "")
		if err != nil {
			return nil, errNotPKCS12
		}
		out := pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: leaf.Raw})
		for _, c := range cas {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: c.Raw})...)
		}
		return out, nil
	}
	var out []byte
	for _, b := range blocks {
		if b.Type == pemCertificate {
			out = append(out, pem.EncodeToMemory(b)...)
		}
	}
	if out == nil {
		return nil, errNoCertificates
	}
	return out, nil
}

// pemBlocks returns the PEM blocks of data, in order.
func pemBlocks(data []byte) []*pem.Block {
	var out []*pem.Block
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b)
		data = rest
	}
}
