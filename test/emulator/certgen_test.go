package emulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"software.sslmate.com/src/go-pkcs12"
)

// kvCertVault is an emulator with an empty vault for certificate tests.
func kvCertVault(t *testing.T) *Emulator {
	t.Helper()
	e, err := Start(Options{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.Close() })
	require.NoError(t, e.CreateVault(kvTestVault, VaultOptions{}))
	return e
}

// kvDecodeSecret parses a certificate secret into its private key and its
// certificates in stored order.
func kvDecodeSecret(t *testing.T, contentType, value string) (crypto.PrivateKey, []*x509.Certificate) {
	t.Helper()
	switch contentType {
	case ContentTypePKCS12:
		der, err := base64.StdEncoding.DecodeString(value)
		require.NoError(t, err)
		key, leaf, cas, err := pkcs12.DecodeChain(der, "")
		require.NoError(t, err)
		return key, append([]*x509.Certificate{leaf}, cas...)
	case ContentTypePEM:
		rest := []byte(value)
		var key crypto.PrivateKey
		var certs []*x509.Certificate
		for i := 0; ; i++ {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			switch b.Type {
			case "PRIVATE KEY":
				require.Equal(t, 0, i, "the private key comes first")
				k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
				require.NoError(t, err)
				key = k
			case "CERTIFICATE":
				c, err := x509.ParseCertificate(b.Bytes)
				require.NoError(t, err)
				certs = append(certs, c)
			default:
				t.Fatalf("unexpected PEM block %q", b.Type)
			}
		}
		require.Empty(t, bytes.TrimSpace(rest))
		return key, certs
	}
	t.Fatalf("content type %q", contentType)
	return nil, nil
}

func kvSamePublicKey(t *testing.T, priv crypto.PrivateKey, pub crypto.PublicKey) bool {
	t.Helper()
	s, ok := priv.(crypto.Signer)
	require.True(t, ok)
	type equaler interface{ Equal(crypto.PublicKey) bool }
	return s.Public().(equaler).Equal(pub)
}

func TestCreateCertificateChains(t *testing.T) {
	e := kvCertVault(t)
	cases := []struct {
		name        string
		opts        CertificateOptions
		wantLen     int
		wantRSA     bool
		contentType string
	}{
		{"default RSA PFX", CertificateOptions{}, 3, true, ContentTypePKCS12},
		{"EC PEM", CertificateOptions{KeyType: "EC", ContentType: ContentTypePEM}, 3, false, ContentTypePEM},
		{"self-signed RSA PEM", CertificateOptions{ChainLength: 1, ContentType: ContentTypePEM}, 1, true, ContentTypePEM},
		{"self-signed EC PFX", CertificateOptions{ChainLength: 1, KeyType: "ec"}, 1, false, ContentTypePKCS12},
		{"two intermediates EC PFX", CertificateOptions{ChainLength: 4, KeyType: "EC", Subject: "CN=api.example.com, O=Example", DNSNames: []string{"api.example.com"}}, 4, false, ContentTypePKCS12},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := "cert-" + string(rune('a'+i))
			issued, err := e.CreateCertificate(kvTestVault, name, tc.opts)
			require.NoError(t, err)
			require.Len(t, issued.Chain, tc.wantLen)
			assert.Same(t, issued.Leaf, issued.Chain[0])
			assert.Regexp(t, `^[0-9a-f]{32}$`, issued.Version)
			assert.True(t, kvSamePublicKey(t, issued.Key, issued.Leaf.PublicKey))
			if tc.wantRSA {
				assert.Equal(t, 2048, issued.Leaf.PublicKey.(*rsa.PublicKey).N.BitLen())
			} else {
				assert.Equal(t, "P-256", issued.Leaf.PublicKey.(*ecdsa.PublicKey).Curve.Params().Name)
			}
			assert.False(t, issued.Leaf.IsCA)
			if tc.opts.Subject != "" {
				assert.Equal(t, "api.example.com", issued.Leaf.Subject.CommonName)
				assert.Equal(t, []string{"Example"}, issued.Leaf.Subject.Organization)
				assert.Equal(t, tc.opts.DNSNames, issued.Leaf.DNSNames)
			} else {
				assert.Equal(t, name, issued.Leaf.Subject.CommonName)
			}

			// Every certificate names its issuer by AKI = issuer's SKI, and
			// signatures verify along the chain up to a self-signed root.
			for j, c := range issued.Chain {
				require.NotEmpty(t, c.SubjectKeyId, "certificate %d has no SKI", j)
				issuer := c
				if j+1 < len(issued.Chain) {
					issuer = issued.Chain[j+1]
					assert.True(t, issuer.IsCA)
				}
				assert.Equal(t, issuer.SubjectKeyId, c.AuthorityKeyId, "certificate %d AKI", j)
				if issuer == c { // self-signed, possibly a leaf that is no CA
					assert.NoError(t, c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature), "certificate %d signature", j)
				} else {
					assert.NoError(t, c.CheckSignatureFrom(issuer), "certificate %d signature", j)
				}
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(issued.Chain[len(issued.Chain)-1])
			for j := 1; j < len(issued.Chain)-1; j++ {
				inter.AddCert(issued.Chain[j])
			}
			_, err = issued.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			assert.NoError(t, err)

			// The stored secret holds the key and the chain in order.
			key, certs := kvDecodeSecret(t, tc.contentType, issued.SecretValue)
			assert.True(t, kvSamePublicKey(t, key, issued.Leaf.PublicKey))
			require.Len(t, certs, tc.wantLen)
			for j := range certs {
				assert.Equal(t, issued.Chain[j].Raw, certs[j].Raw, "certificate %d", j)
			}
		})
	}
	_, err := e.CreateCertificate(kvTestVault, "bad", CertificateOptions{KeyType: "oct"})
	assert.Error(t, err)
	_, err = e.CreateCertificate(kvTestVault, "bad", CertificateOptions{ContentType: "text/plain"})
	assert.Error(t, err)
	_, err = e.CreateCertificate(kvTestVault, "bad", CertificateOptions{ChainLength: -1})
	assert.Error(t, err)
	_, err = e.CreateCertificate(kvTestVault, "bad", CertificateOptions{Subject: "nonsense"})
	assert.Error(t, err)
}

func TestCreateCertificateShuffleChain(t *testing.T) {
	e := kvCertVault(t)
	rawOrder := func(certs []*x509.Certificate) [][]byte {
		var out [][]byte
		for _, c := range certs {
			out = append(out, c.Raw)
		}
		return out
	}

	t.Run("PEM", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			issued, err := e.CreateCertificate(kvTestVault, "pem-shuffled", CertificateOptions{ContentType: ContentTypePEM, KeyType: "EC", ShuffleChain: true})
			require.NoError(t, err)
			key, certs := kvDecodeSecret(t, ContentTypePEM, issued.SecretValue)
			assert.True(t, kvSamePublicKey(t, key, issued.Leaf.PublicKey))
			require.Len(t, certs, 3)
			assert.NotEqual(t, issued.Leaf.Raw, certs[0].Raw, "the leaf is not first")
			assert.ElementsMatch(t, rawOrder(issued.Chain), rawOrder(certs))
		}
	})
	t.Run("PFX", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			issued, err := e.CreateCertificate(kvTestVault, "pfx-shuffled", CertificateOptions{ChainLength: 4, KeyType: "EC", ShuffleChain: true})
			require.NoError(t, err)
			key, certs := kvDecodeSecret(t, ContentTypePKCS12, issued.SecretValue)
			assert.True(t, kvSamePublicKey(t, key, issued.Leaf.PublicKey))
			require.Len(t, certs, 4)
			assert.Equal(t, issued.Leaf.Raw, certs[0].Raw, "the key's certificate bag stays first")
			assert.NotEqual(t, rawOrder(issued.Chain[1:]), rawOrder(certs[1:]), "the CA certificates are out of order")
			assert.ElementsMatch(t, rawOrder(issued.Chain), rawOrder(certs))
		}
	})
	t.Run("self-signed has nothing to shuffle", func(t *testing.T) {
		issued, err := e.CreateCertificate(kvTestVault, "single", CertificateOptions{ChainLength: 1, KeyType: "EC", ContentType: ContentTypePEM, ShuffleChain: true})
		require.NoError(t, err)
		_, certs := kvDecodeSecret(t, ContentTypePEM, issued.SecretValue)
		require.Len(t, certs, 1)
		assert.Equal(t, issued.Leaf.Raw, certs[0].Raw)
	})
}

func TestCreateCertificateRotation(t *testing.T) {
	e := kvCertVault(t)
	first, err := e.CreateCertificate(kvTestVault, "rotated", CertificateOptions{KeyType: "EC"})
	require.NoError(t, err)
	second, err := e.CreateCertificate(kvTestVault, "Rotated", CertificateOptions{KeyType: "EC"})
	require.NoError(t, err)
	assert.NotEqual(t, first.Version, second.Version)
	assert.False(t, first.Leaf.Equal(second.Leaf))

	e.kv.mu.Lock()
	defer e.kv.mu.Unlock()
	v := e.kv.vaults[kvTestVault]
	for _, kind := range []string{KindCertificates, KindKeys, KindSecrets} {
		o := v.objects[objectKey{kind, "rotated"}]
		require.NotNil(t, o, kind)
		require.Len(t, o.versions, 2, kind)
		assert.Equal(t, first.Version, o.versions[0].id, kind)
		assert.Equal(t, second.Version, o.latest().id, kind)
		assert.Equal(t, "rotated", o.name, "the first spelling is kept")
	}
}
