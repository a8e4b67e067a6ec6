package secretsync

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"software.sslmate.com/src/go-pkcs12"
)

// certChain is a leaf, an intermediate and a root, and the leaf's key.
type certChain struct {
	key   crypto.Signer
	chain []*x509.Certificate // leaf first
}

// newChain issues a three-certificate chain whose leaf has a key of keyType
// (RSA or EC).
func newChain(t testing.TB, keyType string) *certChain {
	t.Helper()
	newKey := func(kt string) crypto.Signer {
		var k crypto.Signer
		var err error
		if kt == "EC" {
			k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		} else {
			k, err = rsa.GenerateKey(rand.Reader, 2048)
		}
		require.NoError(t, err)
		return k
	}
	issue := func(cn string, isCA bool, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: isCA, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		require.NoError(t, err)
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		return c
	}
	rootKey, interKey, leafKey := newKey("EC"), newKey("EC"), newKey(keyType)
	root := issue("root", true, rootKey.Public(), nil, rootKey)
	inter := issue("intermediate", true, interKey.Public(), root, rootKey)
	leaf := issue("demo.test.com", false, leafKey.Public(), inter, interKey)
	return &certChain{key: leafKey, chain: []*x509.Certificate{leaf, inter, root}}
}

// bundle is what kvdriver writes for a certificate-backed secret: the key as
// PKCS#8, then the chain leaf to root.
func (c *certChain) bundle(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	require.NoError(t, err)
	return append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), c.certsPEM()...)
}

// certsPEM is the chain as PEM, leaf to root: what tls.crt must hold.
func (c *certChain) certsPEM() []byte {
	var out []byte
	for _, cert := range c.chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out
}

// keyPEM is the key as the upstream driver writes tls.key: PKCS#1 for RSA,
// SEC 1 for EC.
func (c *certChain) keyPEM(t testing.TB) []byte {
	t.Helper()
	switch k := c.key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		require.NoError(t, err)
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	t.Fatalf("unexpected key %T", c.key)
	return nil
}

// pfx is the chain and key as a binary PKCS#12 archive without a password.
func (c *certChain) pfx(t testing.TB) []byte {
	t.Helper()
	b, err := pkcs12.Passwordless.Encode(c.key, c.chain[0], c.chain[1:], "")
	require.NoError(t, err)
	return b
}
