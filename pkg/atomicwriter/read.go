package atomicwriter

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxReadAttempts bounds how often Read starts again when a payload is
// retired while it reads; writes come minutes apart, so one retry is rare.
const maxReadAttempts = 20

// errUnstable reports that every Read attempt raced with a Write.
var errUnstable = errors.New("payload replaced during every read attempt")

// Read returns the payload that dir's ..data points to, keyed by
// slash-separated path, with each file's permission bits as Mode (so a file
// written with Mode 0 reads back as DefaultFileMode). It does not look at the
// top-level symlinks.
//
// The result is one generation, never a mix: Read resolves ..data, reads the
// whole payload directory, and checks that ..data still points to it; if a
// Write retired the directory in between it starts again. If dir was never
// written, the error wraps fs.ErrNotExist.
func Read(dir string) (map[string]File, error) {
	link := filepath.Join(dir, DataDir)
	for range maxReadAttempts {
		target, err := os.Readlink(link)
		if err != nil {
			return nil, fmt.Errorf("atomic read: %w", err)
		}
		if !isPlainName(target) {
			return nil, fmt.Errorf("atomic read: %s points outside %s: %q", link, dir, target)
		}
		files, readErr := readTree(filepath.Join(dir, target))
		if readErr != nil && !errors.Is(readErr, fs.ErrNotExist) {
			return nil, readErr
		}
		again, err := os.Readlink(link)
		if err != nil {
			return nil, fmt.Errorf("atomic read: %w", err)
		}
		if again == target {
			// Still current, so nothing was retired under us: the result
			// is complete, or the link dangles.
			return files, readErr
		}
	}
	return nil, fmt.Errorf("atomic read %s: %w", dir, errUnstable)
}

func readTree(root string) (map[string]File, error) {
	files := make(map[string]File)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("atomic read: %w", err)
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("atomic read: %s is neither a file nor a directory", path)
		}
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("atomic read: %w", err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("atomic read: %w", err)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return fmt.Errorf("atomic read: %w", err)
		}
		files[filepath.ToSlash(rel)] = File{Data: data, Mode: fi.Mode().Perm()}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}

// isPlainName reports whether a ..data target names an entry of the target
// directory itself.
func isPlainName(target string) bool {
	return target != "" && target != "." && target != ".." && !strings.Contains(target, "/")
}

// samePayload reports whether the payload directory root holds exactly p:
// the same directories, files, bytes, modes and (with owner) ownership. Any
// error counts as a difference: the caller then writes a fresh payload,
// which reports real problems.
func samePayload(root string, p *plan, owner *Owner) bool {
	fi, err := os.Lstat(root)
	if err != nil || !fi.IsDir() {
		return false
	}
	c := comparer{root: root, p: p, owner: owner}
	if !c.attrsOK(fi, DirMode) || !c.dir("") {
		return false
	}
	return c.nFiles == len(p.files) && c.nDirs == len(p.dirs)
}

type comparer struct {
	root   string
	p      *plan
	owner  *Owner
	buf    []byte
	nFiles int
	nDirs  int
}

func (c *comparer) dir(rel string) bool {
	d, err := os.Open(filepath.Join(c.root, rel))
	if err != nil {
		return false
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return false
	}
	for _, name := range names {
		r := name
		if rel != "" {
			r = rel + "/" + name
		}
		full := filepath.Join(c.root, r)
		fi, err := os.Lstat(full)
		if err != nil {
			return false
		}
		switch {
		case fi.IsDir():
			if _, ok := c.p.dirSet[r]; !ok || !c.attrsOK(fi, DirMode) || !c.dir(r) {
				return false
			}
			c.nDirs++
		case fi.Mode().IsRegular():
			f, ok := c.p.payload[r]
			if !ok || fi.Size() != int64(len(f.Data)) || !c.attrsOK(fi, fileMode(f)) || !c.sameBytes(full, f.Data) {
				return false
			}
			c.nFiles++
		default:
			return false
		}
	}
	return true
}

// attrsOK compares permission and special bits, and ownership if requested.
func (c *comparer) attrsOK(fi fs.FileInfo, perm os.FileMode) bool {
	const bits = os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky
	if fi.Mode()&bits != perm {
		return false
	}
	if c.owner == nil {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return (c.owner.UID < 0 || st.Uid == uint32(c.owner.UID)) &&
		(c.owner.GID < 0 || st.Gid == uint32(c.owner.GID))
}

// sameBytes reports whether the file at path holds exactly want. It uses raw
// system calls: this is the hot path of an unchanged re-publish, and an
// os.File would add a poller registration attempt and allocations per file.
func (c *comparer) sameBytes(path string, want []byte) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	// One byte more than expected, to notice a file that grew since Lstat.
	if cap(c.buf) < len(want)+1 {
		c.buf = make([]byte, len(want)+1)
	}
	buf := c.buf[:len(want)+1]
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		if m == 0 {
			break
		}
		n += m
	}
	return bytes.Equal(buf[:n], want)
}
