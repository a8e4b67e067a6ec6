package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// What an image needs of a Debian package's files: documentation,
// manuals and translations are left out.
var skipped = []string{"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian", "usr/share/bug"}

// The links update-alternatives makes on a node whose iptables is the
// nf_tables one, as Debian and current Kubernetes nodes have it.
var alternatives = map[string]string{
	"usr/sbin/iptables":          "iptables-nft",
	"usr/sbin/iptables-save":     "iptables-nft-save",
	"usr/sbin/iptables-restore":  "iptables-nft-restore",
	"usr/sbin/ip6tables":         "ip6tables-nft",
	"usr/sbin/ip6tables-save":    "ip6tables-nft-save",
	"usr/sbin/ip6tables-restore": "ip6tables-nft-restore",
}

// debianRoot returns the files of Debian package pkg and of every package
// it depends on, downloaded (once) into debs with apt-get and unpacked with
// dpkg-deb: a root filesystem in which pkg's programs run.
func debianRoot(debs, pkg string) ([]entry, error) {
	files, err := resolve(debs, pkg)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintln(h, filepath.Base(f))
	}
	root := filepath.Join(debs, "root-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(root); err != nil {
		if err := unpack(root, files); err != nil {
			return nil, err
		}
	}
	return walk(root)
}

// The package lists apt resolves candidate versions from: they change
// only with apt-get update.
const aptLists = "/var/lib/apt/lists"

// resolve returns the .deb files of pkg and its dependencies, downloading
// them when needed. Asking apt takes seconds, so the answer is remembered
// until the package lists change.
func resolve(debs, pkg string) ([]string, error) {
	var memo string
	if st, err := os.Stat(aptLists); err == nil {
		memo = filepath.Join(debs, fmt.Sprintf("%s-%d.list", pkg, st.ModTime().UnixNano()))
		if b, err := os.ReadFile(memo); err == nil {
			files := strings.Fields(string(b))
			all := len(files) > 0
			for _, f := range files {
				if _, err := os.Stat(f); err != nil {
					all = false
				}
			}
			if all {
				return files, nil
			}
		}
	}
	pkgs, err := dependencies(pkg)
	if err != nil {
		return nil, err
	}
	files, err := download(debs, pkgs)
	if err != nil {
		return nil, err
	}
	if memo != "" {
		old, _ := filepath.Glob(filepath.Join(debs, pkg+"-*.list"))
		for _, o := range old {
			os.Remove(o)
		}
		_ = os.WriteFile(memo, []byte(strings.Join(files, "\n")+"\n"), 0o644)
	}
	return files, nil
}

// dependencies lists pkg and what it depends on, recursively, as apt
// resolves them (Depends and Pre-Depends only).
func dependencies(pkg string) ([]string, error) {
	out, err := exec.Command("apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
		"--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", pkg).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends %s: %w", pkg, err)
	}
	seen := map[string]bool{}
	var pkgs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "<") || seen[line] {
			continue
		}
		seen[line] = true
		pkgs = append(pkgs, line)
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

// download fetches the candidate version of each package into debs, unless
// that version's file is there already, and returns the files.
func download(debs string, pkgs []string) ([]string, error) {
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	printURIs := func() ([]byte, error) {
		return exec.Command("apt-get", append([]string{"download", "--print-uris"}, pkgs...)...).Output()
	}
	uris, err := printURIs()
	if (err != nil || len(bytes.TrimSpace(uris)) == 0) && os.Geteuid() == 0 {
		// A machine whose package lists were never fetched knows no
		// candidate version.
		fmt.Fprintln(os.Stderr, "apt-get update: the package lists are needed to download .debs")
		if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get update: %w: %s", err, out)
		}
		uris, err = printURIs()
	}
	if err != nil || len(bytes.TrimSpace(uris)) == 0 {
		return nil, fmt.Errorf("apt-get download --print-uris %s: %v (run apt-get update)", strings.Join(pkgs, " "), err)
	}
	var files []string
	missing := false
	for _, line := range strings.Split(strings.TrimSpace(string(uris)), "\n") {
		// 'URI' FILENAME SIZE HASH
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("apt-get download --print-uris: unexpected line %q", line)
		}
		path := filepath.Join(debs, f[1])
		if _, err := os.Stat(path); err != nil {
			missing = true
		}
		files = append(files, path)
	}
	if missing {
		fmt.Fprintf(os.Stderr, "downloading %s with apt-get\n", strings.Join(pkgs, " "))
		cmd := exec.Command("apt-get", append([]string{"download", "-qq"}, pkgs...)...)
		cmd.Dir = debs
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download: %w: %s", err, out)
		}
	}
	sort.Strings(files)
	return files, nil
}

// unpack extracts the packages into root and adds the alternatives' links.
func unpack(root string, files []string) error {
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if out, err := exec.Command("dpkg-deb", "-x", f, tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %w: %s", f, err, out)
		}
	}
	for link, target := range alternatives {
		p := filepath.Join(tmp, link)
		if _, err := os.Lstat(filepath.Join(filepath.Dir(p), target)); err != nil {
			return fmt.Errorf("alternative %s: %w", link, err)
		}
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "run", "etc"} {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(tmp, "tmp"), 0o1777|fs.ModeSticky); err != nil {
		return err
	}
	return os.Rename(tmp, root)
}

// walk lists root's files as layer entries.
func walk(root string) ([]entry, error) {
	var entries []entry
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		for _, s := range skipped {
			if rel == s || strings.HasPrefix(rel, s+"/") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := int64(info.Mode().Perm())
		if info.Mode()&fs.ModeSticky != 0 {
			mode |= 0o1000
		}
		if info.Mode()&fs.ModeSetuid != 0 {
			mode |= 0o4000
		}
		e := entry{name: rel, mode: mode}
		switch {
		case d.IsDir():
			e.typ = tar.TypeDir
		case info.Mode()&fs.ModeSymlink != 0:
			e.typ = tar.TypeSymlink
			if e.linkname, err = os.Readlink(path); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			e.typ, e.from = tar.TypeReg, path
		default:
			return fmt.Errorf("%s: not a file, directory or link", path)
		}
		entries = append(entries, e)
		return nil
	})
	return entries, err
}

// hasOtherLinks reports whether a file has a hard link besides path.
func hasOtherLinks(path string) (bool, error) {
	st, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return true, nil
	}
	return sys.Nlink > 1, nil
}
