// Package volume publishes Key Vault objects into a volume: it fetches them
// with the pod's credential, mounts a tmpfs at the target path and writes the
// files there atomically. Both of kvdriver's front doors (CSI and FlexVolume)
// publish through it, so they share one implementation of steps 4-6 of the
// mount path. Volumes of other stores' providers are published through it
// too (PublishFrom), with the same tmpfs, writer and rollback.
package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
)

// Fetcher fetches and renders Key Vault objects (keyvault.Fetcher).
type Fetcher interface {
	Fetch(ctx context.Context, req keyvault.Request) (*keyvault.Result, error)
}

// CredentialSource builds the credential for an identity request
// (identity.Credentials).
type CredentialSource interface {
	Credential(req identity.Request) (azcore.TokenCredential, string, error)
}

// Options tune a Publisher.
type Options struct {
	// TmpfsSize caps each volume's tmpfs (the mount's size= option, e.g.
	// "32m"); default 32m, room for over a thousand 25 KB secrets.
	TmpfsSize string
}

// Publisher publishes and unpublishes volumes.
type Publisher struct {
	mounter mount.Interface
	fetcher Fetcher
	creds   CredentialSource
	opts    Options
	// writer remembers what each volume holds, so that a republish of
	// unchanged files reads none of them back.
	writer *atomicwriter.Writer
}

// NewPublisher returns a publisher that mounts with mounter (NewMounter on a
// node; mount.NewFakeMounter in unit tests).
func NewPublisher(mounter mount.Interface, fetcher Fetcher, creds CredentialSource, opts Options) *Publisher {
	if opts.TmpfsSize == "" {
		opts.TmpfsSize = "32m"
	}
	return &Publisher{mounter: mounter, fetcher: fetcher, creds: creds, opts: opts, writer: atomicwriter.NewWriter()}
}

// Request is one volume to publish.
type Request struct {
	// TargetPath is where the volume is mounted; it is created if missing.
	TargetPath string
	// VaultURL is the vault's URL, e.g. https://kv1.vault.azure.net/.
	VaultURL string
	Objects  []keyvault.Object
	Identity identity.Request
	// Owner, when set, owns the written files and directories (fsGroup).
	Owner *atomicwriter.Owner
	// RefuseWarnings fails the publish, before anything is mounted, when
	// the fetched objects show a mistake the upstream provider tolerates
	// (--strict-parameters).
	RefuseWarnings bool
}

// Result says what a publish did.
type Result struct {
	// Files are the files now in the volume, path -> content, for the
	// Secrets synced from them.
	Files map[string][]byte
	// Versions are the object versions now in the volume, one per file.
	Versions []keyvault.ObjectVersion
	// Warnings are tolerated mistakes the fetched objects showed.
	Warnings []keyvault.ObjectWarning
	// Mounted is true when this call mounted the tmpfs (a first publish).
	Mounted bool
	// Changed is true when the files changed (a first publish or a rotation).
	Changed bool
}

// Publish fetches every object, then mounts the tmpfs (unless it is already
// mounted: kubelet republishes about every minute to rotate) and writes the
// files. Objects are fetched before anything is mounted, so a failed fetch
// changes nothing; if mounting or writing fails, what this call mounted is
// unmounted and a target directory it created is removed.
func (p *Publisher) Publish(ctx context.Context, req Request) (*Result, error) {
	if req.TargetPath == "" {
		return nil, errors.New("target path is empty")
	}
	fetched := &keyvault.Result{}
	if len(req.Objects) > 0 { // an empty objects array mounts an empty volume, as upstream
		cred, credID, err := p.creds.Credential(req.Identity)
		if err != nil {
			return nil, err
		}
		fetched, err = p.fetchAll(ctx, req, cred, credID)
		if err != nil {
			return nil, err
		}
		var msgs []string
		for _, w := range fetched.Warnings {
			if !w.Missing { // a missing optional object is news, not a mistake
				msgs = append(msgs, w.Detail)
			}
		}
		if req.RefuseWarnings && len(msgs) > 0 {
			return nil, &keyvault.Error{Kind: keyvault.KindInvalid, Op: "fetch from vault", Vault: req.VaultURL,
				Err: fmt.Errorf("refused by --strict-parameters (the upstream provider would mount it): %s", strings.Join(msgs, "; "))}
		}
	}
	payload := make(map[string]atomicwriter.File, len(fetched.Files))
	res := &Result{Versions: fetched.Versions, Warnings: fetched.Warnings, Files: make(map[string][]byte, len(fetched.Files))}
	for _, f := range fetched.Files {
		payload[f.Path] = atomicwriter.File{Data: f.Content, Mode: f.Mode}
		res.Files[f.Path] = f.Content
	}

	created, err := p.ensureMount(req.TargetPath, req.Owner, res)
	if err != nil {
		return nil, err
	}
	res.Changed, err = p.writer.Write(req.TargetPath, payload, atomicwriter.Options{Owner: req.Owner})
	if err != nil {
		p.rollback(req.TargetPath, res.Mounted, created)
		return nil, fmt.Errorf("write files to %s: %w", req.TargetPath, err)
	}
	return res, nil
}

// FileSource produces a volume's files once its tmpfs is mounted at target
// (a provider plugin fetching them).
type FileSource func(ctx context.Context, target string) (map[string]atomicwriter.File, error)

// PublishFrom publishes the files another provider's plugin returns:
// it mounts the tmpfs first (unless it is mounted), because a plugin
// that writes into the target itself, as the oldest providers do, must
// write into the tmpfs and never onto the node's disk; then it calls
// source and writes what source returns. If source or the write fails,
// what this call mounted is unmounted and a target directory it created
// removed; on a republish the files already there are left as they were.
// owner, when not nil, owns the files (fsGroup), as with Request.Owner.
func (p *Publisher) PublishFrom(ctx context.Context, target string, owner *atomicwriter.Owner, source FileSource) (*Result, error) {
	if target == "" {
		return nil, errors.New("target path is empty")
	}
	res := &Result{}
	created, err := p.ensureMount(target, owner, res)
	if err != nil {
		return nil, err
	}
	files, err := source(ctx, target)
	if err != nil {
		p.rollback(target, res.Mounted, created)
		return nil, err
	}
	res.Files = make(map[string][]byte, len(files))
	for path, f := range files {
		res.Files[path] = f.Data
	}
	res.Changed, err = p.writer.Write(target, files, atomicwriter.Options{Owner: owner})
	if err != nil {
		p.rollback(target, res.Mounted, created)
		return nil, fmt.Errorf("write files to %s: %w", target, err)
	}
	return res, nil
}

// ensureMount creates the target directory if needed and mounts a tmpfs on
// it unless one is there; with an owner, the tmpfs root belongs to the
// owner's group too, so the volume is the fsGroup's from its root down.
// It reports whether it created the directory.
func (p *Publisher) ensureMount(target string, owner *atomicwriter.Owner, res *Result) (created bool, err error) {
	switch _, err := os.Stat(target); {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(target, 0o750); err != nil {
			return false, fmt.Errorf("create target path: %w", err)
		}
		created = true
	case err != nil:
		return false, fmt.Errorf("target path: %w", err)
	}
	notMnt, err := p.mounter.IsLikelyNotMountPoint(target)
	if err != nil {
		p.rollback(target, false, created)
		return false, fmt.Errorf("check mount point %s: %w", target, err)
	}
	if !notMnt {
		return created, nil
	}
	opts := []string{"nosuid", "nodev", "noexec", "mode=0755", "size=" + p.opts.TmpfsSize}
	if owner != nil && owner.GID >= 0 {
		opts = append(opts, "gid="+strconv.Itoa(owner.GID))
	}
	if err := p.mounter.Mount("tmpfs", target, "tmpfs", opts); err != nil {
		p.rollback(target, false, created)
		return false, err
	}
	res.Mounted = true
	return created, nil
}

// rollback undoes what a failed publish did to target.
func (p *Publisher) rollback(target string, mounted, created bool) {
	p.writer.Forget(target)
	if mounted {
		if err := p.mounter.Unmount(target); err != nil {
			klog.ErrorS(err, "rollback: unmount failed", "target", target)
			return // never remove a directory that may still be a mount
		}
	}
	if created {
		if err := os.Remove(target); err != nil {
			klog.ErrorS(err, "rollback: remove target failed", "target", target)
		}
	}
}

// Unpublish unmounts target if it is mounted and removes it. It is
// idempotent, and needs no state from the publish: it works for volumes
// published before a restart.
func (p *Publisher) Unpublish(target string) error {
	p.writer.Forget(target)
	if err := mount.CleanupMountPoint(target, p.mounter, false); err != nil {
		return fmt.Errorf("unpublish %s: %w", target, err)
	}
	return nil
}

// fetchAll fetches the request's objects, one Fetch per vault (an object
// may name its own vault; the rest are the request's), in parallel, with
// the identity's credential for all of them.
func (p *Publisher) fetchAll(ctx context.Context, req Request, cred azcore.TokenCredential, credID string) (*keyvault.Result, error) {
	type group struct {
		url     string
		objects []keyvault.Object
		index   []int // of each object in req.Objects
	}
	var groups []*group
	byURL := map[string]*group{}
	for i, o := range req.Objects {
		url := o.VaultURL
		if url == "" {
			url = req.VaultURL
		}
		g := byURL[url]
		if g == nil {
			g = &group{url: url}
			byURL[url] = g
			groups = append(groups, g)
		}
		g.objects, g.index = append(g.objects, o), append(g.index, i)
	}
	if len(groups) == 1 {
		return p.fetcher.Fetch(ctx, keyvault.Request{VaultURL: groups[0].url, Credential: cred, IdentityKey: credID, Objects: req.Objects})
	}
	results := make([]*keyvault.Result, len(groups))
	eg, ectx := errgroup.WithContext(ctx)
	for i, g := range groups {
		eg.Go(func() error {
			r, err := p.fetcher.Fetch(ectx, keyvault.Request{VaultURL: g.url, Credential: cred, IdentityKey: credID, Objects: g.objects})
			results[i] = r
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	all := &keyvault.Result{}
	for i, r := range results {
		all.Files = append(all.Files, r.Files...)
		all.Versions = append(all.Versions, r.Versions...)
		for _, w := range r.Warnings {
			w.Object = groups[i].index[w.Object]
			all.Warnings = append(all.Warnings, w)
		}
	}
	return all, nil
}
