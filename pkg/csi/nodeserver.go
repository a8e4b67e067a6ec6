package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/secretsync"
	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/pkg/volume"
)

// Volume context keys kubelet adds (podInfoOnMount, tokenRequests) and the
// one pod specs set.
const (
	attrSecretProviderClass = "secretProviderClass"
	attrPodName             = "csi.storage.k8s.io/pod.name"
	attrPodNamespace        = "csi.storage.k8s.io/pod.namespace"
	attrPodUID              = "csi.storage.k8s.io/pod.uid"
	attrServiceAccount      = "csi.storage.k8s.io/serviceAccount.name"
	attrServiceAccountToken = "csi.storage.k8s.io/serviceAccount.tokens"

	// Keys of the nodePublishSecretRef Secret for a service principal.
	secretClientID     = "clientid"
	secretClientSecret = "clientsecret"
)

// ClassGetter finds a SecretProviderClass (ClassInformer: its cache, then
// the API server on a miss).
type ClassGetter interface {
	Get(ctx context.Context, namespace, name string) (*Class, error)
}

// Publisher mounts and unmounts volumes (volume.Publisher).
type Publisher interface {
	Publish(ctx context.Context, req volume.Request) (*volume.Result, error)
	// PublishFrom publishes the files another provider's plugin returns.
	PublishFrom(ctx context.Context, target string, owner *atomicwriter.Owner, source volume.FileSource) (*volume.Result, error)
	Unpublish(target string) error
}

// StatusSink takes the SecretProviderClassPodStatus of a mounted volume
// (StatusRecorder writes it in the background).
type StatusSink interface {
	Record(st *spc.SecretProviderClassPodStatus)
}

// EventSink records events on the pods kvdriver mounts for (PodEvents).
type EventSink interface {
	PodWarning(pod PodRef, reason, message string)
	PodNormal(pod PodRef, reason, message string)
}

// SecretSyncer writes the Kubernetes Secrets a class's secretObjects
// describe from the files just published (secretsync.Syncer). Its errors
// (secretsync.Errors) never fail a mount: upstream syncs after the mount
// and only reports what went wrong.
type SecretSyncer interface {
	Sync(ctx context.Context, pod secretsync.Pod, objects []spc.SecretObject, files map[string][]byte) error
}

// PodRef names a pod.
type PodRef struct {
	Namespace, Name string
	UID             types.UID
}

// Event reasons.
const (
	// ReasonParameterWarning: the class holds a mistake the upstream
	// provider tolerates; the volume is mounted as upstream mounts it.
	ReasonParameterWarning = "SecretProviderClassWarning"
	// ReasonSecretSyncFailed: a Secret of the class's secretObjects could
	// not be written (the upstream driver's reason).
	ReasonSecretSyncFailed = "FailedToCreateSecret"
	// ReasonRotationComplete and ReasonRotationFailed: a republish
	// rotated the files, or failed and kept them (the upstream rotation
	// reconciler's reasons).
	ReasonRotationComplete = "MountRotationComplete"
	ReasonRotationFailed   = "MountRotationFailed"
)

// NodeServerOptions tune a NodeServer.
type NodeServerOptions struct {
	// StrictParameters refuses, with InvalidArgument, the mistakes in a
	// SecretProviderClass that the upstream provider tolerates; by default
	// they are mounted as upstream mounts them, with a Warning event on the
	// pod and a log line.
	StrictParameters bool
	// Events records events on pods; nil records none.
	Events EventSink
	// Secrets syncs secretObjects; nil when sync is disabled, and a class
	// that has secretObjects then gets a Warning event.
	Secrets SecretSyncer
	// Metrics counts calls, syncs and tolerated mistakes; nil counts none.
	Metrics *Metrics
	// Providers forwards the mounts of classes whose spec.provider is not
	// azure to that provider's plugin; nil refuses them.
	Providers ProviderClient
	// Rotation says when kubelet's republish of a written volume fetches
	// its objects again.
	Rotation RotationOptions
}

// RotationOptions are the upstream driver's rotation settings.
type RotationOptions struct {
	// Disabled leaves a written volume as it is at every republish
	// (the upstream driver's --enable-secret-rotation=false).
	Disabled bool
	// PollInterval is the least time between two fetches of one volume's
	// objects (--rotation-poll-interval); kubelet republishes about every
	// minute, and a republish sooner than this after the last fetch
	// changes nothing.
	PollInterval time.Duration
}

// NodeServer is the CSI Node service.
type NodeServer struct {
	csipb.UnimplementedNodeServer
	nodeID    string
	classes   ClassGetter
	publisher Publisher
	statuses  StatusSink
	opts      NodeServerOptions

	mu       sync.Mutex
	inFlight map[string]struct{}
	// warned is, per target path, what the pod was last told about (the
	// class version and the problems): kubelet republishes every minute,
	// and the pod needs telling once per change, not once a minute.
	warned map[string]string
	// fetched is, per target path, when its objects were last fetched and
	// written (for RotationOptions.PollInterval).
	fetched map[string]time.Time
}

var _ csipb.NodeServer = (*NodeServer)(nil)

// NewNodeServer returns the Node service of node nodeID.
func NewNodeServer(nodeID string, classes ClassGetter, publisher Publisher, statuses StatusSink, opts NodeServerOptions) *NodeServer {
	return &NodeServer{nodeID: nodeID, classes: classes, publisher: publisher, statuses: statuses, opts: opts,
		inFlight: map[string]struct{}{}, warned: map[string]string{}, fetched: map[string]time.Time{}}
}

// NodeGetInfo returns the node ID.
func (s *NodeServer) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: s.nodeID}, nil
}

// NodeGetCapabilities reports VOLUME_MOUNT_GROUP only (no staging, no
// stats, no expansion): kubelet then hands the pod's fsGroup to
// NodePublishVolume in volume_mount_group, and kvdriver gives the files to
// that group at every write. Without it kubelet would leave a read-only
// volume's ownership alone, and a file written at rotation would not be
// the group's anyway.
func (s *NodeServer) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: []*csipb.NodeServiceCapability{{
		Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: csipb.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP}},
	}}}, nil
}

// NodePublishVolume mounts the pod's Key Vault objects at the target path,
// or, for a class of another provider, the files that provider's plugin
// returns.
// kubelet calls it again about every minute (requiresRepublish); a call that
// finds the volume mounted refreshes the files, which is how rotation works.
func (s *NodeServer) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	var provider string
	err := s.publish(ctx, req, &provider)
	s.opts.Metrics.published(provider, err)
	if err != nil {
		return nil, err
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// publish is NodePublishVolume; it sets provider once the class is known.
func (s *NodeServer) publish(ctx context.Context, req *csipb.NodePublishVolumeRequest, provider *string) error {
	if err := validatePublish(req); err != nil {
		return err
	}
	pod, err := podFromContext(req.GetVolumeContext())
	if err != nil {
		return err
	}
	if pod.owner, err = mountGroup(req); err != nil {
		return err
	}
	release, err := s.lock(req.GetTargetPath())
	if err != nil {
		return err
	}
	defer release()

	className := req.GetVolumeContext()[attrSecretProviderClass]
	class, err := s.classes.Get(ctx, pod.namespace, className)
	if apierrors.IsNotFound(err) {
		return status.Errorf(codes.NotFound, "SecretProviderClass %s/%s not found", pod.namespace, className)
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "get SecretProviderClass %s/%s: %v", pod.namespace, className, err)
	}
	*provider = string(class.Spec.Provider)
	target := req.GetTargetPath()
	// A republish of a volume already written is a rotation: it fetches
	// again only when due, and its failure leaves the files as they were.
	remount := written(target)
	if remount && !s.rotationDue(target) {
		return nil
	}
	start := time.Now()
	var changed bool
	if class.Spec.Provider != "azure" {
		err = s.forward(ctx, req, pod, class.SecretProviderClass, &changed)
	} else {
		err = s.publishAzure(ctx, req, pod, class, &changed)
	}
	if !remount {
		if err == nil {
			s.markFetched(target, start)
		}
		return err
	}
	s.opts.Metrics.rotated(*provider, changed, err, time.Since(start).Seconds())
	ref := PodRef{Namespace: pod.namespace, Name: pod.name, UID: types.UID(pod.uid)}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.namespace, pod.name), "class", className)
	if err != nil {
		// As upstream: the error is not returned to kubelet, which would
		// otherwise fail the pod's running volume (kubernetes#121271);
		// the files stay, and the pod is told.
		msg := requestScrubber(req).String(status.Convert(err).Message())
		logger.Error(nil, "Rotation failed; the volume keeps its files", "code", status.Code(err), "message", msg)
		if s.opts.Events != nil {
			s.opts.Events.PodWarning(ref, ReasonRotationFailed, "Rotation of SecretProviderClass "+className+" failed ("+status.Code(err).String()+"); the files are unchanged: "+msg)
		}
		return nil
	}
	s.markFetched(target, start)
	if changed && s.opts.Events != nil {
		s.opts.Events.PodNormal(ref, ReasonRotationComplete, "Rotated the files of SecretProviderClass "+className)
	}
	return nil
}

// written reports whether target holds a volume kvdriver wrote (its
// ..data link), whichever process wrote it.
func written(target string) bool {
	_, err := os.Lstat(filepath.Join(target, "..data"))
	return err == nil
}

// rotationDue reports whether a republish of the written volume at
// target fetches its objects again.
func (s *NodeServer) rotationDue(target string) bool {
	if s.opts.Rotation.Disabled {
		return false
	}
	s.mu.Lock()
	last, ok := s.fetched[target]
	s.mu.Unlock()
	return !ok || time.Since(last) >= s.opts.Rotation.PollInterval
}

func (s *NodeServer) markFetched(target string, at time.Time) {
	s.mu.Lock()
	s.fetched[target] = at
	s.mu.Unlock()
}

// publishAzure publishes a class of the Azure provider; changed tells
// whether the files changed.
func (s *NodeServer) publishAzure(ctx context.Context, req *csipb.NodePublishVolumeRequest, pod podInfo, class *Class, changed *bool) error {
	className := class.Name
	cfg, err := class.AzureConfig()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "SecretProviderClass %s/%s: %v", pod.namespace, className, err)
	}
	idReq, idWarnings, err := identityRequest(cfg, pod, req)
	if err != nil {
		return err
	}
	// cfg is shared with every mount of the class: never append to its
	// slices.
	warnings := slices.Concat(cfg.Warnings, idWarnings)
	if s.opts.StrictParameters && len(warnings) > 0 {
		return status.Errorf(codes.InvalidArgument,
			"SecretProviderClass %s/%s: refused by --strict-parameters (the upstream provider would mount it): %s",
			pod.namespace, className, spc.Warnings(warnings))
	}

	res, err := s.publisher.Publish(ctx, volume.Request{
		TargetPath: req.GetTargetPath(),
		VaultURL:   cfg.VaultURL(),
		Objects:    cfg.Objects,
		Identity:   idReq,
		Owner:      pod.owner,
		// Mistakes only the fetched objects show (objectFormat pfx on a
		// secret that is no PFX) are refused before anything is mounted.
		RefuseWarnings: s.opts.StrictParameters,
	})
	if err != nil {
		return publishError(err)
	}
	for _, w := range res.Warnings {
		warnings = append(warnings, &spc.FieldError{Field: w.Field, Detail: w.Detail})
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.namespace, pod.name), "class", className)
	syncProblems := s.syncSecrets(ctx, pod, class.SecretProviderClass, res.Files)
	s.warn(logger, req.GetTargetPath(), pod, class.SecretProviderClass, warnings, syncProblems)
	*changed = res.Changed
	if res.Mounted || res.Changed {
		s.statuses.Record(podStatus(s.nodeID, pod, className, req.GetTargetPath(), res.Versions))
		logger.Info("published", "objects", len(cfg.Objects), "files", len(res.Versions), "mounted", res.Mounted, "rotated", !res.Mounted)
	}
	return nil
}

// NodeUnpublishVolume unmounts and removes the target path. It is idempotent
// and needs no memory of the publish, so it works after a driver restart.
func (s *NodeServer) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	release, err := s.lock(req.GetTargetPath())
	if err != nil {
		s.opts.Metrics.unpublished(err)
		return nil, err
	}
	defer release()
	if err := s.publisher.Unpublish(req.GetTargetPath()); err != nil {
		err = status.Errorf(codes.Internal, "%v", err)
		s.opts.Metrics.unpublished(err)
		return nil, err
	}
	s.opts.Metrics.unpublished(nil)
	s.mu.Lock()
	delete(s.warned, req.GetTargetPath())
	delete(s.fetched, req.GetTargetPath())
	s.mu.Unlock()
	klog.FromContext(ctx).V(2).Info("unpublished", "target", req.GetTargetPath())
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// syncSecrets writes the class's secretObjects from the published files
// and returns what went wrong, one message per Secret.
func (s *NodeServer) syncSecrets(ctx context.Context, pod podInfo, class *spc.SecretProviderClass, files map[string][]byte) []string {
	if len(class.Spec.SecretObjects) == 0 {
		return nil
	}
	if s.opts.Secrets == nil {
		return []string{"spec.secretObjects: not synced: Secret sync is disabled on this node (--sync-secrets=false, chart value syncSecret.enabled)"}
	}
	start := time.Now()
	err := s.opts.Secrets.Sync(ctx, secretsync.Pod{Namespace: pod.namespace, Name: pod.name, UID: types.UID(pod.uid)},
		class.Spec.SecretObjects, files)
	var problems []string
	for _, e := range secretsync.Errors(err) {
		problems = append(problems, e.Error())
	}
	s.opts.Metrics.synced(string(class.Spec.Provider), len(class.Spec.SecretObjects)-len(problems), len(problems), time.Since(start).Seconds())
	return problems
}

// warn tells the pod, once per change, about the mistakes in its class
// that were tolerated and the Secrets that could not be synced: a Warning
// event and a log line for each kind.
func (s *NodeServer) warn(logger klog.Logger, target string, pod podInfo, class *spc.SecretProviderClass, warnings []*spc.FieldError, syncProblems []string) {
	told := string(class.UID) + "/" + class.ResourceVersion + "\x00" + spc.Warnings(warnings) + "\x00" + strings.Join(syncProblems, "\x00")
	s.mu.Lock()
	seen := s.warned[target] == told
	s.warned[target] = told
	s.mu.Unlock()
	if seen {
		return
	}
	ref := PodRef{Namespace: pod.namespace, Name: pod.name, UID: types.UID(pod.uid)}
	if len(warnings) > 0 {
		s.opts.Metrics.tolerated(string(class.Spec.Provider))
		logger.Info("Tolerated mistakes in the SecretProviderClass", "warnings", spc.Warnings(warnings))
		s.event(ref, ReasonParameterWarning, fmt.Sprintf(
			"SecretProviderClass %s/%s: mounted as the upstream Azure provider mounts it, but: %s (--strict-parameters refuses this)",
			class.Namespace, class.Name, spc.Warnings(warnings)))
	}
	for _, p := range syncProblems {
		logger.Info("Secret not synced", "problem", p)
		s.event(ref, ReasonSecretSyncFailed, fmt.Sprintf("SecretProviderClass %s/%s: %s", class.Namespace, class.Name, p))
	}
}

func (s *NodeServer) event(pod PodRef, reason, message string) {
	if s.opts.Events != nil {
		s.opts.Events.PodWarning(pod, reason, message)
	}
}

// lock admits one operation per target path at a time; a second one gets
// Aborted, as the CSI spec asks, and kubelet retries it.
func (s *NodeServer) lock(target string) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.inFlight[target]; busy {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", target)
	}
	s.inFlight[target] = struct{}{}
	return func() {
		s.mu.Lock()
		delete(s.inFlight, target)
		s.mu.Unlock()
	}, nil
}

func validatePublish(req *csipb.NodePublishVolumeRequest) error {
	switch {
	case req.GetVolumeId() == "":
		return status.Error(codes.InvalidArgument, "volume_id is required")
	case req.GetTargetPath() == "":
		return status.Error(codes.InvalidArgument, "target_path is required")
	case !filepath.IsAbs(req.GetTargetPath()):
		return status.Errorf(codes.InvalidArgument, "target_path %q must be absolute", req.GetTargetPath())
	case req.GetVolumeCapability() == nil:
		return status.Error(codes.InvalidArgument, "volume_capability is required")
	case req.GetVolumeCapability().GetMount() == nil:
		return status.Error(codes.InvalidArgument, "volume_capability: only mount volumes are supported, not block")
	case !req.GetReadonly():
		return status.Error(codes.InvalidArgument, "readOnly must be true: Key Vault volumes are read-only (set readOnly: true on the csi volume)")
	case req.GetVolumeContext()[attrSecretProviderClass] == "":
		return status.Errorf(codes.InvalidArgument, "volume attribute %s is required", attrSecretProviderClass)
	}
	return nil
}

type podInfo struct {
	name, namespace, uid, serviceAccount string
	// owner gives the volume to the pod's fsGroup; nil when it has none.
	owner *atomicwriter.Owner
}

// mountGroup reads the pod's fsGroup, which kubelet passes in
// volume_mount_group (this driver has VOLUME_MOUNT_GROUP), as a group ID.
func mountGroup(req *csipb.NodePublishVolumeRequest) (*atomicwriter.Owner, error) {
	v := req.GetVolumeCapability().GetMount().GetVolumeMountGroup()
	if v == "" {
		return nil, nil
	}
	gid, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability.mount.volume_mount_group %q is not a group ID (a decimal number from 0 to %d)", v, math.MaxInt32)
	}
	return &atomicwriter.Owner{UID: -1, GID: int(gid)}, nil
}

func podFromContext(vc map[string]string) (podInfo, error) {
	p := podInfo{name: vc[attrPodName], namespace: vc[attrPodNamespace], uid: vc[attrPodUID], serviceAccount: vc[attrServiceAccount]}
	for key, v := range map[string]string{attrPodName: p.name, attrPodNamespace: p.namespace, attrPodUID: p.uid} {
		if v == "" {
			return p, status.Errorf(codes.InvalidArgument, "volume attribute %s is missing: the CSIDriver object needs podInfoOnMount: true", key)
		}
	}
	return p, nil
}

// identityRequest turns the class's auth mode and the request's secrets into
// a credential request, choosing as the upstream provider chooses; a
// choice upstream makes silently comes back as a warning.
func identityRequest(cfg *spc.Config, pod podInfo, req *csipb.NodePublishVolumeRequest) (identity.Request, []*spc.FieldError, error) {
	r := identity.Request{AuthorityHost: cfg.Cloud.ActiveDirectoryEndpoint, TenantID: cfg.TenantID}
	var warnings []*spc.FieldError
	mode := cfg.AuthMode()
	if mode == spc.WorkloadIdentity {
		if _, err := serviceAccountToken(req, identity.WorkloadAudience); err != nil && hasServicePrincipal(req.GetSecrets()) {
			// Upstream uses workload identity only when kubelet passed a
			// token, and the nodePublishSecretRef's service principal
			// otherwise.
			mode = spc.ServicePrincipal
			warnings = append(warnings, &spc.FieldError{Field: spc.ParamClientID, Detail: fmt.Sprintf(
				"is ignored: kubelet passed no service-account token for %s (the CSIDriver object needs tokenRequests), so the nodePublishSecretRef's service principal is used, as the upstream provider uses it",
				identity.WorkloadAudience)})
		}
	}
	switch mode {
	case spc.ServicePrincipal:
		r.Mode = identity.ServicePrincipal
		r.ClientID, r.ClientSecret = servicePrincipal(req.GetSecrets())
		var missing []string
		if r.ClientID == "" {
			missing = append(missing, strconv.Quote(secretClientID))
		}
		if r.ClientSecret == "" {
			missing = append(missing, strconv.Quote(secretClientSecret))
		}
		if len(missing) > 0 {
			return r, nil, status.Errorf(codes.InvalidArgument,
				"service principal: nodePublishSecretRef must name a Secret with keys %q and %q; %s missing (or set clientID for workload identity, or useVMManagedIdentity)",
				secretClientID, secretClientSecret, strings.Join(missing, " and "))
		}
	case spc.WorkloadIdentity:
		r.Mode = identity.WorkloadIdentity
		r.ClientID = cfg.ClientID
		r.Namespace, r.ServiceAccount = pod.namespace, pod.serviceAccount
		tok, err := serviceAccountToken(req, identity.WorkloadAudience)
		if err != nil {
			return r, nil, err
		}
		r.ServiceAccountToken = tok
	case spc.IdentityBinding:
		// Upstream never falls back here: without the binding audience's
		// token the mount fails.
		r.Mode = identity.IdentityBinding
		r.ClientID = cfg.ClientID
		r.Namespace, r.ServiceAccount = pod.namespace, pod.serviceAccount
		tok, err := serviceAccountToken(req, identity.BindingAudience)
		if err != nil {
			return r, nil, err
		}
		r.ServiceAccountToken = tok
	case spc.VMManagedIdentity:
		r.Mode = identity.VMManagedIdentity
		r.ManagedIdentityID = cfg.UserAssignedIdentityID
	case spc.PodIdentity:
		r.Mode = identity.PodIdentity
		r.Namespace, r.PodName = pod.namespace, pod.name
	}
	return r, warnings, nil
}

// servicePrincipal reads the client ID and secret from a
// nodePublishSecretRef Secret, its keys in any case (clientid, clientId,
// ClientSecret...), as upstream reads them.
func servicePrincipal(secrets map[string]string) (clientID, clientSecret string) {
	for _, k := range slices.Sorted(maps.Keys(secrets)) {
		switch strings.ToLower(k) {
		case secretClientID:
			clientID = secrets[k]
		case secretClientSecret:
			clientSecret = secrets[k]
		}
	}
	return clientID, clientSecret
}

func hasServicePrincipal(secrets map[string]string) bool {
	id, secret := servicePrincipal(secrets)
	return id != "" && secret != ""
}

// serviceAccountToken returns the pod's token for audience
// (api://AzureADTokenExchange or api://AKSIdentityBinding) from the volume context or, on Kubernetes 1.35+ with
// serviceAccountTokenInSecrets, from the request's secrets.
func serviceAccountToken(req *csipb.NodePublishVolumeRequest, audience string) (string, error) {
	what := "workload identity"
	if audience == identity.BindingAudience {
		what = spc.ParamUseAzureTokenProxy
	}
	raw := req.GetSecrets()[attrServiceAccountToken]
	if raw == "" {
		raw = req.GetVolumeContext()[attrServiceAccountToken]
	}
	if raw == "" {
		return "", status.Errorf(codes.InvalidArgument,
			"%s: no %s: the CSIDriver object needs tokenRequests with audience %s", what, attrServiceAccountToken, audience)
	}
	var tokens map[string]struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
		return "", status.Errorf(codes.InvalidArgument, "%s: %s is not valid JSON", what, attrServiceAccountToken)
	}
	t := tokens[audience].Token
	if t == "" {
		return "", status.Errorf(codes.InvalidArgument,
			"%s: %s has no token for audience %s: the CSIDriver object needs tokenRequests with that audience", what, attrServiceAccountToken, audience)
	}
	return t, nil
}

// publishError maps a publish failure to its gRPC code, once, here.
func publishError(err error) error {
	var (
		fe *identity.FieldError
		pe *identity.ProxyError
	)
	switch {
	case errors.As(err, &fe):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.As(err, &pe):
		// The node's token proxy configuration, not the mount's.
		return status.Errorf(codes.FailedPrecondition, "%s: %v", spc.ParamUseAzureTokenProxy, err)
	}
	var kerr *keyvault.Error
	if !errors.As(err, &kerr) {
		return status.Errorf(codes.Internal, "%v", err)
	}
	code := codes.Internal
	switch kerr.Kind {
	case keyvault.KindInvalid:
		code = codes.InvalidArgument
	case keyvault.KindNotFound:
		code = codes.NotFound
	case keyvault.KindPermissionDenied, keyvault.KindAuthentication:
		code = codes.PermissionDenied
	case keyvault.KindThrottled:
		code = codes.ResourceExhausted
	case keyvault.KindUnavailable:
		code = codes.Unavailable
	case keyvault.KindConversion:
		code = codes.FailedPrecondition
	case keyvault.KindCanceled:
		code = codes.DeadlineExceeded
		if errors.Is(err, context.Canceled) {
			code = codes.Canceled
		}
	}
	return status.Error(code, err.Error())
}

// podStatus is the SecretProviderClassPodStatus for a mounted volume, named
// and labelled as the upstream driver names it.
func podStatus(node string, pod podInfo, class, target string, versions []keyvault.ObjectVersion) *spc.SecretProviderClassPodStatus {
	st := &spc.SecretProviderClassPodStatus{
		TypeMeta: metav1.TypeMeta{APIVersion: spc.SchemeGroupVersion.String(), Kind: "SecretProviderClassPodStatus"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      pod.name + "-" + pod.namespace + "-" + class,
			Namespace: pod.namespace,
			Labels:    map[string]string{spc.InternalNodeLabel: node},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.name, UID: types.UID(pod.uid),
			}},
		},
		Status: spc.SecretProviderClassPodStatusStatus{
			PodName: pod.name, SecretProviderClassName: class, Mounted: true, TargetPath: target,
		},
	}
	for _, v := range versions {
		st.Status.Objects = append(st.Status.Objects, spc.SecretProviderClassObject{ID: v.ID, Version: v.Version})
	}
	return st
}
