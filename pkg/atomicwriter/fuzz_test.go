package atomicwriter

import (
	"bytes"
	"maps"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzCheckPath: a path the writer accepts is local, clean, and has no
// segment the layout reserves.
func FuzzCheckPath(f *testing.F) {
	for _, p := range []string{"a", "dir/file.pem", "..data", "a/../b", "/etc/passwd", "a//b", "./a", "a/", "a\x00b", "tls.crt", strings.Repeat("x", 256)} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if checkPath(p) != "" {
			return
		}
		if !filepath.IsLocal(p) || path.Clean(p) != p || strings.HasPrefix(p, "..") || strings.IndexByte(p, 0) >= 0 {
			t.Fatalf("accepted %q", p)
		}
	})
}

// FuzzWrite writes a fuzzed payload over a volume that holds a known one.
// A refused payload changes nothing on disk; an accepted one reads back
// exactly, file by file; and a later write of the known payload restores
// it with nothing else left behind.
func FuzzWrite(f *testing.F) {
	f.Add("a", []byte("one"), "dir/b", []byte("two"), uint32(0o600))
	f.Add("..data", []byte("x"), "a", []byte("y"), uint32(0o644))
	f.Add("a", []byte("x"), "a/b", []byte("y"), uint32(0o4755))
	f.Add("x/y/z", []byte{}, "x/y", []byte("file where a directory is"), uint32(0))
	f.Fuzz(func(t *testing.T, p1 string, d1 []byte, p2 string, d2 []byte, mode uint32) {
		dir := t.TempDir()
		known := map[string]File{"known": {Data: []byte("known content")}}
		if _, err := Write(dir, known, Options{}); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, dir, true)

		payload := map[string]File{p1: {Data: d1, Mode: os.FileMode(mode)}, p2: {Data: d2, Mode: os.FileMode(mode)}}
		if _, err := Write(dir, payload, Options{}); err != nil {
			if after := snapshot(t, dir, true); !maps.Equal(after, before) {
				t.Fatalf("a refused payload changed the volume:\nbefore %v\nafter  %v", before, after)
			}
		} else {
			for p, f := range payload {
				got, err := os.ReadFile(filepath.Join(dir, p))
				if err != nil || !bytes.Equal(got, f.Data) {
					t.Fatalf("%q reads back %q, %v; want %q", p, got, err, f.Data)
				}
			}
		}
		if _, err := Write(dir, known, Options{}); err != nil {
			t.Fatalf("restoring the known payload: %v", err)
		}
		var visible []string
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "..") {
				visible = append(visible, e.Name())
			}
		}
		got, err := os.ReadFile(filepath.Join(dir, "known"))
		if err != nil || string(got) != "known content" || len(visible) != 1 {
			t.Fatalf("after restoring: %v visible, known = %q, %v", visible, got, err)
		}
	})
}
