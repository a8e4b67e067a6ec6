// Command images builds the OCI images the test cluster runs, offline and
// without a container engine, as image tarballs (docker save's format,
// which `ctr images import` reads), one per image:
//
//	kvnode                     /kvdriver, as the Dockerfile's kvnode target
//	nmi                        /nmi and Debian's iptables (nf_tables)
//	csi-node-driver-registrar  kubelet plugin registration (./registrar)
//	livenessprobe              CSI Probe as /healthz (./livenessprobe)
//	pause                      the pod sandbox (./pause)
//	app                        the test workload (test/app)
//
// Every binary is static (CGO_ENABLED=0 -trimpath -ldflags '-s -w'). nmi
// runs iptables, so its image holds Debian's iptables and the libraries it
// links, unpacked from the .debs apt-get downloads (kvnode's code runs the
// same iptables binary on a node as in this image), with iptables pointing
// at xtables-nft-multi as update-alternatives sets it on current nodes.
//
// Output goes to -cache: the binaries (bin/), the .debs (debs/), each
// image's tarball named by a hash of its content, layers and config
// (tarballs/), and a directory per set of images, named by a hash of the
// set, holding links to the tarballs and images.json, which the tests read
// (sets/). The newest sets are kept, older ones and the tarballs only they
// held are removed. A run whose images
// have not changed rewrites nothing. The set's directory is printed.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Config is the command line.
type Config struct {
	Repo     string // the kvnode repository
	Cache    string // where everything is written
	Registry string // the images' repository prefix
	Tag      string
	Version  string // kvnode's version, stamped into its binaries
	Keep     int    // sets of images kept in Cache
}

// Image is one entry of images.json.
type Image struct {
	Name string `json:"name"`
	Ref  string `json:"ref"`
	File string `json:"file"`
}

const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var cfg Config
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.StringVar(&cfg.Repo, "repo", "../..", "the kvnode repository")
	fs.StringVar(&cfg.Cache, "cache", "", "directory for the binaries, .debs and images (required)")
	fs.StringVar(&cfg.Registry, "registry", "kvnode.local", "repository prefix of the images' names")
	fs.StringVar(&cfg.Tag, "tag", "local", "tag of every image")
	fs.StringVar(&cfg.Version, "version", "dev", "kvnode's version, stamped into kvdriver and nmi")
	fs.IntVar(&cfg.Keep, "keep", 3, "sets of images to keep in the cache, newest first")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.Cache == "" {
		return errors.New("-cache is required")
	}
	dir, err := Build(cfg)
	if err != nil {
		return err
	}
	fmt.Println(dir)
	return nil
}

// Build builds every image and returns the directory of the set.
func Build(cfg Config) (string, error) {
	repo, err := filepath.Abs(cfg.Repo)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cfg.Cache, "bin")
	ldflags := "-s -w -X github.com/kvnode/kvnode/pkg/version.Version=" + cfg.Version
	if err := goBuild(repo, bin, ldflags, "./cmd/kvdriver", "./cmd/nmi", "./test/app"); err != nil {
		return "", err
	}
	if err := goBuild(filepath.Join(repo, "tools", "images"), bin, "-s -w", "./pause", "./registrar", "./livenessprobe"); err != nil {
		return "", err
	}
	iptablesRoot, err := debianRoot(filepath.Join(cfg.Cache, "debs"), "iptables")
	if err != nil {
		return "", err
	}

	base := []entry{
		dir("etc", 0o755), dir("tmp", 0o1777), dir("run", 0o755),
		file("etc/passwd", 0o644, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"),
		file("etc/group", 0o644, "root:x:0:\nnonroot:x:65532:\n"),
	}
	specs := []spec{
		{name: "kvnode", layers: [][]entry{base, {binary(bin, "kvdriver", "kvdriver")}}, entrypoint: "/kvdriver"},
		{name: "nmi", layers: [][]entry{iptablesRoot, {binary(bin, "nmi", "nmi")}}, entrypoint: "/nmi"},
		{name: "csi-node-driver-registrar", layers: [][]entry{base, {binary(bin, "registrar", "csi-node-driver-registrar")}}, entrypoint: "/csi-node-driver-registrar"},
		{name: "livenessprobe", layers: [][]entry{base, {binary(bin, "livenessprobe", "livenessprobe")}}, entrypoint: "/livenessprobe"},
		{name: "pause", layers: [][]entry{{binary(bin, "pause", "pause")}}, entrypoint: "/pause", user: "65535:65535"},
		{name: "app", layers: [][]entry{base, {binary(bin, "app", "app")}}, entrypoint: "/app", user: "65532:65532"},
	}

	store := filepath.Join(cfg.Cache, "tarballs")
	var set []Image
	files := map[string]string{}
	setHash := sha256.New()
	for _, s := range specs {
		ref := cfg.Registry + "/" + s.name + ":" + cfg.Tag
		path, err := s.write(store, ref)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", s.name, err)
		}
		set = append(set, Image{Name: s.name, Ref: ref, File: s.name + ".tar"})
		files[s.name+".tar"] = path
		fmt.Fprintf(setHash, "%s %s\n", ref, filepath.Base(path))
	}
	setDir := filepath.Join(cfg.Cache, "sets", hex.EncodeToString(setHash.Sum(nil))[:16])
	if err := writeSet(setDir, set, files); err != nil {
		return "", err
	}
	return setDir, prune(cfg.Cache, store, setDir, cfg.Keep)
}

// goBuild builds pkgs of the module in dir into out, static. go build
// leaves a binary whose build ID is current untouched, so a second run
// costs little.
func goBuild(dir, out, ldflags string, pkgs ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags", ldflags, "-o", out + "/"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s in %s: %w", strings.Join(pkgs, " "), dir, err)
	}
	return nil
}

// spec describes one image.
type spec struct {
	name       string
	layers     [][]entry
	entrypoint string
	user       string
}

// write writes the image's tarball into store, named by a hash of its
// layers and config, unless it is there already, and returns its path.
func (s spec) write(store, ref string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	var layers []v1.Layer
	h := sha256.New()
	fmt.Fprintf(h, "ref %s\nentrypoint %s\nuser %s\n", ref, s.entrypoint, s.user)
	for _, entries := range s.layers {
		b, err := layerTar(entries)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "layer %x\n", sha256.Sum256(b))
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		})
		if err != nil {
			return "", err
		}
		layers = append(layers, l)
	}
	path := filepath.Join(store, fmt.Sprintf("%s-%s.tar", s.name, hex.EncodeToString(h.Sum(nil))[:16]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}

	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{s.entrypoint}
	cf.Config.Env = []string{pathEnv}
	cf.Config.User = s.user
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": s.name, "org.opencontainers.image.source": "kvnode"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	if err := os.MkdirAll(store, 0o755); err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// writeSet makes dir hold images.json and a hard link to each tarball.
func writeSet(dir string, set []Image, files map[string]string) error {
	if _, err := os.Stat(filepath.Join(dir, "images.json")); err == nil {
		now := time.Now()
		return os.Chtimes(dir, now, now)
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	for name, path := range files {
		if err := os.Link(path, filepath.Join(tmp, name)); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "images.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// prune keeps the newest keep sets (and current) and deletes the tarballs
// in store no kept set links to.
func prune(cache, store, current string, keep int) error {
	sets, err := filepath.Glob(filepath.Join(cache, "sets", "*"))
	if err != nil {
		return err
	}
	mtime := func(p string) int64 {
		st, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return st.ModTime().UnixNano()
	}
	sort.Slice(sets, func(i, j int) bool { return mtime(sets[i]) > mtime(sets[j]) })
	kept := 0
	for _, s := range sets {
		if s == current || kept < keep-1 {
			if s != current {
				kept++
			}
			continue
		}
		if err := os.RemoveAll(s); err != nil {
			return err
		}
	}
	tars, err := filepath.Glob(filepath.Join(store, "*.tar"))
	if err != nil {
		return err
	}
	for _, t := range tars {
		if linked, err := hasOtherLinks(t); err == nil && !linked {
			os.Remove(t)
		}
	}
	return nil
}

// entry is one file of a layer.
type entry struct {
	name     string // without a leading slash
	mode     int64  // permission bits, with 0o1000 for sticky
	typ      byte
	linkname string
	data     []byte
	from     string // a file to read data from
}

func dir(name string, mode int64) entry { return entry{name: name, mode: mode, typ: tar.TypeDir} }

func file(name string, mode int64, data string) entry {
	return entry{name: name, mode: mode, typ: tar.TypeReg, data: []byte(data)}
}

func binary(bin, built, name string) entry {
	return entry{name: name, mode: 0o755, typ: tar.TypeReg, from: filepath.Join(bin, built)}
}

// layerTar writes entries as a layer: sorted, owned by root, with no
// timestamps, so the same files always make the same layer.
func layerTar(entries []entry) ([]byte, error) {
	entries = append([]entry(nil), entries...)
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		data := e.data
		if e.from != "" {
			b, err := os.ReadFile(e.from)
			if err != nil {
				return nil, err
			}
			data = b
		}
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: e.typ, Linkname: e.linkname, Format: tar.FormatPAX}
		if e.typ == tar.TypeDir {
			hdr.Name += "/"
		}
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write(data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
