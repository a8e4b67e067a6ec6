package keyvault

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"software.sslmate.com/src/go-pkcs12"
)

// plantedValue is a secret value that must never show up in an error.
const plantedValue = "planted-secret-value-5e9d"

// testChain is a generated certificate chain, leaf first, root last.
type testChain struct {
	leafKey crypto.Signer
	certs   []*x509.Certificate
}

// newTestChain builds a chain of n certificates (n >= 1) whose leaf key is
// leafKey (nil: a fresh P-256 key). With noKeyIDs the certificates carry no
// subject or authority key IDs, so only names link them.
func newTestChain(t testing.TB, n int, leafKey crypto.Signer, noKeyIDs bool) testChain {
	t.Helper()
	if leafKey == nil {
		leafKey = newECKey(t, elliptic.P256())
	}
	keys := make([]crypto.Signer, n)
	keys[0] = leafKey
	for i := 1; i < n; i++ {
		keys[i] = newECKey(t, elliptic.P256())
	}
	certs := make([]*x509.Certificate, n)
	var parent *x509.Certificate
	// Build from the root (index n-1) down to the leaf.
	for i := n - 1; i >= 0; i-- {
		name := "intermediate " + string(rune('A'+i))
		switch i {
		case 0:
			name = "leaf.example.com"
		case n - 1:
			name = "root"
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(100 + i)),
			Subject:      pkix.Name{CommonName: name, Organization: []string{"kvnode test"}},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
		}
		if i > 0 && !noKeyIDs {
			tmpl.IsCA = true
			tmpl.BasicConstraintsValid = true
			tmpl.KeyUsage = x509.KeyUsageCertSign
		}
		if i == 0 {
			tmpl.DNSNames = []string{name}
		}
		signer, issuer := keys[i], tmpl
		if parent != nil {
			signer, issuer = keys[i+1], parent
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, keys[i].Public(), signer)
		require.NoError(t, err)
		c, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		if noKeyIDs {
			require.Empty(t, c.SubjectKeyId)
			require.Empty(t, c.AuthorityKeyId)
		}
		certs[i] = c
		parent = c
	}
	return testChain{leafKey: leafKey, certs: certs}
}

func newECKey(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	require.NoError(t, err)
	return k
}

func newRSAKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	require.NoError(t, err)
	return k
}

// pick returns certs in the order of idx.
func pick(certs []*x509.Certificate, idx ...int) []*x509.Certificate {
	out := make([]*x509.Certificate, len(idx))
	for i, j := range idx {
		out[i] = certs[j]
	}
	return out
}

// encodePFX writes a PFX whose first certificate bag is first (the one tied
// to the key) and the others in the order given, as Key Vault's are: 3DES,
// no password.
func encodePFX(t testing.TB, key crypto.Signer, first *x509.Certificate, rest []*x509.Certificate) []byte {
	t.Helper()
	pfx, err := pkcs12.LegacyDES.Encode(key, first, rest, "")
	require.NoError(t, err)
	return pfx
}

// decodePEM splits PEM output into its blocks.
func decodePEM(t testing.TB, b []byte) []*pem.Block {
	t.Helper()
	var blocks []*pem.Block
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		blocks = append(blocks, blk)
	}
	require.Empty(t, b, "trailing bytes after the PEM blocks")
	return blocks
}

// requireKeyAndChain checks PEM output: the PKCS#8 private key of want.leafKey,
// then the certificates of order, in that order.
func requireKeyAndChain(t testing.TB, out []byte, key crypto.Signer, order []*x509.Certificate) {
	t.Helper()
	blocks := decodePEM(t, out)
	require.Len(t, blocks, 1+len(order))
	require.Equal(t, "PRIVATE KEY", blocks[0].Type)
	got, err := x509.ParsePKCS8PrivateKey(blocks[0].Bytes)
	require.NoError(t, err)
	assert.True(t, key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(got.(crypto.Signer).Public()), "private key differs")
	for i, c := range order {
		assert.Equal(t, "CERTIFICATE", blocks[1+i].Type)
		assert.Equal(t, c.Raw, blocks[1+i].Bytes, "certificate %d: want %q", i, c.Subject.CommonName)
	}
}

func TestSecretContentEncodings(t *testing.T) {
	raw := []byte{0x00, 0xff, 'k', 'v', 0x10}
	cases := []struct {
		name     string
		enc      Encoding
		value    string
		want     []byte
		wantErr  string
		contType string
	}{
		{name: "default is utf-8", value: "p@ss wörd\n", want: []byte("p@ss wörd\n")},
		{name: "utf-8", enc: EncodingUTF8, value: "abc", want: []byte("abc")},
		{name: "utf-8 keeps base64-looking text", enc: EncodingUTF8, value: "AAEC", want: []byte("AAEC")},
		{name: "hex", enc: EncodingHex, value: hex.EncodeToString(raw), want: raw},
		{name: "hex upper case digits and name", enc: "HEX", value: "00FF6B7610", want: raw},
		{name: "base64", enc: EncodingBase64, value: base64.StdEncoding.EncodeToString(raw), want: raw},
		{name: "base64 with trailing newline", enc: EncodingBase64, value: base64.StdEncoding.EncodeToString(raw) + "\n", want: raw},
		{name: "base64 name any case", enc: "Base64", value: "a3Y=", want: []byte("kv")},
		{name: "empty value", enc: EncodingBase64, value: "", want: []byte{}},
		{name: "plain content type is decoded", enc: EncodingBase64, value: "a3Y=", contType: "text/plain", want: []byte("kv")},
		{name: "bad base64", enc: EncodingBase64, value: plantedValue + "!", wantErr: "secret db: objectEncoding base64: the value is not valid base64"},
		{name: "base64url is not base64", enc: EncodingBase64, value: "_-8", wantErr: "not valid base64"},
		{name: "bad hex character", enc: EncodingHex, value: plantedValue, wantErr: "secret db: objectEncoding hex: the value is not valid hex: illegal character"},
		{name: "odd hex length", enc: EncodingHex, value: "abc", wantErr: "odd length hex string"},
		{name: "unknown encoding", enc: "rot13", value: "x", wantErr: `objectEncoding "rot13" is not utf-8, hex or base64`},
		{name: "unknown format", value: "x", wantErr: `objectFormat "der" is not pem or pfx`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := Object{Name: "db", Type: TypeSecret, Encoding: tc.enc}
			if tc.name == "unknown format" {
				obj.Format = "der"
			}
			got, warning, err := SecretContent(obj, Secret{Value: tc.value, ContentType: tc.contType})
			assert.Empty(t, warning)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.NotContains(t, err.Error(), plantedValue)
				assert.NotContains(t, err.Error(), "planted")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestSecretContentPEMFileOfACertificate(t *testing.T) {
	c := newTestChain(t, 3, nil, false)
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.leafKey)
	require.NoError(t, err)
	keyBlock := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cert := func(i int) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.certs[i].Raw}) }
	join := func(parts ...[]byte) string { return string(bytes.Join(parts, nil)) }
	inOrder := join(keyBlock, cert(0), cert(1), cert(2))
	pemSecret := func(value string) Secret {
		return Secret{Value: value, ContentType: ContentTypePEM, CertificateBacked: true}
	}

	// Upload order is kept by Key Vault; the file is put in TLS order.
	got, warning, err := SecretContent(Object{Name: "web"}, pemSecret(join(cert(2), cert(0), keyBlock, cert(1))))
	require.NoError(t, err)
	assert.Empty(t, warning)
	assert.Equal(t, inOrder, string(got))
	requireKeyAndChain(t, got, c.leafKey, c.certs)

	// Already in order: written byte for byte as stored, as upstream.
	stored := "\n" + inOrder + "\n"
	got, _, err = SecretContent(Object{Name: "web"}, pemSecret(stored))
	require.NoError(t, err)
	assert.Equal(t, stored, string(got))

	// Not only PEM: as stored.
	v := "comment\n" + join(cert(1), cert(0))
	got, _, err = SecretContent(Object{Name: "web"}, pemSecret(v))
	require.NoError(t, err)
	assert.Equal(t, v, string(got))

	// An incomplete chain keeps its stored order after the leaf, as the
	// PFX path does.
	got, _, err = SecretContent(Object{Name: "web"}, pemSecret(join(cert(2), keyBlock, cert(0))))
	require.NoError(t, err)
	assert.Equal(t, join(keyBlock, cert(0), cert(2)), string(got))

	// objectFormat pfx does not apply: a warning, the PEM written.
	got, warning, err = SecretContent(Object{Name: "web", Format: FormatPFX}, pemSecret(inOrder))
	require.NoError(t, err)
	assert.Equal(t, inOrder, string(got))
	assert.Contains(t, warning, "objectFormat pfx: the certificate web is stored as application/x-pem-file")

	// objectEncoding decodes the stored text, as upstream: PEM is not base64.
	_, _, err = SecretContent(Object{Name: "web", Encoding: EncodingBase64}, pemSecret(inOrder))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "objectEncoding base64: the value is not valid base64")

	// Another content type on a certificate's secret fails, as upstream.
	_, _, err = SecretContent(Object{Name: "web"}, Secret{Value: plantedValue, ContentType: "text/plain", CertificateBacked: true})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `backs a certificate but its content type "text/plain"`)
	assert.NotContains(t, err.Error(), plantedValue)
}

// A secret that backs no certificate is written as stored whatever its
// content type, as upstream writes it: only certificates' secrets convert.
func TestSecretContentPlainSecretIsWrittenAsStored(t *testing.T) {
	c := newTestChain(t, 2, nil, false)
	pfx := encodePFX(t, c.leafKey, c.certs[0], c.certs[1:])
	stored := base64.StdEncoding.EncodeToString(pfx)
	plain := Secret{Value: stored, ContentType: ContentTypePKCS12}

	got, warning, err := SecretContent(Object{Name: "bundle"}, plain)
	require.NoError(t, err)
	assert.Empty(t, warning)
	assert.Equal(t, stored, string(got), "the base64 text as stored")

	got, _, err = SecretContent(Object{Name: "bundle", Encoding: EncodingBase64}, plain)
	require.NoError(t, err)
	assert.Equal(t, pfx, got, "objectEncoding base64: the binary PFX")

	got, warning, err = SecretContent(Object{Name: "bundle", Format: FormatPFX}, Secret{Value: "hello"})
	require.NoError(t, err)
	assert.Equal(t, "hello", string(got))
	assert.Contains(t, warning, "objectFormat pfx applies to the secret of a certificate; bundle is a plain secret")

	pemText := "-----BEGIN CERTIFICATE-----\nnot parsed\n-----END CERTIFICATE-----\n"
	got, _, err = SecretContent(Object{Name: "p"}, Secret{Value: pemText, ContentType: ContentTypePEM})
	require.NoError(t, err)
	assert.Equal(t, pemText, string(got), "a plain secret's PEM is not reordered or parsed")
}

func TestSecretContentPFXToPEM(t *testing.T) {
	rsaLeaf := newRSAKey(t, 2048)
	three := newTestChain(t, 3, rsaLeaf, false)
	four := newTestChain(t, 4, nil, false)
	named := newTestChain(t, 3, nil, true)
	single := newTestChain(t, 1, nil, false)
	cases := []struct {
		name  string
		key   crypto.Signer
		first *x509.Certificate
		rest  []*x509.Certificate
		want  []*x509.Certificate
	}{
		{"3-chain stored in order", three.leafKey, three.certs[0], pick(three.certs, 1, 2), three.certs},
		{"3-chain stored root first", three.leafKey, three.certs[0], pick(three.certs, 2, 1), three.certs},
		{"3-chain with the leaf in a later bag", three.leafKey, three.certs[2], pick(three.certs, 0, 1), three.certs},
		{"4-chain shuffled", four.leafKey, four.certs[0], pick(four.certs, 3, 1, 2), four.certs},
		{"4-chain reversed, leaf last", four.leafKey, four.certs[3], pick(four.certs, 2, 1, 0), four.certs},
		{"names only (no key IDs)", named.leafKey, named.certs[0], pick(named.certs, 2, 1), named.certs},
		{"self-signed leaf alone", single.leafKey, single.certs[0], nil, single.certs},
		{"incomplete: intermediate missing keeps stored order, leaf first", four.leafKey, four.certs[3], pick(four.certs, 0, 1),
			pick(four.certs, 0, 3, 1)},
		{"incomplete: foreign certificate keeps stored order, leaf first", three.leafKey, three.certs[0], []*x509.Certificate{four.certs[3], three.certs[2], three.certs[1]},
			[]*x509.Certificate{three.certs[0], four.certs[3], three.certs[2], three.certs[1]}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pfx := encodePFX(t, tc.key, tc.first, tc.rest)
			out, _, err := SecretContent(Object{Name: "web"}, certSecret(base64.StdEncoding.EncodeToString(pfx)))
			require.NoError(t, err)
			requireKeyAndChain(t, out, tc.key, tc.want)

			direct, err := PFXToPEM(pfx)
			require.NoError(t, err)
			assert.Equal(t, out, direct)
		})
	}
}

func TestSecretContentPFXFormat(t *testing.T) {
	c := newTestChain(t, 3, nil, false)
	pfx := encodePFX(t, c.leafKey, c.certs[0], pick(c.certs, 2, 1))
	stored := base64.StdEncoding.EncodeToString(pfx)

	got, _, err := SecretContent(Object{Name: "web", Format: FormatPFX}, certSecret(stored))
	require.NoError(t, err)
	assert.Equal(t, stored, string(got), "pfx without encoding is the base64 text as stored")

	got, _, err = SecretContent(Object{Name: "web", Format: "PFX", Encoding: EncodingBase64}, certSecret(stored))
	require.NoError(t, err)
	assert.Equal(t, pfx, got, "pfx with base64 encoding is the binary")
	key, leaf, _, err := pkcs12.DecodeChain(got, "")
	require.NoError(t, err)
	assert.Equal(t, c.certs[0].Raw, leaf.Raw)
	assert.NotNil(t, key)

	_, _, err = SecretContent(Object{Name: "web", Format: FormatPFX, Encoding: EncodingHex}, certSecret(stored))
	require.Error(t, err, "hex decodes the stored text, as upstream")
}

// certSecret is a certificate's secret stored as a PFX.
func certSecret(value string) Secret {
	return Secret{Value: value, ContentType: ContentTypePKCS12, CertificateBacked: true}
}

func TestSecretContentBadPFX(t *testing.T) {
	c := newTestChain(t, 2, nil, false)
	pfx := encodePFX(t, c.leafKey, c.certs[0], c.certs[1:])
	withPassword, err := pkcs12.LegacyDES.Encode(c.leafKey, c.certs[0], nil, "hunter2")
	require.NoError(t, err)
	cases := []struct {
		name, value, want string
	}{
		{"not base64", plantedValue + "%%", "secret web: content type application/x-pkcs12 but the value is not base64"},
		{"not a PFX", base64.StdEncoding.EncodeToString([]byte(plantedValue)), "secret web: decode PFX"},
		{"truncated PFX", base64.StdEncoding.EncodeToString(pfx[:len(pfx)/2]), "secret web: decode PFX"},
		{"PFX with a password", base64.StdEncoding.EncodeToString(withPassword), "secret web: decode PFX"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := SecretContent(Object{Name: "web"}, certSecret(tc.value))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), plantedValue)
		})
	}
}

func TestOrderChain(t *testing.T) {
	c := newTestChain(t, 4, nil, false)
	other := newTestChain(t, 2, nil, false)
	cases := []struct {
		name  string
		in    []*x509.Certificate
		key   crypto.PublicKey
		want  []*x509.Certificate
		equal bool
	}{
		{name: "shuffled, leaf by key", in: pick(c.certs, 2, 0, 3, 1), key: c.leafKey.Public(), want: c.certs},
		{name: "shuffled, no key: the leaf is nobody's issuer", in: pick(c.certs, 3, 1, 0, 2), want: c.certs},
		{name: "partial chain without the root", in: pick(c.certs, 2, 1, 0), key: c.leafKey.Public(), want: pick(c.certs, 0, 1, 2)},
		{name: "ambiguous: two copies of an issuer", in: pick(c.certs, 2, 1, 0, 1), key: c.leafKey.Public(), want: pick(c.certs, 0, 2, 1, 1)},
		{name: "no key, two leaves: stored order", in: []*x509.Certificate{c.certs[1], other.certs[0], c.certs[0]}, want: []*x509.Certificate{c.certs[1], other.certs[0], c.certs[0]}},
		{name: "key matching nothing falls back to the chain", in: pick(c.certs, 1, 0), key: other.leafKey.Public(), want: pick(c.certs, 0, 1)},
		{name: "one certificate", in: pick(c.certs, 2), want: pick(c.certs, 2)},
		{name: "none", in: nil, want: []*x509.Certificate{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]*x509.Certificate(nil), tc.in...)
			got := OrderChain(tc.in, tc.key)
			require.Len(t, got, len(tc.want))
			for i := range tc.want {
				assert.Same(t, tc.want[i], got[i], "position %d: got %q want %q", i, got[i].Subject.CommonName, tc.want[i].Subject.CommonName)
			}
			assert.Equal(t, in, tc.in, "input modified")
		})
	}
}

func jwkOf(t testing.TB, pub crypto.PublicKey, kty azkeys.KeyType) *azkeys.JSONWebKey {
	t.Helper()
	jwk := &azkeys.JSONWebKey{Kty: &kty}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		jwk.N = k.N.Bytes()
		jwk.E = big.NewInt(int64(k.E)).Bytes()
	case *ecdsa.PublicKey:
		crv := azkeys.CurveName(k.Curve.Params().Name)
		jwk.Crv = &crv
		b, err := k.Bytes()
		require.NoError(t, err)
		size := (len(b) - 1) / 2
		jwk.X, jwk.Y = b[1:1+size], b[1+size:]
	}
	return jwk
}

func TestKeyPEM(t *testing.T) {
	rsaKey := newRSAKey(t, 2048)
	keys := []struct {
		name string
		pub  crypto.PublicKey
		kty  azkeys.KeyType
	}{
		{"RSA", rsaKey.Public(), azkeys.KeyTypeRSA},
		{"RSA-HSM", newRSAKey(t, 3072).Public(), azkeys.KeyTypeRSAHSM},
		{"EC P-256", newECKey(t, elliptic.P256()).Public(), azkeys.KeyTypeEC},
		{"EC P-384", newECKey(t, elliptic.P384()).Public(), azkeys.KeyTypeEC},
		{"EC P-521", newECKey(t, elliptic.P521()).Public(), azkeys.KeyTypeEC},
		{"EC-HSM P-256", newECKey(t, elliptic.P256()).Public(), azkeys.KeyTypeECHSM},
		{"EC-HSM P-521", newECKey(t, elliptic.P521()).Public(), azkeys.KeyTypeECHSM},
	}
	for _, tc := range keys {
		t.Run(tc.name, func(t *testing.T) {
			out, err := KeyPEM(jwkOf(t, tc.pub, tc.kty))
			require.NoError(t, err)
			blocks := decodePEM(t, out)
			require.Len(t, blocks, 1)
			assert.Equal(t, "PUBLIC KEY", blocks[0].Type)
			got, err := x509.ParsePKIXPublicKey(blocks[0].Bytes)
			require.NoError(t, err)
			assert.True(t, tc.pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(got))
		})
	}

	t.Run("EC coordinates with leading zeros dropped", func(t *testing.T) {
		for {
			k := newECKey(t, elliptic.P256())
			jwk := jwkOf(t, k.Public(), azkeys.KeyTypeEC)
			if jwk.X[0] != 0 {
				continue
			}
			jwk.X = jwk.X[1:]
			out, err := KeyPEM(jwk)
			require.NoError(t, err)
			got, err := x509.ParsePKIXPublicKey(decodePEM(t, out)[0].Bytes)
			require.NoError(t, err)
			assert.True(t, k.PublicKey.Equal(got))
			return
		}
	})

	ptr := func(s string) *azkeys.CurveName { c := azkeys.CurveName(s); return &c }
	ec := jwkOf(t, newECKey(t, elliptic.P256()).Public(), azkeys.KeyTypeEC)
	offCurve := *ec
	offCurve.Y = append([]byte(nil), ec.Y...)
	offCurve.Y[len(offCurve.Y)-1] ^= 1
	wrongCurve := *ec
	wrongCurve.Crv = ptr("P-384")
	secp256k1 := *ec
	secp256k1.Crv = ptr("P-256K")
	noCrv := *ec
	noCrv.Crv = nil
	rsaJWK := jwkOf(t, rsaKey.Public(), azkeys.KeyTypeRSA)
	noN := *rsaJWK
	noN.N = nil
	evenE := *rsaJWK
	evenE.E = []byte{0x01, 0x00, 0x00}
	small := jwkOf(t, &rsa.PublicKey{N: big.NewInt(3233), E: 17}, azkeys.KeyTypeRSA)
	oct, octHSM, unknown := azkeys.KeyTypeOct, azkeys.KeyTypeOctHSM, azkeys.KeyType("OKP")
	bad := []struct {
		name string
		jwk  *azkeys.JSONWebKey
		want string
	}{
		{"nil", nil, "no key type"},
		{"no kty", &azkeys.JSONWebKey{}, "no key type"},
		{"oct", &azkeys.JSONWebKey{Kty: &oct, K: []byte(plantedValue)}, "key type oct is a symmetric key"},
		{"oct-HSM", &azkeys.JSONWebKey{Kty: &octHSM}, "key type oct-HSM is a symmetric key"},
		{"unknown kty", &azkeys.JSONWebKey{Kty: &unknown}, `key type "OKP" is not supported`},
		{"point off the curve", &offCurve, "point is not on curve P-256"},
		{"coordinates of another curve", &wrongCurve, "point is not on curve P-384"},
		{"P-256K", &secp256k1, `curve "P-256K" is not supported`},
		{"no curve", &noCrv, "curve (crv) missing"},
		{"RSA without modulus", &noN, "modulus (n) or exponent (e) missing"},
		{"RSA even exponent", &evenE, "public exponent (e) out of range"},
		{"RSA tiny modulus", small, "too small"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := KeyPEM(tc.jwk)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), plantedValue)
		})
	}
}

func TestCertificatePEM(t *testing.T) {
	c := newTestChain(t, 2, nil, false)
	out, err := CertificatePEM(c.certs[0].Raw)
	require.NoError(t, err)
	blocks := decodePEM(t, out)
	require.Len(t, blocks, 1)
	assert.Equal(t, "CERTIFICATE", blocks[0].Type)
	assert.Equal(t, c.certs[0].Raw, blocks[0].Bytes)

	_, err = CertificatePEM(nil)
	assert.ErrorContains(t, err, "certificate has no content")
	_, err = CertificatePEM([]byte("garbage"))
	assert.ErrorContains(t, err, "parse certificate")
}
