// Package kubelet builds what kubelet sends a CSI node plugin, for the
// tests and the demo that play kubelet: the NodePublishVolumeRequest of a
// pod's inline volume, under kubelet's directory layout.
package kubelet

import (
	"encoding/json"
	"path/filepath"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
)

// TargetPath is where kubelet, with its root directory at root, asks for
// pod's CSI volume to be mounted.
func TargetPath(root string, pod *corev1.Pod, volume string) string {
	return filepath.Join(root, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", volume, "mount")
}

// Tokens is the service-account tokens kubelet passes when the CSIDriver
// asks for them (tokenRequests): audience -> token.
type Tokens map[string]string

// PublishRequest is what kubelet sends for pod's inline CSI volume naming
// SecretProviderClass class: the pod's identity (the CSIDriver asks for
// pod info on mount), secrets (its nodePublishSecretRef's data) and the
// pod's tokens, in the volume context as kubelet before 1.35 passes them.
func PublishRequest(root string, pod *corev1.Pod, volume, class string, secrets map[string]string, tokens Tokens) *csipb.NodePublishVolumeRequest {
	vc := map[string]string{
		"secretProviderClass":                    class,
		"csi.storage.k8s.io/pod.name":            pod.Name,
		"csi.storage.k8s.io/pod.namespace":       pod.Namespace,
		"csi.storage.k8s.io/pod.uid":             string(pod.UID),
		"csi.storage.k8s.io/serviceAccount.name": pod.Spec.ServiceAccountName,
		"csi.storage.k8s.io/ephemeral":           "true",
	}
	req := &csipb.NodePublishVolumeRequest{
		VolumeId:   "csi-" + string(pod.UID) + "-" + volume,
		TargetPath: TargetPath(root, pod, volume),
		VolumeCapability: &csipb.VolumeCapability{
			AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
			AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
		},
		Readonly:      true,
		Secrets:       secrets,
		VolumeContext: vc,
	}
	if len(tokens) > 0 {
		SetTokens(req, tokens)
	}
	return req
}

// SetFSGroup passes the pod's fsGroup as kubelet does to a driver with the
// VOLUME_MOUNT_GROUP node capability: in the mount capability's
// volume_mount_group, as a decimal string.
func SetFSGroup(req *csipb.NodePublishVolumeRequest, gid string) {
	req.GetVolumeCapability().GetMount().VolumeMountGroup = gid
}

// SetTokens puts tokens into req's volume context as kubelet does, each
// valid for an hour, replacing any there.
func SetTokens(req *csipb.NodePublishVolumeRequest, tokens Tokens) {
	expiry := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	all := map[string]map[string]string{}
	for aud, tok := range tokens {
		all[aud] = map[string]string{"token": tok, "expirationTimestamp": expiry}
	}
	b, _ := json.Marshal(all)
	req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"] = string(b)
}
