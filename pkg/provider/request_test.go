package provider

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMountRequest(t *testing.T) {
	const tokens = `{"vault":{"token":"tok","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
	params := map[string]string{"roleName": "app", "objects": "- path: a", "csi.storage.k8s.io/pod.name": "set-by-the-class"}
	vc := map[string]string{
		"secretProviderClass":                    "vault-db",
		"csi.storage.k8s.io/pod.name":            "web-0",
		"csi.storage.k8s.io/pod.namespace":       "apps",
		"csi.storage.k8s.io/pod.uid":             "uid-1",
		"csi.storage.k8s.io/serviceAccount.name": "web",
		"csi.storage.k8s.io/ephemeral":           "true",
	}
	for _, tc := range []struct {
		name        string
		vc, secrets map[string]string
		wantAttrs   map[string]string
		wantSecrets string
	}{
		{
			name: "no secrets, no tokens", vc: vc,
			wantAttrs: map[string]string{"roleName": "app", "objects": "- path: a", "secretProviderClass": "vault-db",
				"csi.storage.k8s.io/pod.name": "web-0", "csi.storage.k8s.io/pod.namespace": "apps",
				"csi.storage.k8s.io/pod.uid": "uid-1", "csi.storage.k8s.io/serviceAccount.name": "web",
				"csi.storage.k8s.io/ephemeral": "true"},
			wantSecrets: "null",
		},
		{
			name: "empty secrets are null too", vc: vc, secrets: map[string]string{},
			wantSecrets: "null",
		},
		{
			name: "nodePublishSecretRef and tokens in the volume context",
			vc:   with(vc, AttrServiceAccountTokens, tokens), secrets: map[string]string{"token": "s3cr3t"},
			wantSecrets: `{"token":"s3cr3t"}`,
		},
		{
			name: "tokens in the secrets (Kubernetes 1.35+) are copied to the attributes",
			vc:   vc, secrets: map[string]string{AttrServiceAccountTokens: tokens},
			wantSecrets: `{"csi.storage.k8s.io/serviceAccount.tokens":` + jsonString(t, tokens) + `}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := MountRequest(Mount{Parameters: params, VolumeContext: tc.vc, Secrets: tc.secrets, TargetPath: "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/s/mount"})
			require.NoError(t, err)
			var attrs map[string]string
			require.NoError(t, json.Unmarshal([]byte(req.GetAttributes()), &attrs))
			assert.Equal(t, "web-0", attrs["csi.storage.k8s.io/pod.name"], "kubelet's attributes win over the class's parameters")
			assert.Equal(t, "app", attrs["roleName"])
			if tc.wantAttrs != nil {
				assert.Equal(t, tc.wantAttrs, attrs)
			}
			if tc.vc[AttrServiceAccountTokens] != "" || tc.secrets[AttrServiceAccountTokens] != "" {
				assert.Equal(t, tokens, attrs[AttrServiceAccountTokens])
			} else {
				assert.NotContains(t, attrs, AttrServiceAccountTokens)
			}
			assert.Equal(t, tc.wantSecrets, req.GetSecrets())
			assert.Equal(t, "420", req.GetPermission(), "0644 as a JSON number, as upstream sends it")
			assert.Equal(t, "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/s/mount", req.GetTargetPath())
			assert.Empty(t, req.GetCurrentObjectVersion())
		})
	}
}

func with(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for key, val := range m {
		out[key] = val
	}
	return out
}

func jsonString(t *testing.T, s string) string {
	b, err := json.Marshal(s)
	require.NoError(t, err)
	return string(b)
}
