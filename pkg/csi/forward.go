package csi

import (
	"context"
	"errors"
	"fmt"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/keyvault"
	"github.com/kvnode/kvnode/pkg/provider"
	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
	"github.com/kvnode/kvnode/pkg/spc"
)

// ProviderClient forwards a mount to the plugin of another store's
// provider and returns its checked answer (provider.Clients).
type ProviderClient interface {
	Mount(ctx context.Context, name string, req *v1alpha1.MountRequest) (*provider.Result, error)
}

// forward publishes a volume whose class names a provider other than
// azure: that provider's plugin fetches, with the request the upstream
// driver would send it, and kvdriver writes what it returns into its own
// tmpfs, as for Key Vault objects. kubelet's republish calls the plugin
// again, which is how its objects rotate.
func (s *NodeServer) forward(ctx context.Context, req *csipb.NodePublishVolumeRequest, pod podInfo, class *spc.SecretProviderClass, changed *bool) error {
	name := string(class.Spec.Provider)
	what := fmt.Sprintf("SecretProviderClass %s/%s", class.Namespace, class.Name)
	if s.opts.Providers == nil {
		return status.Errorf(codes.FailedPrecondition, "%s: spec.provider %q: this kvdriver forwards to no other provider; it serves \"azure\"", what, name)
	}
	if why := provider.ValidName(name); why != "" {
		return status.Errorf(codes.InvalidArgument, "%s: spec.provider %q %s", what, name, why)
	}
	if len(class.Spec.Parameters) == 0 {
		return status.Errorf(codes.InvalidArgument, "%s: spec.parameters is empty; provider %q takes its objects from them (the upstream driver refuses this too)", what, name)
	}
	mountReq, err := provider.MountRequest(provider.Mount{
		Parameters: class.Spec.Parameters, VolumeContext: req.GetVolumeContext(), Secrets: req.GetSecrets(),
		TargetPath: req.GetTargetPath(),
	})
	if err != nil {
		return status.Errorf(codes.Internal, "%s: %v", what, err)
	}
	var versions []keyvault.ObjectVersion
	res, err := s.publisher.PublishFrom(ctx, req.GetTargetPath(), pod.owner, func(ctx context.Context, _ string) (map[string]atomicwriter.File, error) {
		r, err := s.opts.Providers.Mount(ctx, name, mountReq)
		if err != nil {
			return nil, err
		}
		versions = r.Versions
		return r.Files, nil
	})
	if err != nil {
		return forwardError(what, name, err)
	}
	logger := klog.FromContext(ctx).WithValues("pod", klog.KRef(pod.namespace, pod.name), "class", class.Name, "provider", name)
	syncProblems := s.syncSecrets(ctx, pod, class, res.Files)
	s.warn(logger, req.GetTargetPath(), pod, class, nil, syncProblems)
	*changed = res.Changed
	if res.Mounted || res.Changed {
		s.statuses.Record(podStatus(s.nodeID, pod, class.Name, req.GetTargetPath(), versions))
		logger.Info("published", "objects", len(versions), "files", len(res.Files), "mounted", res.Mounted, "rotated", !res.Mounted)
	}
	return nil
}

// forwardError maps a failed forwarded mount to its gRPC code, once, here.
// A plugin's own code is kept where it means the same to kubelet and the
// user; what only says "failed" becomes Internal.
func forwardError(what, name string, err error) error {
	var pe *provider.Error
	if !errors.As(err, &pe) {
		if errors.Is(err, atomicwriter.ErrInvalidPayload) {
			return status.Errorf(codes.Internal, "%s: provider %q returned files that cannot be written: %v", what, name, err)
		}
		return status.Errorf(codes.Internal, "%s: %v", what, err)
	}
	code := codes.Internal
	switch pe.Kind {
	case provider.KindInvalidName:
		code = codes.InvalidArgument
	case provider.KindNotInstalled:
		code = codes.FailedPrecondition
	case provider.KindUnavailable:
		code = codes.Unavailable
	case provider.KindCall:
		code = pluginCode(pe.Status)
	}
	return status.Errorf(code, "%s: %v", what, err)
}

// pluginCode is the code kvdriver answers with for a plugin's gRPC code.
func pluginCode(c codes.Code) codes.Code {
	switch c {
	case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Unauthenticated,
		codes.FailedPrecondition, codes.ResourceExhausted, codes.Unavailable, codes.DeadlineExceeded,
		codes.Canceled, codes.Aborted, codes.AlreadyExists, codes.OutOfRange:
		return c
	case codes.Unimplemented:
		return codes.FailedPrecondition // the plugin does not speak this protocol
	}
	return codes.Internal // Unknown, Internal, DataLoss: only "failed"
}
