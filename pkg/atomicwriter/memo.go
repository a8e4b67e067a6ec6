package atomicwriter

import (
	"hash/maphash"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A Writer is Write with a memory of what it left in each directory, so that
// writing an unchanged payload again costs a few stat calls instead of
// reading every published file back.
//
// When a Write finds the payload already in place (it compared every file)
// and changes nothing or only repairs top-level symlinks, the Writer keeps a
// snapshot of the directory: a keyed hash of the payload's paths, modes,
// owner and bytes, and the inode metadata (device, inode, size, mode, owner,
// link count, mtime and ctime) of the target directory, the payload
// directory, its subdirectories and every file. The next Write of the same
// directory first hashes the new payload; if it matches, it re-stats those
// inodes under the directory's lock, and if every one is unchanged the
// directory is known to hold exactly the payload, and Write returns without
// reading or writing a file. Anything else (another payload, a snapshot the
// Writer does not have, any inode that differs) takes Write's full path.
//
// Why unchanged metadata means unchanged contents: every way of changing a
// file's bytes, mode or owner, or of adding, removing, renaming or
// replacing an entry in a directory, sets the inode's ctime to the current
// time, and no system call sets ctime to a chosen value. The kernel stamps
// ctime from a coarse clock, though, so a change made within one clock tick
// of the snapshot could leave ctime as the snapshot saw it. A snapshot is
// therefore kept only when every ctime in it is older than [snapshotMargin]
// at the time it is taken (git's "racily clean" rule), and a Write that
// publishes takes none: the first Write after a publish still compares the
// bytes, and takes the snapshot that later Writes trust. kubelet
// republishes a volume about once a minute, so from the second republish
// on, an unchanged volume costs stat calls only.
//
// Two things stay outside what the metadata can show, as for any cache of
// file metadata: a writer that mapped a published file shared and writable
// before the snapshot, and someone setting the system clock back; both need
// root on the node, where kvdriver's tmpfs lives.
//
// The bytes are hashed with hash/maphash under a seed chosen at random when
// the Writer is made, so no one who does not know the seed can choose
// contents that collide; a Writer's memory dies with the process, and a
// restarted kvdriver compares bytes once per volume again.
//
// A Writer is safe for concurrent use. It remembers at most maxSnapshots
// directories; call Forget when a directory is gone.
type Writer struct {
	seed maphash.Seed
	max  int

	mu    sync.Mutex
	snaps map[string]*dirMemo
}

// snapshotMargin is how much older than the snapshot every ctime in it
// must be. Inode timestamps come from the kernel's coarse clock, which
// lags the real one by at most a tick (10 ms at HZ=100); this leaves ample
// room.
const snapshotMargin = 100 * time.Millisecond

// maxSnapshots bounds a Writer's memory: kvdriver keeps one snapshot per
// mounted volume.
const maxSnapshots = 10_000

// NewWriter returns a Writer with no snapshots.
func NewWriter() *Writer {
	return &Writer{seed: maphash.MakeSeed(), max: maxSnapshots, snaps: make(map[string]*dirMemo)}
}

// Forget drops the snapshot of dir, if there is one.
func (w *Writer) Forget(dir string) {
	w.mu.Lock()
	delete(w.snaps, filepath.Clean(dir))
	w.mu.Unlock()
}

// Snapshots reports how many directories the Writer remembers.
func (w *Writer) Snapshots() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.snaps)
}

// Write is the package's Write, with the shortcut described on Writer.
func (w *Writer) Write(dir string, payload map[string]File, opts Options) (changed bool, err error) {
	return writeWith(dir, payload, opts, w)
}

// dirMemo is what a Writer remembers of one directory.
type dirMemo struct {
	// sum identifies the payload: paths, modes, owner and bytes.
	sum   uint64
	files int
	// inodes are the target directory first, then the payload directory,
	// its subdirectories (p.dirs order) and files (p.files order); paths
	// are their full paths (the target directory's is unused: it is
	// compared through the open descriptor).
	paths  []string
	inodes []inode
}

// inode is the metadata a snapshot compares.
type inode struct {
	dev, ino     uint64
	size         int64
	mode         uint32
	uid, gid     uint32
	nlink        uint64
	mtime, ctime unix.Timespec
}

func inodeOf(st *unix.Stat_t) inode {
	return inode{dev: st.Dev, ino: st.Ino, size: st.Size, mode: st.Mode, uid: st.Uid, gid: st.Gid,
		nlink: uint64(st.Nlink), mtime: st.Mtim, ctime: st.Ctim}
}

// payloadSum hashes everything Write compares: each file's path, mode and
// bytes in path order, and the owner.
func (w *Writer) payloadSum(p *plan, owner *Owner) uint64 {
	var h maphash.Hash
	h.SetSeed(w.seed)
	var buf [8]byte
	putInt := func(v int64) {
		for i := range buf {
			buf[i] = byte(v >> (8 * i))
		}
		_, _ = h.Write(buf[:])
	}
	if owner != nil {
		putInt(1)
		putInt(int64(owner.UID))
		putInt(int64(owner.GID))
	} else {
		putInt(0)
	}
	for _, rel := range p.files {
		f := p.payload[rel]
		putInt(int64(len(rel)))
		_, _ = h.WriteString(rel)
		putInt(int64(fileMode(f)))
		putInt(int64(len(f.Data)))
		_, _ = h.Write(f.Data)
	}
	return h.Sum64()
}

// unchanged reports whether dir, opened as d and locked, has a snapshot of
// exactly p (with owner) that it still matches.
func (w *Writer) unchanged(dir string, d *os.File, p *plan, owner *Owner) bool {
	w.mu.Lock()
	s := w.snaps[dir]
	w.mu.Unlock()
	if s == nil || s.files != len(p.files) || s.sum != w.payloadSum(p, owner) {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &st); err != nil || inodeOf(&st) != s.inodes[0] {
		return false
	}
	for i := 1; i < len(s.paths); i++ {
		if err := unix.Lstat(s.paths[i], &st); err != nil || inodeOf(&st) != s.inodes[i] {
			return false
		}
	}
	return true
}

// remember takes a snapshot of dir, opened as d and locked, which now
// holds p in payloadDir. It keeps it only if every inode is old enough to
// be trusted; otherwise it drops any older snapshot of dir.
func (w *Writer) remember(dir string, d *os.File, p *plan, owner *Owner, payloadDir string) {
	s := &dirMemo{sum: w.payloadSum(p, owner), files: len(p.files)}
	n := 2 + len(p.dirs) + len(p.files)
	s.paths = make([]string, 0, n)
	s.inodes = make([]inode, 0, n)
	taken := time.Now()
	oldEnough := func(st *unix.Stat_t) bool {
		return taken.Sub(time.Unix(st.Ctim.Unix())) > snapshotMargin
	}
	ok := func() bool {
		var st unix.Stat_t
		if err := unix.Fstat(int(d.Fd()), &st); err != nil || !oldEnough(&st) {
			return false
		}
		s.paths = append(s.paths, dir)
		s.inodes = append(s.inodes, inodeOf(&st))
		add := func(rel string) bool {
			path := filepath.Join(dir, rel)
			if err := unix.Lstat(path, &st); err != nil || !oldEnough(&st) {
				return false
			}
			s.paths = append(s.paths, path)
			s.inodes = append(s.inodes, inodeOf(&st))
			return true
		}
		if !add(payloadDir) {
			return false
		}
		for _, rel := range p.dirs {
			if !add(payloadDir + "/" + rel) {
				return false
			}
		}
		for _, rel := range p.files {
			if !add(payloadDir + "/" + rel) {
				return false
			}
		}
		return true
	}()

	w.mu.Lock()
	defer w.mu.Unlock()
	if !ok {
		delete(w.snaps, dir)
		return
	}
	if _, exists := w.snaps[dir]; !exists && len(w.snaps) >= w.max {
		for k := range w.snaps { // full: drop one at random
			delete(w.snaps, k)
			break
		}
	}
	w.snaps[dir] = s
}
