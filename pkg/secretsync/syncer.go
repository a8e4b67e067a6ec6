// Package secretsync creates and updates the Kubernetes Secrets that a
// SecretProviderClass's spec.secretObjects describe, from the files kvdriver
// has just written into a pod's volume, as the upstream secrets-store CSI
// driver does: same names, types, labels (plus ManagedLabel), annotations and
// data keys; kubernetes.io/tls built from a certificate-backed secret.
//
// It needs no right to read Secrets. The content of a Secret is written with
// server-side apply under one field manager shared by every kvdriver of the
// cluster, so that concurrent publishes on many nodes converge without a
// read-modify-write; each consumer pod is added to the Secret's owner
// references with a strategic merge patch, which adds one reference without
// touching the others, so that the garbage collector deletes the Secret with
// its last consumer. A Syncer remembers, per Secret, a digest of what it last
// applied and the pods it has added: a republish that changes nothing sends
// no request. Every Options.Resync it trusts that memory no longer and sends
// the requests again; the API server stores nothing if nothing changed, and
// a Secret deleted meanwhile is created again.
package secretsync

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kvnode/kvnode/pkg/spc"
)

// DefaultFieldManager is the field manager of kvdriver's writes.
const DefaultFieldManager = "kvdriver"

// DefaultResync is how long a Syncer trusts what it has written.
const DefaultResync = 10 * time.Minute

// maxLogV is the highest verbosity the API client may log at while it
// carries a Secret: client-go logs request and response bodies, Secret
// values included, from V(8) on.
const maxLogV = 7

// Pod is the pod whose volume was published, from kubelet's volume context.
type Pod struct {
	Namespace, Name string
	UID             types.UID
}

// Options tune a Syncer. The zero value is the defaults.
type Options struct {
	// FieldManager names kvdriver in the Secrets' managedFields; default
	// DefaultFieldManager. Every kvdriver of a cluster must use the same
	// one: under different names each write would take the fields over
	// from the other nodes, and a key a class drops would stay, still
	// owned by them.
	FieldManager string
	// Types are the Secret types to sync; default DefaultTypes(). They must
	// be the chart's syncSecret.types, which the admission policy enforces.
	Types []corev1.SecretType
	// Resync bounds how long a Syncer trusts that a Secret it applied is
	// still as it wrote it, and that a pod it added is still an owner,
	// before it sends the requests again; default DefaultResync.
	Resync time.Duration
	// Clock is the time source; default the system clock.
	Clock clock.PassiveClock
}

// Syncer writes the Secrets of published volumes. It is safe for
// concurrent use; syncs of one Secret are serialised, syncs of different
// Secrets run in parallel.
type Syncer struct {
	client SecretWriter
	opts   Options

	mu        sync.Mutex
	secrets   map[secretKey]*secretState
	lastSweep time.Time
}

type secretKey struct{ namespace, name string }

// secretState is what a Syncer remembers of one Secret; a new one knows
// nothing.
type secretState struct {
	// lock, a channel of capacity one, serialises syncs of the Secret; a
	// sync whose context ends while it waits leaves.
	lock chan struct{}
	// sum is the digest of the desired Secret last applied, at appliedAt.
	sum       [sha256.Size]byte
	appliedAt time.Time
	// owners are the pods added as owners, and when.
	owners map[types.UID]time.Time
}

// SecretWriter writes Secrets (kube.Core): a server-side apply of body, an
// apply configuration as JSON, and a patch that never creates.
type SecretWriter interface {
	ApplySecret(ctx context.Context, namespace, name string, body []byte, opts metav1.ApplyOptions) (*corev1.Secret, error)
	PatchSecret(ctx context.Context, namespace, name string, pt types.PatchType, body []byte, opts metav1.PatchOptions) (*corev1.Secret, error)
}

// New returns a Syncer writing through client, authenticated as kvdriver.
func New(client SecretWriter, opts Options) *Syncer {
	if opts.FieldManager == "" {
		opts.FieldManager = DefaultFieldManager
	}
	if len(opts.Types) == 0 {
		opts.Types = DefaultTypes()
	}
	if opts.Resync <= 0 {
		opts.Resync = DefaultResync
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	return &Syncer{client: client, opts: opts, secrets: map[secretKey]*secretState{}}
}

// Sync makes the Secrets that objects (a SecretProviderClass's
// spec.secretObjects) describe match files, the volume kvdriver has just
// written for pod: paths relative to the mount (an object's objectAlias,
// else its objectName; "name/0" for version histories) to their bytes.
// Each Secret is created in the pod's namespace, or updated, and gets pod
// as an owner.
//
// The entries are independent: an entry that is wrong, or whose write
// fails, does not stop the others. Sync returns nil, or the errors joined
// in the order of objects, one per failed entry, each a *FieldError (the
// entry is wrong; nothing was written for it) or a *WriteError (the API
// server refused or failed a request; the next Sync retries it). Errors
// lists them. No error text holds a secret value.
func (s *Syncer) Sync(ctx context.Context, pod Pod, objects []spc.SecretObject, files map[string][]byte) error {
	if len(objects) == 0 {
		return nil
	}
	if pod.Namespace == "" || pod.Name == "" || pod.UID == "" {
		return errors.New("secretsync: the pod's namespace, name and UID are required")
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.Namespace, pod.Name))
	apiCtx := klog.NewContext(ctx, capVerbosity(logger, maxLogV))
	wanted, errs := build(objects, files, s.opts.Types)
	for i, d := range wanted {
		if d == nil {
			continue
		}
		applied, ownerAdded, err := s.write(apiCtx, pod, d)
		if err != nil {
			errs[i] = err
			continue
		}
		if applied || ownerAdded {
			logger.V(2).Info("synced Secret", "secret", klog.KRef(pod.Namespace, d.name), "type", d.typ,
				"keys", len(d.items), "applied", applied, "ownerAdded", ownerAdded)
		}
	}
	return errors.Join(errs...)
}

// write applies d unless this Syncer applied it from the same settings and
// files less than Resync ago, and adds pod as an owner unless it did so
// less than Resync ago. It returns a *FieldError if d's files cannot make
// its Secret, and a *WriteError if a request fails.
func (s *Syncer) write(ctx context.Context, pod Pod, d *desired) (applied, ownerAdded bool, err error) {
	st := s.state(secretKey{pod.Namespace, d.name})
	select {
	case st.lock <- struct{}{}:
		defer func() { <-st.lock }()
	case <-ctx.Done():
		return false, false, s.writeError(pod, d, "wait for another sync of the Secret", ctx.Err())
	}
	now := s.opts.Clock.Now()
	fresh := func(t time.Time) bool { return !t.IsZero() && now.Sub(t) < s.opts.Resync }
	for uid, at := range st.owners {
		if !fresh(at) {
			delete(st.owners, uid)
		}
	}

	apply := func() error {
		st.appliedAt = time.Time{}
		if err := d.render(); err != nil {
			return err
		}
		if err := s.apply(ctx, pod.Namespace, d); err != nil {
			return s.writeError(pod, d, "apply", err)
		}
		st.sum, st.appliedAt, applied = d.sum, now, true
		return nil
	}
	if !fresh(st.appliedAt) || st.sum != d.sum {
		if err := apply(); err != nil {
			return false, false, err
		}
	}
	if fresh(st.owners[pod.UID]) {
		return applied, false, nil
	}
	err = s.addOwner(ctx, pod, d.name)
	if apierrors.IsNotFound(err) && !applied {
		// Deleted since this Syncer applied it: create it again.
		if err := apply(); err != nil {
			return false, false, err
		}
		err = s.addOwner(ctx, pod, d.name)
	}
	if err != nil {
		return applied, false, s.writeError(pod, d, "add owner", err)
	}
	st.owners[pod.UID] = now
	return applied, true, nil
}

// apply writes the Secret's type, labels, annotations and data. Force takes
// the fields over from any other manager (the upstream driver, a person's
// edit): the mounted files are the truth, as the upstream driver's Update
// treats them. Fields other managers own alone are kept.
func (s *Syncer) apply(ctx context.Context, namespace string, d *desired) error {
	var ac secretApply
	ac.APIVersion, ac.Kind = "v1", "Secret"
	ac.Metadata.Name, ac.Metadata.Namespace = d.name, namespace
	ac.Metadata.Labels, ac.Metadata.Annotations = d.labels, d.annotations
	ac.Type, ac.Data = d.typ, d.data
	body, err := json.Marshal(&ac)
	if err != nil {
		return err
	}
	_, err = s.client.ApplySecret(ctx, namespace, d.name, body, metav1.ApplyOptions{FieldManager: s.opts.FieldManager, Force: true})
	return err
}

// secretApply is the apply configuration of a synced Secret: exactly the
// fields kvdriver manages, so that it owns no others. (client-go's apply
// configurations would do, but their package links every built-in API
// group into kvdriver; see kube.Core.)
type secretApply struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Type corev1.SecretType `json:"type"`
	Data map[string][]byte `json:"data,omitempty"`
}

// ownerPatch is a strategic merge patch that adds one owner reference:
// ownerReferences merge by uid, so references other pods added stay.
type ownerPatch struct {
	Metadata struct {
		OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
	} `json:"metadata"`
}

// addOwner adds pod to the Secret's owner references. It never creates the
// Secret: a patch of a missing object is NotFound.
func (s *Syncer) addOwner(ctx context.Context, pod Pod, name string) error {
	var p ownerPatch
	p.Metadata.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}}
	body, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = s.client.PatchSecret(ctx, pod.Namespace, name, types.StrategicMergePatchType, body, metav1.PatchOptions{FieldManager: s.opts.FieldManager})
	return err
}

func (s *Syncer) writeError(pod Pod, d *desired, op string, err error) error {
	return &WriteError{Field: d.field, Namespace: pod.Namespace, Secret: d.name, Op: op, Err: err}
}

// state returns the memory of key, and now and then forgets Secrets that
// nothing has synced for a Resync.
func (s *Syncer) state(key secretKey) *secretState {
	now := s.opts.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSweep) >= s.opts.Resync {
		s.lastSweep = now
		for k, st := range s.secrets {
			if k == key {
				continue
			}
			select {
			case st.lock <- struct{}{}: // not in use
				if s.stale(st, now) {
					delete(s.secrets, k)
				}
				<-st.lock
			default:
			}
		}
	}
	st, ok := s.secrets[key]
	if !ok {
		st = &secretState{lock: make(chan struct{}, 1), owners: map[types.UID]time.Time{}}
		s.secrets[key] = st
	}
	return st
}

// stale reports whether everything st remembers has expired.
func (s *Syncer) stale(st *secretState, now time.Time) bool {
	if now.Sub(st.appliedAt) < s.opts.Resync {
		return false
	}
	for _, at := range st.owners {
		if now.Sub(at) < s.opts.Resync {
			return false
		}
	}
	return true
}

// capVerbosity returns logger with every level above max disabled.
func capVerbosity(logger logr.Logger, max int) logr.Logger {
	sink := logger.GetSink()
	if sink == nil {
		return logger
	}
	return logger.WithSink(cappedSink{LogSink: sink, max: max})
}

// cappedSink is a logr.LogSink that drops levels above max.
type cappedSink struct {
	logr.LogSink
	max int
}

func (c cappedSink) Enabled(level int) bool { return level <= c.max && c.LogSink.Enabled(level) }

func (c cappedSink) WithValues(kv ...any) logr.LogSink {
	return cappedSink{LogSink: c.LogSink.WithValues(kv...), max: c.max}
}

func (c cappedSink) WithName(name string) logr.LogSink {
	return cappedSink{LogSink: c.LogSink.WithName(name), max: c.max}
}

func (c cappedSink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := c.LogSink.(logr.CallDepthLogSink); ok {
		return cappedSink{LogSink: cd.WithCallDepth(depth), max: c.max}
	}
	return c
}
