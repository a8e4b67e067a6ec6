package atomicwriter

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
)

// maxNameLen is the longest path segment Linux file systems accept (NAME_MAX).
const maxNameLen = 255

// plan is a validated payload and the directory structure it needs.
type plan struct {
	payload map[string]File
	// files are the payload paths, sorted.
	files []string
	// dirs are the directories inside the payload, sorted, so that a parent
	// comes before its children.
	dirs   []string
	dirSet map[string]struct{}
	// top are the top-level names (first path segments), sorted.
	top    []string
	topSet map[string]struct{}
}

// newPlan checks every path and mode of payload; it touches no file.
func newPlan(payload map[string]File) (*plan, error) {
	p := &plan{
		payload: payload,
		files:   make([]string, 0, len(payload)),
		dirSet:  make(map[string]struct{}),
		topSet:  make(map[string]struct{}, len(payload)),
	}
	for rel, f := range payload {
		if why := checkPath(rel); why != "" {
			return nil, fmt.Errorf("%w: path %q: %s", ErrInvalidPayload, rel, why)
		}
		if f.Mode&^os.ModePerm != 0 {
			return nil, fmt.Errorf("%w: path %q: mode %v has bits other than permissions", ErrInvalidPayload, rel, f.Mode)
		}
		p.files = append(p.files, rel)
		top, _, _ := strings.Cut(rel, "/")
		if _, ok := p.topSet[top]; !ok {
			p.topSet[top] = struct{}{}
			p.top = append(p.top, top)
		}
		for i := range len(rel) {
			if rel[i] != '/' {
				continue
			}
			parent := rel[:i]
			if _, ok := payload[parent]; ok {
				return nil, fmt.Errorf("%w: path %q: %q is both a file and a directory", ErrInvalidPayload, rel, parent)
			}
			if _, ok := p.dirSet[parent]; !ok {
				p.dirSet[parent] = struct{}{}
				p.dirs = append(p.dirs, parent)
			}
		}
	}
	sort.Strings(p.files)
	sort.Strings(p.dirs)
	sort.Strings(p.top)
	return p, nil
}

// checkPath says what is wrong with a payload path, or returns "".
func checkPath(rel string) string {
	switch {
	case rel == "":
		return "empty"
	case strings.IndexByte(rel, 0) >= 0:
		return "contains NUL"
	case strings.HasPrefix(rel, "/"):
		return "absolute"
	case strings.HasPrefix(rel, ".."):
		// Covers "..", "../x" and the names reserved for the layout
		// (..data, ..data_tmp, payload directories).
		return "starts with '..', which is reserved"
	case rel == "." || path.Clean(rel) != rel:
		return "not clean (a '.', '..' or empty segment, or a trailing slash)"
	}
	for seg := range strings.SplitSeq(rel, "/") {
		if seg == ".." {
			return "contains a '..' segment"
		}
		if len(seg) > maxNameLen {
			return fmt.Sprintf("segment longer than %d bytes", maxNameLen)
		}
	}
	return ""
}
