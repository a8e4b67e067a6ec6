package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// IdentityServer answers the CSI Identity service.
type IdentityServer struct {
	csipb.UnimplementedIdentityServer
	name    string
	version string
	// ready reports whether the plugin can serve NodePublishVolume (its
	// SecretProviderClass informer has synced).
	ready func() bool
}

var _ csipb.IdentityServer = (*IdentityServer)(nil)

// NewIdentityServer returns the Identity service for a driver named name.
func NewIdentityServer(name, version string, ready func() bool) *IdentityServer {
	if ready == nil {
		ready = func() bool { return true }
	}
	return &IdentityServer{name: name, version: version, ready: ready}
}

// GetPluginInfo returns the driver name and version.
func (s *IdentityServer) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	if s.name == "" {
		return nil, status.Error(codes.Unavailable, "driver name not configured")
	}
	return &csipb.GetPluginInfoResponse{Name: s.name, VendorVersion: s.version}, nil
}

// GetPluginCapabilities reports none: kvdriver is a node-only plugin with no
// controller service and no topology.
func (s *IdentityServer) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

// Probe reports readiness.
func (s *IdentityServer) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(s.ready())}, nil
}
