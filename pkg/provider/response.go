package provider

import (
	"fmt"
	"os"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
)

// MaxFiles is the most files kvdriver writes for one forwarded volume. The
// upstream driver has no limit but its 4 MiB response cap; a provider that
// answers with more files than any class names is broken or hostile, and
// each file costs an inode of the node's memory.
const MaxFiles = 4096

// Result is a plugin's answer, checked and ready for the atomic writer.
type Result struct {
	// Files are the volume's files by relative path.
	Files map[string]atomicwriter.File
	// Versions are the objects the plugin fetched, in its order, one per
	// ID (a later duplicate wins, as upstream keeps the last).
	Versions []keyvault.ObjectVersion
}

// CheckResponse turns a Mount answer into files, refusing (KindRefused or
// KindInvalidResponse, nothing written) what upstream refuses and what
// cannot be written safely: an error code, no object versions, a path that
// is absolute, has a ".." segment, starts with "..", is not clean or has
// control characters (the rules of the Azure path), a mode outside 0-0777,
// more than MaxFiles files. A mode of 0, the protocol's "unset", gets
// DefaultFileMode, the permission the request asked for. Two files at one
// path: the later wins, as upstream's writer keeps it.
func CheckResponse(name string, resp *v1alpha1.MountResponse) (*Result, error) {
	bad := func(format string, args ...any) error {
		return &Error{Kind: KindInvalidResponse, Provider: name, Err: fmt.Errorf(format, args...)}
	}
	if code := resp.GetError().GetCode(); code != "" {
		return nil, &Error{Kind: KindRefused, Provider: name, Code: code,
			Err: fmt.Errorf("mount failed with provider error code %q", code)}
	}
	if len(resp.GetObjectVersion()) == 0 {
		return nil, bad("invalid response: no object versions (the upstream driver refuses this too)")
	}
	if n := len(resp.GetFiles()); n > MaxFiles {
		return nil, bad("invalid response: %d files, more than the %d kvdriver writes for one volume; nothing written", n, MaxFiles)
	}
	res := &Result{Files: make(map[string]atomicwriter.File, len(resp.GetFiles()))}
	for i, f := range resp.GetFiles() {
		if why := keyvault.CheckFileName(f.GetPath()); why != "" {
			return nil, bad("invalid response: files[%d].path: %s; nothing written", i, why)
		}
		mode := f.GetMode()
		if mode < 0 || mode > 0o777 {
			return nil, bad("invalid response: files[%d] (%q): mode %d is not a permission (0 to 511, octal 0777); nothing written", i, f.GetPath(), mode)
		}
		perm := os.FileMode(mode)
		if perm == 0 {
			perm = DefaultFileMode
		}
		res.Files[f.GetPath()] = atomicwriter.File{Data: f.GetContents(), Mode: perm}
	}
	index := map[string]int{}
	for _, v := range resp.GetObjectVersion() {
		if i, ok := index[v.GetId()]; ok {
			res.Versions[i].Version = v.GetVersion()
			continue
		}
		index[v.GetId()] = len(res.Versions)
		res.Versions = append(res.Versions, keyvault.ObjectVersion{ID: v.GetId(), Version: v.GetVersion()})
	}
	return res, nil
}
