//go:build linux

package atomicwriter

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// benchPayload is five 2 KiB files, one of them nested, like a certificate,
// its key, a chain and two secrets.
func benchPayload(fill byte) map[string]File {
	data := func(i byte) []byte { return bytes.Repeat([]byte{fill + i}, 2<<10) }
	return map[string]File{
		"tls.crt":       {Data: data(0)},
		"tls.key":       {Data: data(1), Mode: 0o600},
		"ca.pem":        {Data: data(2)},
		"secrets/db":    {Data: data(3), Mode: 0o440},
		"secrets/token": {Data: data(4), Mode: 0o440},
	}
}

// onEachFS runs bench on a fresh tmpfs (root only) and on the disk that
// holds the temporary directory.
func onEachFS(b *testing.B, bench func(b *testing.B, dir string)) {
	b.Run("tmpfs", func(b *testing.B) { bench(b, mountTmpfs(b, "size=64m")) })
	b.Run("disk", func(b *testing.B) { bench(b, b.TempDir()) })
}

// BenchmarkWriteUnchanged is kubelet's periodic re-publish of an unchanged
// payload: compare, write nothing.
func BenchmarkWriteUnchanged(b *testing.B) {
	onEachFS(b, func(b *testing.B, dir string) {
		p := benchPayload('a')
		if _, err := Write(dir, p, Options{}); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			changed, err := Write(dir, p, Options{})
			if err != nil || changed {
				b.Fatalf("changed=%v err=%v", changed, err)
			}
		}
	})
}

// BenchmarkWriterUnchanged is BenchmarkWriteUnchanged through a Writer that
// trusts its snapshot of the directory: stat calls instead of reading the
// files back. Compare the two in one run.
func BenchmarkWriterUnchanged(b *testing.B) {
	onEachFS(b, func(b *testing.B, dir string) {
		p := benchPayload('a')
		w := NewWriter()
		if _, err := w.Write(dir, p, Options{}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(snapshotMargin + 50*time.Millisecond)
		if _, err := w.Write(dir, p, Options{}); err != nil || w.Snapshots() != 1 {
			b.Fatalf("no snapshot: err=%v", err)
		}
		b.ReportAllocs()
		for b.Loop() {
			changed, err := w.Write(dir, p, Options{})
			if err != nil || changed {
				b.Fatalf("changed=%v err=%v", changed, err)
			}
		}
	})
}

// BenchmarkWrite5Files publishes a new payload of five files every time.
func BenchmarkWrite5Files(b *testing.B) {
	onEachFS(b, func(b *testing.B, dir string) {
		payloads := []map[string]File{benchPayload('a'), benchPayload('n')}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			changed, err := Write(dir, payloads[i%2], Options{})
			if err != nil || !changed {
				b.Fatalf("changed=%v err=%v", changed, err)
			}
		}
	})
}

// BenchmarkFsync measures one fsync of a freshly written 2 KiB file, the
// cost Write pays per file and directory when it publishes.
func BenchmarkFsync(b *testing.B) {
	onEachFS(b, func(b *testing.B, dir string) {
		f, err := os.Create(filepath.Join(dir, "f"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		buf := bytes.Repeat([]byte{'x'}, 2<<10)
		for b.Loop() {
			if _, err := f.WriteAt(buf, 0); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
