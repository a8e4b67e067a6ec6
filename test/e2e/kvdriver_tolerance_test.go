package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// tolerated is a class with a mistake the upstream provider lets through,
// and what it mounts.
type tolerated struct {
	name   string
	params map[string]string
	// edit changes what kubelet sends (by default a service principal's
	// nodePublishSecretRef and no token).
	edit func(r *csipb.NodePublishVolumeRequest)
	// files are the files upstream writes, name -> content; modes default
	// to 0644.
	files map[string]string
	modes map[string]os.FileMode
	// warnings name the fields the Warning event and the strict refusal
	// must name; none means the class holds no mistake at all.
	warnings []string
}

func toleratedCases() []tolerated {
	objects := func(entries ...string) map[string]string { return badParams("objects", objectsParam(entries...)) }
	dbOnly := map[string]string{"db-password": dbPassword1}
	return []tolerated{
		{name: "misspelt filePermission", params: objects("objectName: db-password\nobjectType: secret\nfilePermision: \"0600\""),
			files: dbOnly, warnings: []string{"objects[0].filePermision", "did you mean filePermission?"}},
		{name: "empty objects array", params: badParams("objects", "array: []"),
			files: map[string]string{}, warnings: []string{"objects.array: lists no object"}},
		{name: "two objects one file", params: objects(
			"objectName: db-password\nobjectType: secret\nobjectAlias: same",
			"objectName: not-base64\nobjectType: secret\nobjectAlias: same"),
			files: map[string]string{"same": "this is *not* base64!"}, warnings: []string{`objects[0].objectAlias: "same" is also written by objects[1]`}},
		{name: "retired parameters", params: badParams("resourceGroup", "rg", "subscriptionId", "sub"),
			files: dbOnly, warnings: []string{"resourceGroup: is no longer read", "subscriptionId: is no longer read"}},
		{name: "userAssignedIdentityID with a service principal", params: badParams("userAssignedIdentityID", miClientID),
			files: dbOnly, warnings: []string{`userAssignedIdentityID: is ignored without useVMManagedIdentity`}},
		{name: "alias with an empty segment", params: objects("objectName: db-password\nobjectType: secret\nobjectAlias: dir//db"),
			files: map[string]string{"dir/db": dbPassword1}, warnings: []string{`objects[0].objectAlias: "dir//db" has empty or "." path segments; written as "dir/db"`}},
		{name: "negative objectVersionHistory", params: objects("objectName: db-password\nobjectType: secret\nobjectVersionHistory: -1"),
			files: dbOnly, warnings: []string{"objects[0].objectVersionHistory: -1 is negative"}},
		{name: "clientID without a token", params: badParams("clientID", wiClientID),
			files: dbOnly, warnings: []string{"clientID: is ignored: kubelet passed no service-account token"}},
		{name: "objectFormat pfx on a plain secret", params: objects("objectName: db-password\nobjectType: secret\nobjectFormat: pfx"),
			files: dbOnly, warnings: []string{"objectFormat pfx applies to the secret of a certificate; db-password is a plain secret"}},
		{name: "plain secret stored as application/x-pkcs12", params: objects("objectName: pfx-blob\nobjectType: secret",
			"objectName: pfx-blob\nobjectType: secret\nobjectAlias: pfx-blob.bin\nobjectEncoding: base64"),
			files: map[string]string{"pfx-blob": "UEZYIGJ5dGVz", "pfx-blob.bin": "PFX bytes"}},
		{name: "Secret keys in camel case", params: badParams(),
			edit: func(r *csipb.NodePublishVolumeRequest) {
				r.Secrets = map[string]string{"clientId": spClientID, "ClientSecret": spSecret}
			},
			files: dbOnly},
	}
}

// TestKVDriverToleratesWhatUpstreamTolerates publishes classes with the
// mistakes the upstream Azure provider lets through. The default kvdriver
// mounts exactly what upstream mounts and records one Warning event on the
// pod naming the field, however often kubelet republishes; a kvdriver with
// --strict-parameters refuses the same classes with InvalidArgument naming
// the field, and mounts nothing.
func TestKVDriverToleratesWhatUpstreamTolerates(t *testing.T) {
	e := startDriverEnv(t)
	strict := startKVDriver(t, e.cp, e.emu, "--object-cache-ttl", driverCacheTTL.String(), "--strict-parameters")
	seedBadInput(t, e)
	ctx := callCtx(t)
	const ns = "tolerated"
	require.NoError(t, e.cp.EnsureNamespace(ctx, ns))

	cases := toleratedCases()
	for _, tc := range cases {
		e.createClassOf(t, ns, slug(tc.name), "", tc.params)
	}
	e.waitForClasses(t, ns)
	strict.waitForClasses(t, ns)

	withWarnings := 0
	for _, tc := range cases {
		if len(tc.warnings) > 0 {
			withWarnings++
		}
	}
	strictErrors := strict.metric(t, "node_publish_error_total", map[string]string{"provider": "azure", "error_type": "InvalidArgument"})
	t.Cleanup(func() {
		// The metrics say the same, with the upstream driver's names.
		azure := map[string]string{"provider": "azure", "os_type": "linux"}
		assert.Equal(t, float64(withWarnings), e.metric(t, "kvnode_parameter_warnings_total", map[string]string{"provider": "azure"}))
		assert.GreaterOrEqual(t, e.metric(t, "node_publish_total", azure), float64(3*len(cases)))
		assert.Equal(t, float64(len(cases)), e.metric(t, "node_unpublish_total", nil))
		assert.Equal(t, strictErrors+float64(withWarnings), strict.metric(t, "node_publish_error_total",
			map[string]string{"provider": "azure", "error_type": "InvalidArgument"}))
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			class := slug(tc.name)
			pod := e.createPod(t, ns, class, "app")
			req := e.publishRequest(pod, "secrets", class, spCredentials(spClientID, spSecret), "")
			if tc.edit != nil {
				tc.edit(req)
			}
			mkTargetParent(t, req.TargetPath)
			for range 3 { // publish, then kubelet's republishes
				_, err := e.node.NodePublishVolume(ctx, req)
				require.NoError(t, err)
			}
			assertFiles(t, req.TargetPath, tc.files, tc.modes)

			if len(tc.warnings) == 0 {
				time.Sleep(500 * time.Millisecond) // the recorder sends in the background
				assert.Empty(t, warningEvents(t, e, pod), "no mistake, no event")
			} else {
				var events []corev1.Event
				require.Eventually(t, func() bool {
					events = warningEvents(t, e, pod)
					return len(events) > 0
				}, 10*time.Second, 50*time.Millisecond, "no Warning event on the pod")
				require.Len(t, events, 1)
				ev := events[0]
				assert.Equal(t, "SecretProviderClassWarning", ev.Reason)
				assert.Equal(t, "kvdriver", ev.Source.Component)
				assert.Equal(t, int32(1), ev.Count, "one event for three publishes of one class version")
				for _, want := range tc.warnings {
					assert.Contains(t, ev.Message, want)
				}
				assert.Contains(t, e.logs.String(), "Tolerated mistakes in the SecretProviderClass")
			}
			_, err := e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
			require.NoError(t, err)

			// The same class through the strict driver, for another pod.
			pod = e.createPod(t, ns, class+"-strict", "app")
			strictReq := strict.publishRequest(pod, "secrets", class, spCredentials(spClientID, spSecret), "")
			if tc.edit != nil {
				tc.edit(strictReq)
			}
			mkTargetParent(t, strictReq.TargetPath)
			_, err = strict.node.NodePublishVolume(ctx, strictReq)
			if len(tc.warnings) == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			st := status.Convert(err)
			assert.Equal(t, codes.InvalidArgument, st.Code(), st.Message())
			assert.Contains(t, st.Message(), "refused by --strict-parameters")
			for _, want := range tc.warnings {
				assert.Contains(t, st.Message(), want)
			}
			strict.assertNothingPublished(t, pod, strictReq.TargetPath, false)
		})
	}
}

// assertFiles checks that dir holds exactly files (name -> content), read
// through their visible paths, with modes (default 0644).
func assertFiles(t *testing.T, dir string, files map[string]string, modes map[string]os.FileMode) {
	t.Helper()
	data := filepath.Join(dir, "..data") + string(filepath.Separator) // the current set, behind the symlink
	got := map[string]string{}
	require.NoError(t, filepath.WalkDir(data, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(data, path)
		require.NoError(t, err)
		b, mode := readFile(t, dir, rel)
		got[rel] = string(b)
		want := os.FileMode(0o644)
		if m, ok := modes[rel]; ok {
			want = m
		}
		assert.Equal(t, want, mode, rel)
		return nil
	}))
	assert.Equal(t, files, got)
}

// warningEvents lists the Warning events recorded on pod.
func warningEvents(t *testing.T, e *driverEnv, pod *corev1.Pod) []corev1.Event {
	t.Helper()
	list, err := e.cp.Client.CoreV1().Events(pod.Namespace).List(callCtx(t), metav1.ListOptions{
		FieldSelector: fields.AndSelectors(
			fields.OneTermEqualSelector("involvedObject.name", pod.Name),
			fields.OneTermEqualSelector("type", corev1.EventTypeWarning),
		).String(),
	})
	require.NoError(t, err)
	return list.Items
}
