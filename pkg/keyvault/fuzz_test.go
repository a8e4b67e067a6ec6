package keyvault

import (
	"bytes"
	"encoding/base64"
	"encoding/pem"
	"sort"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

// FuzzParseObjects: whatever a front door reads, ParseObjects returns only
// objects that Fetch accepts, never more than it was given, and each of them
// written back as a spec parses to itself with no problem but the warnings
// the first parse gave (a value upstream tolerates is kept, and so warned
// about again).
func FuzzParseObjects(f *testing.F) {
	f.Add("db-password", "secret", "", "", "db/password", "", "", "0600")
	f.Add("web", "secret", "latest", "3", "./a//b", "PFX", "Base64", "")
	f.Add("k", "key", "abc123", "-1", "..data", "pfx", "utf-8", "4755")
	f.Fuzz(func(t *testing.T, name, typ, version, history, alias, format, encoding, perm string) {
		specs := []ObjectSpec{
			{Name: name, Type: typ, Version: version, VersionHistory: history, Alias: alias, Format: format, Encoding: encoding, FilePermission: perm},
			{Name: name, Type: typ, Alias: alias + "/x"},
		}
		objs, problems := ParseObjects(specs)
		warned := map[[2]string]bool{}
		for _, p := range problems {
			if p.Tolerated {
				warned[[2]string{p.Field, p.Detail}] = true
			}
		}
		if len(objs) > len(specs) {
			t.Fatalf("%d objects from %d specs", len(objs), len(specs))
		}
		for _, p := range problems {
			if p.Field == "" || p.Detail == "" || p.Object < 0 || p.Object >= len(specs) {
				t.Fatalf("malformed problem %+v", p)
			}
		}
		if len(objs) == 0 {
			return
		}
		if err := ValidateObjects(objs); err != nil {
			t.Fatalf("ParseObjects returned objects Fetch refuses: %v", err)
		}
		again, problems := ParseObjects(specsOf(objs))
		if len(again) != len(objs) {
			t.Fatalf("round trip: %v, %d objects, want %d", problems, len(again), len(objs))
		}
		for _, p := range problems {
			if !p.Tolerated || !warned[[2]string{p.Field, p.Detail}] {
				t.Fatalf("round trip: problem %+v, not a warning of the first parse", p)
			}
		}
		for i := range objs {
			if again[i] != objs[i] {
				t.Fatalf("round trip: %+v, want %+v", again[i], objs[i])
			}
		}
	})
}

func specsOf(objs []Object) []ObjectSpec {
	out := make([]ObjectSpec, len(objs))
	for i, o := range objs {
		out[i] = ObjectSpec{Name: o.Name, Type: string(o.Type), Version: o.Version, Alias: o.Alias,
			Format: string(o.Format), Encoding: string(o.Encoding)}
		if o.VersionHistory != 0 {
			out[i].VersionHistory = itoa(o.VersionHistory)
		}
		if o.FileMode != 0 {
			out[i].FilePermission = "0" + otoa(uint32(o.FileMode))
		}
	}
	return out
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func otoa(n uint32) string {
	var b []byte
	for ; n > 0; n /= 8 {
		b = append([]byte{byte('0' + n%8)}, b...)
	}
	return string(b)
}

// FuzzSecretContent converts hostile secret values of every content type
// and option: no panic, and an error never quotes the value.
func FuzzSecretContent(f *testing.F) {
	c := newFuzzChain(f)
	f.Add(base64.StdEncoding.EncodeToString(c.pfx), ContentTypePKCS12, true, "", "")
	f.Add(base64.StdEncoding.EncodeToString(c.pfx), ContentTypePKCS12, true, "pfx", "base64")
	f.Add(string(c.pem), ContentTypePEM, true, "", "")
	f.Add("not base64 at all, planted", "", false, "", "hex")
	f.Fuzz(func(t *testing.T, value, contentType string, certBacked bool, format, encoding string) {
		_, _, err := SecretContent(Object{Name: "s", Format: Format(format), Encoding: Encoding(encoding)},
			Secret{Value: value, ContentType: contentType, CertificateBacked: certBacked})
		if err != nil && len(value) >= 8 && bytes.Contains([]byte(err.Error()), []byte(value)) {
			t.Fatalf("error quotes the value: %v", err)
		}
	})
}

// FuzzPFXToPEM decodes hostile PKCS#12 bytes: no panic; an accepted PFX
// gives a private key and at least one certificate, in PEM.
func FuzzPFXToPEM(f *testing.F) {
	c := newFuzzChain(f)
	f.Add(c.pfx)
	f.Add(c.pfx[:len(c.pfx)/2])
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, pfx []byte) {
		out, err := PFXToPEM(pfx)
		if err != nil {
			return
		}
		var types []string
		for rest := out; ; {
			b, r := pem.Decode(rest)
			if b == nil {
				break
			}
			types = append(types, b.Type)
			rest = r
		}
		if len(types) < 2 || types[0] != "PRIVATE KEY" {
			t.Fatalf("accepted PFX gave blocks %v", types)
		}
	})
}

// FuzzOrderPEM reorders hostile PEM bundles: no panic; the output holds
// exactly the input's blocks (the same multiset), and ordering twice
// changes nothing more.
func FuzzOrderPEM(f *testing.F) {
	c := newFuzzChain(f)
	f.Add(c.pem)
	f.Add(c.shuffledPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, bundle []byte) {
		out := OrderPEM(bundle)
		if bytes.Equal(out, bundle) {
			return
		}
		if got, want := blockSet(out), blockSet(bundle); got != want {
			t.Fatalf("reordering changed the blocks")
		}
		if again := OrderPEM(out); !bytes.Equal(again, out) {
			t.Fatalf("ordering is not idempotent")
		}
	})
}

// blockSet is the sorted concatenation of a bundle's blocks, for comparing
// two bundles' content regardless of order.
func blockSet(b []byte) string {
	var blocks []string
	for rest := b; ; {
		blk, r := pem.Decode(rest)
		if blk == nil {
			break
		}
		blocks = append(blocks, blk.Type+"\x00"+string(blk.Bytes))
		rest = r
	}
	sort.Strings(blocks)
	var s bytes.Buffer
	for _, x := range blocks {
		s.WriteString(x)
		s.WriteByte(0xff)
	}
	return s.String()
}

// FuzzKeyPEM renders hostile JSON Web Keys: no panic; an accepted key is
// one PEM PUBLIC KEY block.
func FuzzKeyPEM(f *testing.F) {
	f.Add("RSA", "", []byte{0xc3, 0x01}, []byte{1, 0, 1}, []byte{}, []byte{})
	f.Add("EC", "P-256", []byte{}, []byte{}, bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, 32))
	f.Add("oct", "", []byte{}, []byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, kty, crv string, n, e, x, y []byte) {
		k := azkeys.KeyType(kty)
		c := azkeys.CurveName(crv)
		out, err := KeyPEM(&azkeys.JSONWebKey{Kty: &k, Crv: &c, N: n, E: e, X: x, Y: y})
		if err != nil {
			return
		}
		b, rest := pem.Decode(out)
		if b == nil || b.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("accepted key rendered as %q", out)
		}
	})
}

type fuzzChain struct {
	pfx, pem, shuffledPEM []byte
}

func newFuzzChain(f *testing.F) fuzzChain {
	f.Helper()
	c := newTestChain(f, 3, nil, false)
	pfx := encodePFX(f, c.leafKey, c.certs[0], c.certs[1:])
	ordered, err := PFXToPEM(pfx)
	if err != nil {
		f.Fatal(err)
	}
	var shuffled []byte
	for _, i := range []int{2, 0, 1} {
		shuffled = append(shuffled, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.certs[i].Raw})...)
	}
	key, _ := pem.Decode(ordered)
	shuffled = append(shuffled, pem.EncodeToMemory(key)...)
	return fuzzChain{pfx: pfx, pem: ordered, shuffledPEM: shuffled}
}
