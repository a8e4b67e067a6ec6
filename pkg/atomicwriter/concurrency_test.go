package atomicwriter

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// genNames are the files of a generation payload, with their sizes: big
// enough that reading one takes a while, so a switch can land mid-read.
var genNames = []struct {
	name string
	size int
}{
	{"a", 16},
	{"b", 4 << 10},
	{"nested/c", 64 << 10},
	{"nested/deep/d", 1 << 10},
}

// genContent is the contents of file name in generation gen: a header naming
// both, repeated to size.
func genContent(gen int, name string, size int) []byte {
	header := fmt.Sprintf("gen=%08d file=%s;", gen, name)
	return bytes.Repeat([]byte(header), size/len(header)+1)[:size]
}

func genPayload(gen int) map[string]File {
	m := make(map[string]File, len(genNames))
	for _, n := range genNames {
		m[n.name] = File{Data: genContent(gen, n.name, n.size), Mode: 0o640}
	}
	return m
}

// genOf returns the generation of a file's contents, or an error if the
// contents are not exactly one generation's file (a torn or foreign file).
func genOf(name string, size int, data []byte) (int, error) {
	var gen int
	if _, err := fmt.Sscanf(string(data), "gen=%08d", &gen); err != nil {
		return 0, fmt.Errorf("%s: no generation header", name)
	}
	if !bytes.Equal(data, genContent(gen, name, size)) {
		return 0, fmt.Errorf("%s: contents are not those of generation %d (%d bytes)", name, gen, len(data))
	}
	return gen, nil
}

// readerStats counts what one kind of reader observed.
type readerStats struct {
	consistent int // complete sets of one generation
	retired    int // attempts abandoned because the generation was deleted
	mixed      int // sets mixing generations (only allowed for per-symlink reads)
}

// runConcurrentReaders flips dir between generations while three kinds of
// readers read it, and checks each reader against the guarantee the layout
// gives it (see the package documentation).
func runConcurrentReaders(t *testing.T, dir string, writes int) {
	require.True(t, write(t, dir, genPayload(0), Options{}))

	var stop atomic.Bool
	var wg sync.WaitGroup
	reader := func(name string, once func() (gens []int, retired bool, err error), mixOK bool) *readerStats {
		st := &readerStats{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				// One more round after the writer stopped, which cannot race.
				last := stop.Load()
				gens, retired, err := once()
				switch {
				case err != nil:
					t.Errorf("%s reader: %v", name, err)
					return
				case retired:
					st.retired++
				case allEqual(gens):
					st.consistent++
				case mixOK:
					st.mixed++
				default:
					t.Errorf("%s reader: mixed set of generations %v", name, gens)
					return
				}
				if last {
					return
				}
			}
		}()
		return st
	}

	// 1. Resolve ..data once, then open known names inside the resolved
	// directory: one generation, or ENOENT when it was retired.
	resolved := reader("resolve-once", func() ([]int, bool, error) {
		target, err := os.Readlink(filepath.Join(dir, DataDir))
		if err != nil {
			return nil, false, err
		}
		gens := make([]int, 0, len(genNames))
		for _, n := range genNames {
			data, err := os.ReadFile(filepath.Join(dir, target, n.name))
			if errors.Is(err, fs.ErrNotExist) {
				return nil, true, nil
			}
			if err != nil {
				return nil, false, err
			}
			gen, err := genOf(n.name, n.size, data)
			if err != nil {
				return nil, false, err
			}
			gens = append(gens, gen)
		}
		return gens, false, nil
	}, false)

	// 2. Read: lists the directory and re-checks ..data; always one complete
	// generation.
	viaRead := reader("Read", func() ([]int, bool, error) {
		files, err := Read(dir)
		if errors.Is(err, errUnstable) {
			return nil, true, nil
		}
		if err != nil {
			return nil, false, err
		}
		if len(files) != len(genNames) {
			return nil, false, fmt.Errorf("incomplete set: %d files", len(files))
		}
		gens := make([]int, 0, len(genNames))
		for _, n := range genNames {
			f, ok := files[n.name]
			if !ok {
				return nil, false, fmt.Errorf("%s missing", n.name)
			}
			if f.Mode != 0o640 {
				return nil, false, fmt.Errorf("%s: mode %v", n.name, f.Mode)
			}
			gen, err := genOf(n.name, n.size, f.Data)
			if err != nil {
				return nil, false, err
			}
			gens = append(gens, gen)
		}
		return gens, false, nil
	}, false)

	// 3. Open every file through its top-level symlink, as most applications
	// do: every file is whole, but the set may mix generations.
	viaSymlinks := reader("symlinks", func() ([]int, bool, error) {
		gens := make([]int, 0, len(genNames))
		for _, n := range genNames {
			data, err := os.ReadFile(filepath.Join(dir, n.name))
			if errors.Is(err, fs.ErrNotExist) {
				// The path passes through ..data: the generation it
				// resolved to can be removed before the lookup of the
				// file in it ends (on a loaded machine, as here under
				// -race). The open then fails whole, and the reader
				// retries; it is never handed a torn file. kubelet's
				// writer has the same window.
				return nil, true, nil
			}
			if err != nil {
				return nil, false, err
			}
			gen, err := genOf(n.name, n.size, data)
			if err != nil {
				return nil, false, err
			}
			gens = append(gens, gen)
		}
		return gens, false, nil
	}, true)

	for gen := 1; gen <= writes; gen++ {
		changed, err := Write(dir, genPayload(gen), Options{})
		if !assert.NoError(t, err) || !assert.True(t, changed) {
			break
		}
	}
	stop.Store(true)
	wg.Wait()

	for name, st := range map[string]*readerStats{"resolve-once": resolved, "Read": viaRead, "symlinks": viaSymlinks} {
		t.Logf("%-12s reader: %d consistent sets, %d retired under it, %d mixed", name, st.consistent, st.retired, st.mixed)
		assert.Positive(t, st.consistent, name)
	}
	assert.Len(t, payloadDirs(t, dir), 1, "old payload directories removed")
	assertPayload(t, dir, genPayload(writes))
}

func allEqual(gens []int) bool {
	for _, g := range gens {
		if g != gens[0] {
			return false
		}
	}
	return true
}

func TestConcurrentReadersSeeOneGeneration(t *testing.T) {
	writes := 100
	if testing.Short() {
		writes = 30
	}
	runConcurrentReaders(t, t.TempDir(), writes)
}

// TestConcurrentWriters checks that Write calls racing on one directory (they
// serialise on its flock) leave a clean, consistent state.
func TestConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	const writers, rounds = 4, 15
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				p := map[string]File{
					"shared":                  file("w"+strconv.Itoa(w)+" r"+strconv.Itoa(r), 0),
					"w" + strconv.Itoa(w):     file("mine", 0o600),
					"dir/w" + strconv.Itoa(w): file("nested", 0),
				}
				if _, err := Write(dir, p, Options{}); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()

	got, err := Read(dir)
	require.NoError(t, err)
	require.Len(t, got, 3)
	var last string
	for name := range got {
		if name != "shared" && !strings.HasPrefix(name, "dir/") {
			last = name
		}
	}
	require.NotEmpty(t, last)
	assert.ElementsMatch(t, []string{DataDir, dataTarget(t, dir), "shared", last, "dir"}, topLevel(t, dir),
		"one payload directory, no ..data_tmp, only the last writer's symlinks")
	assertVisible(t, dir, got)
}
