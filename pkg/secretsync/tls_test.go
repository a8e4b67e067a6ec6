package secretsync

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"software.sslmate.com/src/go-pkcs12"
)

func TestTLSPartsOfACertificateBackedSecret(t *testing.T) {
	rsaChain, ecChain := newChain(t, "RSA"), newChain(t, "EC")
	modernPFX := func(c *certChain) []byte {
		b, err := pkcs12.Modern.Encode(c.key, c.chain[0], c.chain[1:], "")
		require.NoError(t, err)
		return b
	}
	pkcs1 := func(c *certChain) []byte { return append(c.keyPEM(t), c.certsPEM()...) }
	for _, tc := range []struct {
		name  string
		chain *certChain
		file  []byte
	}{
		{"kvdriver's PEM bundle, RSA (PKCS#8 key, then leaf to root)", rsaChain, rsaChain.bundle(t)},
		{"kvdriver's PEM bundle, EC", ecChain, ecChain.bundle(t)},
		{"PKCS#1 key and chain", rsaChain, pkcs1(rsaChain)},
		{"SEC 1 key after EC PARAMETERS, as openssl writes it", ecChain,
			append(append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}), ecChain.keyPEM(t)...), ecChain.certsPEM()...)},
		{"certificates before the key", rsaChain, append(rsaChain.certsPEM(), rsaChain.keyPEM(t)...)},
		{"binary PKCS#12 without encryption", rsaChain, rsaChain.pfx(t)},
		{"binary PKCS#12 with the empty password, as Key Vault exports it", ecChain, modernPFX(ecChain)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := tlsPart(tc.file, "tls.key")
			require.NoError(t, err)
			assert.Equal(t, string(tc.chain.keyPEM(t)), string(key), "tls.key: PKCS#1 for RSA, SEC 1 for EC, as the upstream driver writes it")
			crt, err := tlsPart(tc.file, "tls.crt")
			require.NoError(t, err)
			assert.Equal(t, string(tc.chain.certsPEM()), string(crt), "tls.crt: every certificate, in the file's order")
		})
	}
}

func TestTLSPartsRefuseWhatTheyCannotSplit(t *testing.T) {
	c := newChain(t, "RSA")
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	edDER, err := x509.MarshalPKCS8PrivateKey(edKey)
	require.NoError(t, err)
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	require.NoError(t, err)
	planted := "planted-secret-value-7f3a"
	for _, tc := range []struct {
		name string
		file []byte
		key  string
		want error
	}{
		{"certificates only, tls.key", c.certsPEM(), "tls.key", errNoKey},
		{"a key only, tls.crt", c.keyPEM(t), "tls.crt", errNoCertificates},
		{"two keys", append(append(c.keyPEM(t), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})...), c.certsPEM()...), "tls.key", errManyKeys},
		{"an encrypted key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte(planted)}), "tls.key", errEncryptedKey},
		{"a key block that is no key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte(planted)}), "tls.key", errBadKey},
		{"an Ed25519 key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}), "tls.key", errKeyAlgorithm},
		{"plain text, tls.key", []byte(planted), "tls.key", errNotPKCS12},
		{"plain text, tls.crt", []byte(planted), "tls.crt", errNotPKCS12},
		{"a base64 PFX (objectFormat pfx without objectEncoding base64)", []byte(base64.StdEncoding.EncodeToString(c.pfx(t))), "tls.crt", errNotPKCS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tlsPart(tc.file, tc.key)
			assert.Nil(t, out)
			require.ErrorIs(t, err, tc.want)
			assert.NotContains(t, err.Error(), planted)
		})
	}
}
