package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kvnode/kvnode/test/emulator"
)

// describeFilesystem says what statfs(2) reports for dir, and fails unless
// it is a tmpfs: secrets must never reach the node's disk.
func describeFilesystem(dir string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "", fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.TMPFS_MAGIC {
		return "", fmt.Errorf("%s is not a tmpfs (statfs f_type %#x)", dir, st.Type)
	}
	desc := fmt.Sprintf("tmpfs (statfs f_type %#x), size limit %d MiB", st.Type, uint64(st.Blocks)*uint64(st.Bsize)>>20)
	if st.Flags&unix.ST_RDONLY != 0 {
		desc += ", read-only"
	}
	if st.Flags&unix.ST_NOSUID != 0 {
		desc += ", nosuid"
	}
	if st.Flags&unix.ST_NODEV != 0 {
		desc += ", nodev"
	}
	return desc, nil
}

// fileTree lists the files an application sees in a volume: the names
// through their symlinks, without the writer's ".." entries, with the mode
// and size of what they resolve to.
func fileTree(dir string) ([]string, error) {
	var out []string
	var walk func(rel string) error
	walk = func(rel string) error {
		entries, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "..") {
				continue
			}
			name := filepath.Join(rel, e.Name())
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				return err
			}
			if fi.IsDir() {
				out = append(out, fmt.Sprintf("%s %5s  %s/", fi.Mode(), "", name))
				if err := walk(name); err != nil {
					return err
				}
				continue
			}
			out = append(out, fmt.Sprintf("%s %5d  %s", fi.Mode(), fi.Size(), name))
		}
		return nil
	}
	if err := walk(""); err != nil {
		return nil, fmt.Errorf("list the volume: %w", err)
	}
	return out, nil
}

// readVolumeFile reads a small text file of the volume.
func readVolumeFile(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("read %s from the volume: %w", name, err)
	}
	return string(b), nil
}

// describeBundle describes each PEM block of a key-and-chain bundle in
// order, and fails unless it is one private key followed by certificates
// each issued (and signed) by the next, the last self-signed.
func describeBundle(data []byte) ([]string, error) {
	var blocks []*pem.Block
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		blocks = append(blocks, b)
	}
	if len(bytes.TrimSpace(data)) > 0 {
		return nil, errors.New("bytes after the last PEM block")
	}
	if len(blocks) < 2 || blocks[0].Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("want a PRIVATE KEY then certificates, got %d blocks", len(blocks))
	}
	key, err := x509.ParsePKCS8PrivateKey(blocks[0].Bytes)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	out := []string{fmt.Sprintf("1. %-11s  %s", blocks[0].Type, keyDescription(key))}
	var certs []*x509.Certificate
	for i, b := range blocks[1:] {
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("block %d is a %s, want CERTIFICATE", i+2, b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i+1, err)
		}
		certs = append(certs, c)
	}
	for i, c := range certs {
		role := "intermediate"
		switch {
		case i == 0:
			role = "leaf"
		case i == len(certs)-1:
			role = "root"
		}
		issuer := c // the root signs itself
		if i+1 < len(certs) {
			issuer = certs[i+1]
		}
		if !bytes.Equal(c.RawIssuer, issuer.RawSubject) || c.CheckSignatureFrom(issuer) != nil {
			return nil, fmt.Errorf("certificate %d (CN=%s) is not signed by the certificate after it (or by itself, as the last)", i+1, c.Subject.CommonName)
		}
		out = append(out, fmt.Sprintf("%d. %-11s  %-12s subject CN=%-32s issuer CN=%s",
			i+2, "CERTIFICATE", role, c.Subject.CommonName, c.Issuer.CommonName))
	}
	if !publicKeyMatches(key, certs[0]) {
		return nil, errors.New("the private key does not belong to the leaf certificate")
	}
	return out, nil
}

// publicKeyMatches says whether key is the private key of cert.
func publicKeyMatches(key any, cert *x509.Certificate) bool {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return k.PublicKey.Equal(cert.PublicKey)
	case *ecdsa.PrivateKey:
		return k.PublicKey.Equal(cert.PublicKey)
	}
	return false
}

func keyDescription(key any) string {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA %d (PKCS#8)", k.N.BitLen())
	case *ecdsa.PrivateKey:
		return fmt.Sprintf("ECDSA %s (PKCS#8)", k.Curve.Params().Name)
	}
	return fmt.Sprintf("%T (PKCS#8)", key)
}

// summarize says what requests to the emulator were, as " (...)", or ""
// for none.
func summarize(reqs []emulator.Request) string {
	counts := map[string]int{}
	var kinds []string
	for _, r := range reqs {
		var what string
		switch {
		case r.Status == 401:
			what = "unauthenticated challenge"
		case r.Status != 200:
			what = fmt.Sprintf("%s %d failure", r.Method, r.Status)
		case r.Grant != "":
			what = r.Grant + " token"
		case r.Service == emulator.ServiceEntra:
			what = "metadata GET"
		case strings.HasSuffix(r.Path, "/versions"):
			what = "versions listing"
		default:
			what = "object GET"
		}
		if counts[what] == 0 {
			kinds = append(kinds, what)
		}
		counts[what]++
	}
	if len(kinds) == 0 {
		return ""
	}
	sort.SliceStable(kinds, func(i, j int) bool { return counts[kinds[i]] > counts[kinds[j]] })
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = plural(counts[k], k)
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
