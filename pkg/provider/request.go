package provider

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strconv"

	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
)

// DefaultFileMode is the permission the upstream driver tells providers to
// give files (the request's permission field, "420").
const DefaultFileMode os.FileMode = 0o644

// AttrServiceAccountTokens is the volume attribute (or, Kubernetes 1.35+,
// the request secret) holding the pod's service-account tokens.
const AttrServiceAccountTokens = "csi.storage.k8s.io/serviceAccount.tokens"

// Mount is what kubelet asked for, as the forwarded request needs it.
type Mount struct {
	// Parameters are the class's spec.parameters.
	Parameters map[string]string
	// VolumeContext and Secrets are the NodePublishVolume request's.
	VolumeContext map[string]string
	Secrets       map[string]string
	TargetPath    string
}

// MountRequest builds the request the upstream driver sends: attributes is
// the class's parameters overlaid with every volume attribute kubelet sent,
// plus the service-account tokens from wherever kubelet put them (the
// request's secrets win, as upstream reads them); secrets is the request's
// secrets as JSON ("null" when there are none, as upstream encodes a nil
// map); permission is the default mode as a decimal JSON number. No object
// versions are sent: upstream sends none at NodePublishVolume either.
func MountRequest(m Mount) (*v1alpha1.MountRequest, error) {
	attrs := make(map[string]string, len(m.Parameters)+len(m.VolumeContext)+1)
	maps.Copy(attrs, m.Parameters)
	maps.Copy(attrs, m.VolumeContext)
	if tok := m.Secrets[AttrServiceAccountTokens]; tok != "" {
		attrs[AttrServiceAccountTokens] = tok
	}
	attributes, err := json.Marshal(attrs)
	if err != nil {
		return nil, fmt.Errorf("encode attributes: %w", err)
	}
	var secrets map[string]string
	if len(m.Secrets) > 0 {
		secrets = m.Secrets
	}
	secretsJSON, err := json.Marshal(secrets)
	if err != nil {
		return nil, fmt.Errorf("encode secrets: %w", err)
	}
	return &v1alpha1.MountRequest{
		Attributes: string(attributes),
		Secrets:    string(secretsJSON),
		TargetPath: m.TargetPath,
		Permission: strconv.FormatUint(uint64(DefaultFileMode), 10),
	}, nil
}
