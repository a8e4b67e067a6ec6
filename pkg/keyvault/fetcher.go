package keyvault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"
)

// Defaults of Options.
const (
	DefaultMaxParallel = 8
	DefaultMaxClients  = 256
)

// DefaultRetryOptions is the retry policy Fetch uses when
// Options.ClientOptions.Retry is left zero. The SDK's own default (3 retries, delays growing from 0.8 s
// to 60 s, any Retry-After honoured) suits a batch job, not a mount: kubelet
// calls NodePublishVolume again anyway, and a pod waiting a minute on a
// throttled vault is worse than a quick ResourceExhausted. So: at most 2
// retries, 200 ms then 400 ms apart (capped at 2 s), a Retry-After longer
// than 2 s ends the call at once (the SDK does not retry when Retry-After
// exceeds MaxRetryDelay), and one try may take 15 s so that a hung
// connection leaves room for a retry. The caller's context bounds it all.
func DefaultRetryOptions() policy.RetryOptions {
	return policy.RetryOptions{
		MaxRetries:    2,
		TryTimeout:    15 * time.Second,
		RetryDelay:    200 * time.Millisecond,
		MaxRetryDelay: 2 * time.Second,
	}
}

// Options configure a Fetcher.
type Options struct {
	// ClientOptions are passed to every SDK client. Leave Transport nil in
	// production (the default client honours HTTPS_PROXY and the system
	// roots); set it to an *http.Client with a proxy and extra root CAs to go
	// through a corporate proxy, or the project's Azure emulator. Retry zero
	// means DefaultRetryOptions.
	ClientOptions azcore.ClientOptions
	// MaxParallel bounds the requests one Fetch has in flight; default
	// DefaultMaxParallel.
	MaxParallel int
	// MaxClients bounds the cached (vault, identity) client sets, least
	// recently used dropped first; default DefaultMaxClients.
	MaxClients int
	// VaultBudget is the most requests per 10 s this process sends one
	// vault; default DefaultVaultBudget (Key Vault allows 4,000 GETs per
	// 10 s per vault, for all its clients together).
	VaultBudget int
	// CacheTTL keeps each fetched object, per identity, for this long, so
	// that every pod of the node that reads it with the same identity within
	// the TTL shares one GET. It bounds how late a rotated secret appears
	// (kubelet republishes about every minute). Zero disables the cache.
	CacheTTL time.Duration
	// MaxCachedObjects bounds the object cache's entries; default
	// DefaultMaxCachedObjects.
	MaxCachedObjects int
	// MaxCachedBytes bounds the bytes the object cache holds: objects'
	// content and names plus a fixed estimate per entry. An object larger
	// than this is fetched for every mount. Default DefaultMaxCachedBytes.
	MaxCachedBytes int64
	// Metrics, when not nil, counts requests, throttling and cache use
	// (NewMetrics).
	Metrics *Metrics
}

// Defaults of the object cache's bounds. 16 MiB holds every object of a
// busy node (110 pods, the kubelet's default, mounting ten objects of a
// few kilobytes each are about 4 MB) and still over 600 objects of Key
// Vault's largest size, while staying a small part of the memory limit
// the chart gives kvdriver (256 MiB). The entry bound binds first when
// entries average under 1.7 KB, overhead included; 10,000 is still far
// more objects than a node mounts.
const (
	DefaultMaxCachedObjects       = 10000
	DefaultMaxCachedBytes   int64 = 16 << 20
)

// Fetcher fetches Key Vault objects and converts them into files. It keeps
// the SDK clients of each (vault, identity) it has served, so a later Fetch
// for the same pair skips the 401 challenge and reuses the bearer token. It
// is safe for concurrent use.
type Fetcher struct {
	parallel int
	clients  *clientCache
	objects  *objectCache // nil when Options.CacheTTL is zero
	metrics  *Metrics
}

// NewFetcher returns a Fetcher.
func NewFetcher(opts Options) *Fetcher {
	if retryUnset(opts.ClientOptions.Retry) {
		opts.ClientOptions.Retry = DefaultRetryOptions()
	}
	if opts.MaxParallel <= 0 {
		opts.MaxParallel = DefaultMaxParallel
	}
	if opts.MaxClients <= 0 {
		opts.MaxClients = DefaultMaxClients
	}
	// Every request, every retry, passes its vault's gate, then (closer to
	// the wire) the counter of what is really sent.
	gates := newVaultGates(opts.VaultBudget)
	gates.metrics = opts.Metrics
	opts.ClientOptions.PerRetryPolicies = append(slices.Clone(opts.ClientOptions.PerRetryPolicies), gates)
	if opts.Metrics != nil {
		opts.ClientOptions.PerRetryPolicies = append(opts.ClientOptions.PerRetryPolicies, requestCounter{opts.Metrics})
	}
	f := &Fetcher{parallel: opts.MaxParallel, clients: newClientCache(opts.ClientOptions, opts.MaxClients), metrics: opts.Metrics}
	f.clients.metrics = opts.Metrics
	if opts.CacheTTL > 0 {
		if opts.MaxCachedObjects <= 0 {
			opts.MaxCachedObjects = DefaultMaxCachedObjects
		}
		if opts.MaxCachedBytes <= 0 {
			opts.MaxCachedBytes = DefaultMaxCachedBytes
		}
		f.objects = newObjectCache(opts.CacheTTL, opts.MaxCachedObjects, opts.MaxCachedBytes)
		f.objects.metrics = opts.Metrics
	}
	return f
}

// CacheStats returns the object cache's hits and misses.
func (f *Fetcher) CacheStats() (hits, misses uint64) {
	if f.objects == nil {
		return 0, 0
	}
	return f.objects.hits.Load(), f.objects.misses.Load()
}

// cacheKey is the object cache's key for a GET (or, with list, a versions
// listing) of obj in s; ok is false when results must not be cached.
func (f *Fetcher) cacheKey(s *session, obj *Object, version string, list bool) (objectKey, bool) {
	if f.objects == nil || s.key.identity == "" {
		return objectKey{}, false
	}
	k := objectKey{client: s.key, list: list, typ: obj.Type, name: strings.ToLower(obj.Name)}
	if list {
		k.history, k.version = obj.VersionHistory, strings.ToLower(obj.Version)
	} else {
		k.version, k.format, k.encoding = version, obj.Format, obj.Encoding
	}
	return k, true
}

// get fetches one version of obj through the object cache; it returns the
// content, the version fetched and a tolerated mistake in obj.
func (f *Fetcher) get(ctx context.Context, s *session, obj *Object, version string) ([]byte, string, string, error) {
	key, ok := f.cacheKey(s, obj, version, false)
	if !ok {
		return s.get(ctx, obj, version)
	}
	e, err := f.objects.get(ctx, key, func(fctx context.Context) (*cachedObject, error) {
		content, got, warning, err := s.get(fctx, obj, version)
		if err != nil {
			return nil, err
		}
		return &cachedObject{content: content, version: got, warning: warning}, nil
	})
	if err != nil {
		return nil, "", "", f.waitError(s, obj, version, err)
	}
	return e.content, e.version, e.warning, nil
}

// listVersions lists obj's history through the object cache.
func (f *Fetcher) listVersions(ctx context.Context, s *session, obj *Object) ([]string, error) {
	key, ok := f.cacheKey(s, obj, "", true)
	if !ok {
		return s.listVersions(ctx, obj)
	}
	e, err := f.objects.get(ctx, key, func(fctx context.Context) (*cachedObject, error) {
		vs, err := s.listVersions(fctx, obj)
		if err != nil {
			return nil, err
		}
		return &cachedObject{versions: vs}, nil
	})
	if err != nil {
		return nil, f.waitError(s, obj, "", err)
	}
	return e.versions, nil
}

// waitError wraps the error of a caller that stopped waiting for a shared
// fetch; a fetch's own errors are already wrapped.
func (f *Fetcher) waitError(s *session, obj *Object, version string, err error) error {
	var kerr *Error
	if errors.As(err, &kerr) {
		return err
	}
	return s.fail("fetch", obj, version, KindUnknown, err)
}

func retryUnset(r policy.RetryOptions) bool {
	return r.MaxRetries == 0 && r.TryTimeout == 0 && r.RetryDelay == 0 && r.MaxRetryDelay == 0 &&
		r.StatusCodes == nil && r.ShouldRetry == nil
}

// Request says what to fetch, from where, as whom.
type Request struct {
	// VaultURL is https://<vault>.<dns suffix>/ (see VaultURL).
	VaultURL string
	// Credential gets tokens for the vault.
	Credential azcore.TokenCredential
	// IdentityKey names the identity behind Credential, stably across calls
	// (for example "sp/<tenant>/<client id>" or "wi/<tenant>/<client
	// id>/<namespace>/<service account>"): requests with the same key share
	// cached SDK clients and their tokens, so two credentials with the same
	// key must be interchangeable. The cached clients use the latest
	// Credential passed with that key. Empty disables the reuse.
	IdentityKey string
	Objects     []Object
}

// File is one file to write, relative to the mount.
type File struct {
	// Path is slash-separated and relative: the object's FileName, or
	// FileName/<i> for a version history.
	Path    string
	Content []byte
	Mode    os.FileMode
}

// ObjectVersion is the version of one object as written, for the
// SecretProviderClassPodStatus.
type ObjectVersion struct {
	// ID is "<type>/<name>" ("secret/db-password"); for a version history
	// "<type>/<name>/<i>", one for each file.
	ID      string
	Version string
}

// Result is what a Fetch produced: all the files, or none.
type Result struct {
	// Warnings are mistakes in the objects that the upstream provider
	// tolerates when it sees the fetched object (objectFormat pfx on a
	// secret that is no PFX); the files are what upstream writes.
	Warnings []ObjectWarning
	// Files in the order of Request.Objects, a history's files 0 to N-1.
	Files []File
	// Versions parallels Files.
	Versions []ObjectVersion
}

// ObjectWarning is a tolerated mistake in one object.
type ObjectWarning struct {
	// Object is the object's position in Request.Objects.
	Object int
	// Field is one of the Field constants.
	Field, Detail string
	// Missing marks an optional object the vault does not have: news, not
	// a mistake in the class, so never refused as one.
	Missing bool
}

// job is one GET: an object, or one version of an object's history.
type job struct {
	index   int // of the object in Request.Objects
	obj     *Object
	version string
	path    string
	id      string
}

// Fetch fetches every object of req and converts it. If any object fails,
// it returns an error and no files: an *Error naming the object (Classify
// tells its Kind; errors.As finds the SDK's error behind it). Requests run
// in parallel, at most Options.MaxParallel at a time; ctx bounds all of it,
// retries included.
//
// An object with VersionHistory > 1 is listed first (this needs the list
// permission) and its newest VersionHistory enabled versions, by creation
// time, are fetched, starting at its Version when that is set.
func (f *Fetcher) Fetch(ctx context.Context, req Request) (*Result, error) {
	start := time.Now()
	vaultURL, vault, err := normalizeVaultURL(req.VaultURL)
	if err != nil {
		return nil, &Error{Kind: KindInvalid, Op: "fetch from vault", Vault: req.VaultURL, Err: err}
	}
	if req.Credential == nil {
		return nil, &Error{Kind: KindInvalid, Op: "fetch from vault", Vault: vault, Err: errors.New("no credential")}
	}
	if err := ValidateObjects(req.Objects); err != nil {
		return nil, &Error{Kind: KindInvalid, Op: "fetch from vault", Vault: vault, Err: err}
	}
	vc, err := f.clients.get(clientKey{vaultURL: vaultURL, identity: req.IdentityKey}, req.Credential)
	if err != nil {
		return nil, &Error{Kind: KindInvalid, Op: "fetch from vault", Vault: vault, Err: err}
	}
	s := &session{ctx: ctx, vault: vault, vc: vc, key: clientKey{vaultURL: vaultURL, identity: req.IdentityKey}, metrics: f.metrics}

	// Phase 1: list the versions of each version history.
	histories := make([][]string, len(req.Objects))
	missing := make([]bool, len(req.Objects)) // optional objects the vault lacks
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(f.parallel)
	for i := range req.Objects {
		o := &req.Objects[i]
		if o.VersionHistory <= 1 {
			continue
		}
		g.Go(func() error {
			vs, err := f.listVersions(gctx, s, o)
			if o.Optional && IsNotFound(err) {
				missing[i] = true
				return nil
			}
			histories[i] = vs
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Phase 2: one GET per file.
	var jobs []job
	for i := range req.Objects {
		o := &req.Objects[i]
		id := string(o.Type) + "/" + o.Name
		if missing[i] {
			continue
		}
		if o.VersionHistory <= 1 {
			jobs = append(jobs, job{index: i, obj: o, version: o.Version, path: o.FileName(), id: id})
			continue
		}
		for n, v := range histories[i] {
			jobs = append(jobs, job{index: i, obj: o, version: v, path: o.FileName() + "/" + strconv.Itoa(n), id: id + "/" + strconv.Itoa(n)})
		}
	}
	res := &Result{Files: make([]File, len(jobs)), Versions: make([]ObjectVersion, len(jobs))}
	warnings := make([]string, len(jobs))
	gone := make([]bool, len(jobs)) // optional objects deleted between the phases, or never there
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(f.parallel)
	for i := range jobs {
		j := &jobs[i]
		g.Go(func() error {
			content, version, warning, err := f.get(gctx, s, j.obj, j.version)
			if j.obj.Optional && IsNotFound(err) {
				gone[i] = true
				return nil
			}
			if err != nil {
				return err
			}
			warnings[i] = warning
			mode := j.obj.FileMode
			if mode == 0 {
				mode = DefaultFileMode
			}
			res.Files[i] = File{Path: j.path, Content: content, Mode: mode}
			res.Versions[i] = ObjectVersion{ID: j.id, Version: version}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i := range jobs {
		if gone[i] {
			missing[jobs[i].index] = true
		}
	}
	res.Files, res.Versions = compact(res.Files, res.Versions, gone)
	for i, m := range missing {
		if m {
			res.Warnings = append(res.Warnings, ObjectWarning{Object: i, Field: FieldOptional, Missing: true,
				Detail: fmt.Sprintf("optional %s %s is not in the vault; its file is absent until it is created", req.Objects[i].Type, req.Objects[i].Name)})
		}
	}
	warned := map[int]bool{}
	for i, w := range warnings {
		if w != "" && !warned[jobs[i].index] {
			warned[jobs[i].index] = true
			res.Warnings = append(res.Warnings, ObjectWarning{Object: jobs[i].index, Field: FieldFormat, Detail: w})
		}
	}
	klog.FromContext(ctx).V(4).Info("Fetched Key Vault objects", "vault", vault, "objects", len(req.Objects), "files", len(res.Files), "duration", time.Since(start))
	return res, nil
}

// session is one Fetch's view of a vault.
type session struct {
	ctx   context.Context // the caller's, to tell its end from a try timeout
	vault string
	vc    *vaultClients
	key   clientKey
	raws  rawCalls
	// metrics observes each object GET (nil: none).
	metrics *Metrics
}

// fail wraps an error about obj.
func (s *session) fail(op string, obj *Object, version string, kind Kind, err error) error {
	name := obj.Name
	if version != "" {
		name += "@" + version
	}
	if kind == KindUnknown {
		kind = classifyCause(err)
		if kind == KindCanceled && s.ctx.Err() == nil {
			// A try timed out, or a sibling failed first; not the caller's end.
			kind = KindUnavailable
		}
	}
	return &Error{Kind: kind, Op: op, Type: obj.Type, Vault: s.vault, Object: name, Err: err}
}

// get fetches one version (empty: the latest) of obj and converts it; it
// returns the content, the version fetched and a tolerated mistake in obj
// ("" if none). Objects of one Fetch that name the same object and version
// share one GET (a certificate's secret mounted as PEM and as PFX, say).
func (s *session) get(ctx context.Context, obj *Object, version string) ([]byte, string, string, error) {
	raw, err := s.raws.get(ctx, s, obj, version)
	if err != nil {
		return nil, "", "", err
	}
	content, warning, err := raw.render(obj)
	if err != nil {
		return nil, "", "", s.fail("convert", obj, version, KindConversion, err)
	}
	return content, raw.version, warning, nil
}

// versionInfo is one version from a versions listing.
type versionInfo struct {
	version string
	created time.Time
}

// listVersions returns the newest obj.VersionHistory enabled versions of
// obj, newest first, starting at obj.Version when it is set. Key Vault
// lists versions in no useful order; they are sorted by creation time.
func (s *session) listVersions(ctx context.Context, obj *Object) ([]string, error) {
	var all []versionInfo
	add := func(enabled *bool, created *time.Time, version string) {
		if enabled != nil && !*enabled || version == "" {
			return
		}
		vi := versionInfo{version: version}
		if created != nil {
			vi.created = *created
		}
		all = append(all, vi)
	}
	err := kindOf(obj.Type).versions(ctx, s.vc, obj.Name, add)
	if err != nil {
		return nil, s.fail("list versions of", obj, "", KindUnknown, err)
	}
	if len(all) == 0 {
		return nil, s.fail("list versions of", obj, "", KindNotFound, errors.New("no enabled version"))
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].created.After(all[j].created) })
	if obj.Version != "" {
		// The history starts at the pinned version and goes back from it.
		start := slices.IndexFunc(all, func(v versionInfo) bool { return strings.EqualFold(v.version, obj.Version) })
		if start < 0 {
			return nil, s.fail("list versions of", obj, "", KindNotFound,
				fmt.Errorf("objectVersion %s is not an enabled version of it", obj.Version))
		}
		all = all[start:]
	}
	if len(all) > obj.VersionHistory {
		all = all[:obj.VersionHistory]
	}
	out := make([]string, len(all))
	for i, v := range all {
		out[i] = v.version
	}
	return out, nil
}

// eachPage calls each for every page of p.
func eachPage[R any](ctx context.Context, p *runtime.Pager[R], each func(R)) error {
	for p.More() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		each(page)
	}
	return nil
}

// compact drops the files and versions of the jobs that found nothing.
func compact(files []File, versions []ObjectVersion, gone []bool) ([]File, []ObjectVersion) {
	f, v := files[:0], versions[:0]
	for i := range files {
		if !gone[i] {
			f, v = append(f, files[i]), append(v, versions[i])
		}
	}
	return f, v
}
