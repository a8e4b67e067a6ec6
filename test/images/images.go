// Package images reads the image tarballs `make images` writes (docker
// save's format: manifest.json, a config, gzipped layers), for the tests
// that check them and the test cluster that imports them.
package images

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// EnvDir names the directory of a set of images; make test sets it.
const EnvDir = "KVNODE_IMAGES"

// Image is one entry of the set's images.json.
type Image struct {
	Name string `json:"name"`
	Ref  string `json:"ref"`
	File string `json:"file"`
	// Path is the tarball's full path.
	Path string `json:"-"`
}

// Set is the images of one `make images` run, by name.
type Set map[string]Image

// Refs lists the images' names, as containerd names them.
func (s Set) Refs() []string {
	var refs []string
	for _, im := range s {
		refs = append(refs, im.Ref)
	}
	return refs
}

// Paths lists the tarballs.
func (s Set) Paths() []string {
	var paths []string
	for _, im := range s {
		paths = append(paths, im.Path)
	}
	return paths
}

// LoadT loads the set $KVNODE_IMAGES names, or skips t when it is not set.
func LoadT(t testing.TB) Set {
	t.Helper()
	dir := os.Getenv(EnvDir)
	if dir == "" {
		t.Skipf("skipped: %s is not set; make test sets it to the images make images builds", EnvDir)
	}
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Load reads dir/images.json.
func Load(dir string) (Set, error) {
	b, err := os.ReadFile(filepath.Join(dir, "images.json"))
	if err != nil {
		return nil, err
	}
	var list []Image
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s/images.json: %w", dir, err)
	}
	s := Set{}
	for _, im := range list {
		im.Path = filepath.Join(dir, im.File)
		s[im.Name] = im
	}
	return s, nil
}

// Manifest is a tarball's manifest.json entry.
type Manifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Config is the part of an image's config the tests check.
type Config struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Config       struct {
		Entrypoint []string          `json:"Entrypoint"`
		Cmd        []string          `json:"Cmd"`
		Env        []string          `json:"Env"`
		User       string            `json:"User"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// Read returns the tarball's manifest and config.
func Read(tarball string) (Manifest, Config, error) {
	var m []Manifest
	if err := readJSON(tarball, "manifest.json", &m); err != nil {
		return Manifest{}, Config{}, err
	}
	if len(m) != 1 {
		return Manifest{}, Config{}, fmt.Errorf("%s: %d images in manifest.json, want 1", tarball, len(m))
	}
	var c Config
	err := readJSON(tarball, m[0].Config, &c)
	return m[0], c, err
}

// Files lists each layer's files (paths without a leading slash), in the
// manifest's order.
func Files(tarball string) ([][]string, error) {
	m, _, err := Read(tarball)
	if err != nil {
		return nil, err
	}
	var all [][]string
	for _, l := range m.Layers {
		var names []string
		err := eachLayerEntry(tarball, l, func(h *tar.Header, _ io.Reader) error {
			names = append(names, strings.TrimSuffix(path.Clean(h.Name), "/"))
			return nil
		})
		if err != nil {
			return nil, err
		}
		all = append(all, names)
	}
	return all, nil
}

// ReadFile returns the content of file name (no leading slash) in the
// image's topmost layer that has it.
func ReadFile(tarball, name string) ([]byte, error) {
	m, _, err := Read(tarball)
	if err != nil {
		return nil, err
	}
	for i := len(m.Layers) - 1; i >= 0; i-- {
		var data []byte
		found := false
		err := eachLayerEntry(tarball, m.Layers[i], func(h *tar.Header, r io.Reader) error {
			if found || path.Clean(h.Name) != name || h.Typeflag != tar.TypeReg {
				return nil
			}
			found = true
			var err error
			data, err = io.ReadAll(r)
			return err
		})
		if err != nil {
			return nil, err
		}
		if found {
			return data, nil
		}
	}
	return nil, fmt.Errorf("%s: no file %s", tarball, name)
}

// Extract unpacks the image's layers into dst, as a container's root
// filesystem (no whiteouts: these images have none).
func Extract(tarball, dst string) error {
	m, _, err := Read(tarball)
	if err != nil {
		return err
	}
	for _, l := range m.Layers {
		err := eachLayerEntry(tarball, l, func(h *tar.Header, r io.Reader) error {
			name := path.Clean("/" + h.Name)
			target := filepath.Join(dst, name)
			mode := os.FileMode(h.Mode & 0o777)
			if h.Mode&0o1000 != 0 {
				mode |= os.ModeSticky
			}
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(target, 0o755); err != nil {
					return err
				}
				return os.Chmod(target, mode)
			case tar.TypeSymlink:
				os.Remove(target)
				return os.Symlink(h.Linkname, target)
			case tar.TypeReg:
				f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
				if err != nil {
					return err
				}
				if _, err := io.Copy(f, r); err != nil {
					f.Close()
					return err
				}
				return f.Close()
			}
			return fmt.Errorf("%s: unexpected entry type %c", h.Name, h.Typeflag)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func readJSON(tarball, name string, v any) error {
	found := false
	err := eachEntry(tarball, func(h *tar.Header, r io.Reader) error {
		if h.Name != name {
			return nil
		}
		found = true
		return json.NewDecoder(r).Decode(v)
	})
	if err == nil && !found {
		err = fmt.Errorf("%s: no %s", tarball, name)
	}
	return err
}

func eachLayerEntry(tarball, layer string, fn func(*tar.Header, io.Reader) error) error {
	found := false
	err := eachEntry(tarball, func(h *tar.Header, r io.Reader) error {
		if h.Name != layer {
			return nil
		}
		found = true
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("layer %s: %w", layer, err)
		}
		tr := tar.NewReader(zr)
		for {
			lh, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("layer %s: %w", layer, err)
			}
			if err := fn(lh, tr); err != nil {
				return err
			}
		}
	})
	if err == nil && !found {
		err = fmt.Errorf("%s: no layer %s", tarball, layer)
	}
	return err
}

func eachEntry(tarball string, fn func(*tar.Header, io.Reader) error) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", tarball, err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}
