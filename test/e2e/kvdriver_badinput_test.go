package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/kubelet"
)

// The vaults and identities of the bad-input table.
const (
	badInputNamespace = "bad-input"
	// badVault holds good and undecodable secrets; spClientID may read it.
	badVault = "kvnode-bad"
	// throttledVault admits one authenticated request per ten minutes.
	throttledVault = "kvnode-throttled"
	// missingVault exists nowhere: in Azure its host name does not resolve.
	missingVault = "kvnode-nowhere"

	noAccessClientID = "22222222-3333-4444-8555-666666666666"
	noAccessSecret   = "e2e-no-access-secret"
)

// unset removes a parameter from badParams' defaults.
const unset = "\x00unset"

// badParams is a valid service-principal class for badVault (one secret),
// changed by key/value pairs; the value unset removes the key.
func badParams(kv ...string) map[string]string {
	p := map[string]string{
		"keyvaultName": badVault,
		"tenantId":     e2eTenant,
		"objects":      objectsParam("objectName: db-password\nobjectType: secret"),
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == unset {
			delete(p, kv[i])
			continue
		}
		p[kv[i]] = kv[i+1]
	}
	return p
}

// objectsParam is an objects parameter with one entry per argument, each
// the object's YAML lines.
func objectsParam(entries ...string) string {
	var b strings.Builder
	b.WriteString("array:\n")
	for _, entry := range entries {
		b.WriteString("  - |\n")
		for _, line := range strings.Split(entry, "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	return b.String()
}

// seedBadInput creates the vaults and identities the table's vault cases use.
func seedBadInput(t *testing.T, e *driverEnv) {
	t.Helper()
	emu := e.emu
	sp, err := emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: spClientID, Secret: spSecret})
	require.NoError(t, err)
	_, err = emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: noAccessClientID, Secret: noAccessSecret})
	require.NoError(t, err)
	for _, v := range []string{badVault, throttledVault} {
		require.NoError(t, emu.CreateVault(v, emulator.VaultOptions{TenantID: e2eTenant}))
		require.NoError(t, emu.Grant(v, sp.ObjectID))
	}
	for vault, secrets := range map[string]map[string]string{
		badVault:       {"db-password": dbPassword1, "not-base64": "this is *not* base64!"},
		throttledVault: {"s1": "v1", "s2": "v2", "s3": "v3"},
	} {
		for name, value := range secrets {
			_, err := emu.SetSecret(vault, name, value, emulator.SecretOptions{})
			require.NoError(t, err)
		}
	}
	// A plain secret whose content type claims a PFX: written as stored, as
	// upstream writes it (only a certificate's secret is converted).
	_, err = emu.SetSecret(badVault, "pfx-blob", "UEZYIGJ5dGVz", emulator.SecretOptions{ContentType: "application/x-pkcs12"}) // "PFX bytes"
	require.NoError(t, err)
	// One request per ten minutes: of a publish of three secrets at most one
	// is answered, and the Retry-After is far too long to wait out.
	require.NoError(t, emu.SetThrottle(throttledVault, 1, 10*time.Minute))
}

// badInput is one malformed class or request and what the user must get.
type badInput struct {
	name string
	// params are the class's spec.parameters.
	params map[string]string
	// provider is spec.provider; default azure.
	provider string
	// noClass: the class the volume names does not exist.
	noClass bool
	// edit changes what kubelet sends (by default a valid request with a
	// service principal's nodePublishSecretRef).
	edit func(r *csipb.NodePublishVolumeRequest)
	code codes.Code
	// message holds substrings of the status message: the field and the
	// problem.
	message []string
}

func badInputCases() []badInput {
	const tokensAttr = "csi.storage.k8s.io/serviceAccount.tokens"
	dropAttr := func(key string) func(*csipb.NodePublishVolumeRequest) {
		return func(r *csipb.NodePublishVolumeRequest) { delete(r.VolumeContext, key) }
	}
	wiParams := badParams("clientID", wiClientID)
	withTokens := func(raw string) func(*csipb.NodePublishVolumeRequest) {
		return func(r *csipb.NodePublishVolumeRequest) { r.Secrets = nil; r.VolumeContext[tokensAttr] = raw }
	}
	objects := func(entries ...string) map[string]string { return badParams("objects", objectsParam(entries...)) }
	outside := "must be a relative path inside the mount"

	return []badInput{
		// What kubelet sends.
		{name: "missing volume_id", edit: func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" },
			code: codes.InvalidArgument, message: []string{"volume_id is required"}},
		{name: "missing target_path", edit: func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "" },
			code: codes.InvalidArgument, message: []string{"target_path is required"}},
		{name: "relative target_path", edit: func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "pods/x/mount" },
			code: codes.InvalidArgument, message: []string{`target_path "pods/x/mount" must be absolute`}},
		{name: "missing volume_capability", edit: func(r *csipb.NodePublishVolumeRequest) { r.VolumeCapability = nil },
			code: codes.InvalidArgument, message: []string{"volume_capability is required"}},
		{name: "block volume_capability", edit: func(r *csipb.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
		}, code: codes.InvalidArgument, message: []string{"volume_capability", "only mount volumes are supported, not block"}},
		{name: "readonly false", edit: func(r *csipb.NodePublishVolumeRequest) { r.Readonly = false },
			code: codes.InvalidArgument, message: []string{"readOnly must be true"}},
		{name: "volume_mount_group not a number", edit: func(r *csipb.NodePublishVolumeRequest) { kubelet.SetFSGroup(r, "wheel") },
			code: codes.InvalidArgument, message: []string{`volume_mount_group "wheel" is not a group ID`}},
		{name: "volume_mount_group negative", edit: func(r *csipb.NodePublishVolumeRequest) { kubelet.SetFSGroup(r, "-1") },
			code: codes.InvalidArgument, message: []string{`volume_mount_group "-1" is not a group ID`}},
		{name: "volume_mount_group too large", edit: func(r *csipb.NodePublishVolumeRequest) { kubelet.SetFSGroup(r, "4294967296") },
			code: codes.InvalidArgument, message: []string{`volume_mount_group "4294967296" is not a group ID`}},
		{name: "missing secretProviderClass attribute", edit: dropAttr("secretProviderClass"),
			code: codes.InvalidArgument, message: []string{"volume attribute secretProviderClass is required"}},
		{name: "missing pod.name attribute", edit: dropAttr("csi.storage.k8s.io/pod.name"),
			code: codes.InvalidArgument, message: []string{"csi.storage.k8s.io/pod.name is missing", "podInfoOnMount: true"}},
		{name: "missing pod.namespace attribute", edit: dropAttr("csi.storage.k8s.io/pod.namespace"),
			code: codes.InvalidArgument, message: []string{"csi.storage.k8s.io/pod.namespace is missing", "podInfoOnMount: true"}},
		{name: "missing pod.uid attribute", edit: dropAttr("csi.storage.k8s.io/pod.uid"),
			code: codes.InvalidArgument, message: []string{"csi.storage.k8s.io/pod.uid is missing", "podInfoOnMount: true"}},

		// The SecretProviderClass.
		{name: "class not found", noClass: true,
			code: codes.NotFound, message: []string{"SecretProviderClass " + badInputNamespace + "/class-not-found not found"}},
		// Another store's provider: forwarded to its plugin, which this
		// node does not have.
		{name: "provider not installed", params: badParams(), provider: "vault",
			code: codes.FailedPrecondition, message: []string{`provider "vault": not installed on this node: no plugin socket at `, "/providers/vault.sock"}},
		{name: "provider name leaving the providers dir", params: badParams(), provider: "../../run/x",
			code: codes.InvalidArgument, message: []string{`spec.provider "../../run/x" must be 1 to 30 letters`}},
		{name: "missing keyvaultName", params: badParams("keyvaultName", unset),
			code: codes.InvalidArgument, message: []string{"keyvaultName: must be set"}},
		{name: "invalid keyvaultName", params: badParams("keyvaultName", "kv_under.score"),
			code: codes.InvalidArgument, message: []string{`keyvaultName: "kv_under.score" may contain only letters, digits and hyphens`}},
		{name: "keyvaultName too short", params: badParams("keyvaultName", "kv"),
			code: codes.InvalidArgument, message: []string{`keyvaultName: "kv" must be 3-24 characters long`}},
		{name: "missing tenantId", params: badParams("tenantId", unset),
			code: codes.InvalidArgument, message: []string{"tenantId: must be set"}},
		{name: "bad cloudName", params: badParams("cloudName", "AzureMarsCloud"),
			code: codes.InvalidArgument, message: []string{`cloudName: "AzureMarsCloud" is not one of`}},
		{name: "usePodIdentity not a boolean", params: badParams("usePodIdentity", "yes please"),
			code: codes.InvalidArgument, message: []string{`usePodIdentity: "yes please" is not a boolean`}},
		{name: "objects not YAML", params: badParams("objects", "array: [\n  - {unclosed"),
			code: codes.InvalidArgument, message: []string{"objects: is not valid YAML"}},
		{name: "objectName missing", params: objects("objectType: secret"),
			code: codes.InvalidArgument, message: []string{"objects[0].objectName: must be set"}},
		{name: "invalid objectType", params: objects("objectName: db-password\nobjectType: blob"),
			code: codes.InvalidArgument, message: []string{`objects[0].objectType: "blob" is not one of secret, key, cert`}},
		{name: "objectAlias climbs out", params: objects("objectName: db-password\nobjectType: secret\nobjectAlias: ../x"),
			code: codes.InvalidArgument, message: []string{`objects[0].objectAlias: "../x" ` + outside}},
		{name: "objectAlias absolute", params: objects("objectName: db-password\nobjectType: secret\nobjectAlias: /etc/x"),
			code: codes.InvalidArgument, message: []string{`objects[0].objectAlias: "/etc/x" ` + outside}},
		{name: "objectAlias climbs out midway", params: objects("objectName: db-password\nobjectType: secret\nobjectAlias: a/../../b"),
			code: codes.InvalidArgument, message: []string{`objects[0].objectAlias: "a/../../b" ` + outside}},
		{name: "alias under another object's file", params: objects(
			"objectName: db-password\nobjectType: secret\nobjectAlias: same",
			"objectName: not-base64\nobjectType: secret\nobjectAlias: same/inner"),
			code: codes.InvalidArgument, message: []string{`objects[1].objectAlias: "same/inner" needs "same" to be a directory, but objects[0] writes a file there`}},
		{name: "filePermission with setuid", params: objects("objectName: db-password\nobjectType: secret\nfilePermission: \"4755\""),
			code: codes.InvalidArgument, message: []string{`objects[0].filePermission: "4755" must be at most 0777: setuid, setgid and sticky bits are refused`}},
		{name: "identity binding without its audience's token", params: badParams("useAzureTokenProxy", "true", "clientID", wiClientID),
			code: codes.InvalidArgument, message: []string{"useAzureTokenProxy: " + tokensAttr + " has no token for audience api://AKSIdentityBinding"}},
		{name: "identity binding on a node without a token proxy", params: badParams("useAzureTokenProxy", "true", "clientID", wiClientID),
			edit: func(r *csipb.NodePublishVolumeRequest) {
				r.Secrets = nil
				r.VolumeContext[tokensAttr] = `{"api://AKSIdentityBinding":{"token":"` + plantedToken + `","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
			},
			code: codes.FailedPrecondition, message: []string{"useAzureTokenProxy: token proxy: not configured", "--token-proxy-url or $AZURE_KUBERNETES_TOKEN_PROXY"}},
		{name: "objectVersionHistory not a number", params: objects("objectName: db-password\nobjectType: secret\nobjectVersionHistory: three"),
			code: codes.InvalidArgument, message: []string{`objects[0].objectVersionHistory: "three" is not an integer`}},
		{name: "filePermission not octal", params: objects("objectName: db-password\nobjectType: secret\nfilePermission: \"0986\""),
			code: codes.InvalidArgument, message: []string{`objects[0].filePermission: "0986" is not an octal number`}},
		{name: "objectEncoding on a key", params: objects("objectName: rsa-key\nobjectType: key\nobjectEncoding: base64"),
			code: codes.InvalidArgument, message: []string{"objects[0].objectEncoding: applies only to objectType secret"}},
		{name: "objectFormat pfx on a cert", params: objects("objectName: web-tls\nobjectType: cert\nobjectFormat: pfx"),
			code: codes.InvalidArgument, message: []string{"objects[0].objectFormat: pfx applies only to objectType secret"}},

		// The identity.
		{name: "service principal without nodePublishSecretRef", params: badParams(),
			edit:    func(r *csipb.NodePublishVolumeRequest) { r.Secrets = nil },
			code:    codes.InvalidArgument,
			message: []string{`service principal: nodePublishSecretRef must name a Secret with keys "clientid" and "clientsecret"; "clientid" and "clientsecret" missing`}},
		{name: "service principal without clientsecret", params: badParams(),
			edit:    func(r *csipb.NodePublishVolumeRequest) { delete(r.Secrets, "clientsecret") },
			code:    codes.InvalidArgument,
			message: []string{`service principal: nodePublishSecretRef must name a Secret with keys "clientid" and "clientsecret"; "clientsecret" missing`}},
		{name: "workload identity without a token", params: wiParams,
			edit:    func(r *csipb.NodePublishVolumeRequest) { r.Secrets = nil; delete(r.VolumeContext, tokensAttr) },
			code:    codes.InvalidArgument,
			message: []string{"workload identity: no " + tokensAttr, "tokenRequests with audience api://AzureADTokenExchange"}},
		{name: "workload identity token for another audience", params: wiParams,
			edit:    withTokens(`{"api://other":{"token":"header.payload.signature","expirationTimestamp":"2030-01-01T00:00:00Z"}}`),
			code:    codes.InvalidArgument,
			message: []string{"workload identity: " + tokensAttr + " has no token for audience api://AzureADTokenExchange"}},
		{name: "workload identity tokens not JSON", params: wiParams,
			edit:    withTokens(`{"api://AzureADTokenExchange":`),
			code:    codes.InvalidArgument,
			message: []string{"workload identity: " + tokensAttr + " is not valid JSON"}},
		{name: "usePodIdentity with nmi not running", params: badParams("usePodIdentity", "true"),
			code: codes.Unavailable, message: []string{"pod identity: nmi at http://127.0.0.1:2579"}},
		{name: "wrong client secret", params: badParams(),
			edit:    func(r *csipb.NodePublishVolumeRequest) { r.Secrets["clientsecret"] = "not-" + spSecret },
			code:    codes.PermissionDenied,
			message: []string{"fetch secret " + badVault + "/db-password", "AADSTS7000215"}},

		// The vault.
		{name: "secret not found", params: objects("objectName: db-password\nobjectType: secret", "objectName: no-such-secret\nobjectType: secret"),
			code: codes.NotFound, message: []string{"fetch secret " + badVault + "/no-such-secret: Key Vault answered 404 (SecretNotFound)"}},
		{name: "no access", params: badParams(),
			edit:    func(r *csipb.NodePublishVolumeRequest) { r.Secrets = spCredentials(noAccessClientID, noAccessSecret) },
			code:    codes.PermissionDenied,
			message: []string{"fetch secret " + badVault + "/db-password: Key Vault answered 403 (Forbidden)"}},
		{name: "throttled vault", params: badParams("keyvaultName", throttledVault, "objects", objectsParam(
			"objectName: s1\nobjectType: secret", "objectName: s2\nobjectType: secret", "objectName: s3\nobjectType: secret")),
			code: codes.ResourceExhausted, message: []string{"fetch secret " + throttledVault + "/s", "Key Vault answered 429 (Throttled)"}},
		{name: "unknown vault", params: badParams("keyvaultName", missingVault),
			code: codes.NotFound, message: []string{`no vault named "` + missingVault + `" in this cloud`, "check keyvaultName and cloudName"}},
		{name: "secret not base64 with objectEncoding base64", params: objects("objectName: not-base64\nobjectType: secret\nobjectEncoding: base64"),
			code: codes.FailedPrecondition, message: []string{"convert secret " + badVault + "/not-base64", "objectEncoding base64: the value is not valid base64"}},
	}
}

func spCredentials(clientID, secret string) map[string]string {
	return map[string]string{"clientid": clientID, "clientsecret": secret}
}

// slug turns a case name into a Kubernetes object name.
func slug(name string) string {
	return strings.Trim(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(name), "-"), "-")
}

// plantedToken is a service-account token kubelet would pass in the volume
// context of every publish (the chart's CSIDriver asks for one): shaped like
// a real one, recognisable, never to be printed.
const plantedToken = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imt2bm9kZS1wbGFudGVkIn0." +
	"eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YmFkLWlucHV0OmFwcCJ9.a3Zub2RlLXBsYW50ZWQtc2lnbmF0dXJl"

// jwtShaped finds anything shaped like a JWT in a log or a message.
var jwtShaped = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.`)

// TestKVDriverBadInput publishes malformed classes and requests through the
// real kvdriver, twice each, and checks that each gets the status a user
// can act on and changes nothing: no mount, no files, no pod status. It runs
// at the default verbosity and at -v=10, with a service-account token in
// every request's volume context and a service principal's secret in its
// secrets, next to successful and refused workload-identity and
// service-principal mounts, and checks that no token or secret reaches the
// driver's log or any status message kubelet would record.
func TestKVDriverBadInput(t *testing.T) {
	for _, verbosity := range []string{"0", "10"} {
		t.Run("v="+verbosity, func(t *testing.T) {
			e := startDriverEnvArgs(t, "--object-cache-ttl", driverCacheTTL.String(), "-v", verbosity)
			seedBadInput(t, e)
			ctx := callCtx(t)
			require.NoError(t, e.cp.EnsureNamespace(ctx, badInputNamespace))
			messages := publishBadInputs(t, e)
			messages = append(messages, publishWithCredentials(t, e)...)

			logs := e.logs.String()
			require.NotEmpty(t, logs)
			// client-go writes API bodies as hex dumps, which split a
			// value over lines: their text is checked joined.
			texts := append([]string{logs, hexDumpText(logs)}, messages...)
			assert.NotContains(t, logs, `"Response Body"`, "client-go logged an API answer")
			assert.NotContains(t, logs, `"Request Body" body=<`, "client-go logged an API request's body")
			if verbosity == "10" {
				assert.Contains(t, logs, "Log verbosity capped")
			}
			for _, secret := range append(e.planted, dbPassword1, spSecret, noAccessSecret, "not-"+spSecret, plantedToken) {
				for _, text := range texts {
					if i := strings.Index(text, secret); i >= 0 {
						t.Fatalf("a credential reached the driver's log or a status message: ...%s...", text[max(0, i-200):i])
					}
				}
			}
			for _, text := range texts {
				require.False(t, jwtShaped.MatchString(text), "a token-shaped string reached the driver's log or a status message: %q",
					jwtShaped.FindString(text))
			}
		})
	}
}

// publishBadInputs runs the table and returns every status message.
func publishBadInputs(t *testing.T, e *driverEnv) []string {
	cases := badInputCases()
	pods := make([]*corev1.Pod, len(cases))
	for i, tc := range cases {
		name := slug(tc.name)
		require.LessOrEqual(t, len(name), 63, name)
		if !tc.noClass {
			e.createClassOf(t, badInputNamespace, name, tc.provider, tc.params)
		}
		pods[i] = e.createPod(t, badInputNamespace, name, "app")
	}
	e.waitForClasses(t, badInputNamespace)

	var messages []string
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := pods[i]
			req := e.publishRequest(pod, "secrets", pod.Name, spCredentials(spClientID, spSecret), plantedToken)
			target := req.TargetPath
			if tc.edit != nil {
				tc.edit(req)
			}
			mkTargetParent(t, target)
			// Kubelet leaves the target to the driver; older kubelets
			// created it. Half the cases start from each.
			existed := i%2 == 1
			if existed {
				require.NoError(t, os.Mkdir(target, 0o750))
			}
			for run := range 2 {
				_, err := e.node.NodePublishVolume(callCtx(t), req)
				require.Error(t, err, "run %d", run)
				st, ok := status.FromError(err)
				require.True(t, ok, "run %d: not a gRPC status: %v", run, err)
				if run == 0 {
					t.Logf("%s: %s", st.Code(), st.Message())
				}
				messages = append(messages, st.Message())
				assert.Equal(t, tc.code, st.Code(), "run %d: %s", run, st.Message())
				for _, want := range tc.message {
					assert.Contains(t, st.Message(), want, "run %d", run)
				}
				e.assertNothingPublished(t, pod, target, existed)
			}
		})
	}
	return messages
}

// publishWithCredentials mounts with a service principal and with workload
// identity (a real token from the API server), republishes, has a pod of
// another ServiceAccount refused, and unpublishes; it records the tokens in
// e.planted and returns the status messages.
func publishWithCredentials(t *testing.T, e *driverEnv) []string {
	ctx := callCtx(t)
	jwks, err := e.cp.JWKS(ctx)
	require.NoError(t, err)
	require.NoError(t, e.emu.TrustIssuer(e.cp.Issuer, jwks))
	wi, err := e.emu.AddApplication(emulator.Principal{TenantID: e2eTenant, ClientID: wiClientID, Federated: []emulator.FederatedCredential{
		{Issuer: e.cp.Issuer, Subject: "system:serviceaccount:" + badInputNamespace + ":app"},
	}})
	require.NoError(t, err)
	require.NoError(t, e.emu.Grant(badVault, wi.ObjectID))
	e.createClassOf(t, badInputNamespace, "good-sp", "", badParams())
	e.createClassOf(t, badInputNamespace, "good-wi", "", badParams("clientID", wiClientID))
	e.waitForClasses(t, badInputNamespace)

	token := func(pod *corev1.Pod) string {
		st, err := e.cp.ServiceAccountToken(ctx, badInputNamespace, pod.Spec.ServiceAccountName,
			[]string{emulator.DefaultFederatedAudience}, time.Hour, pod)
		require.NoError(t, err)
		e.planted = append(e.planted, st.Token)
		return st.Token
	}
	var messages []string
	for _, class := range []string{"good-sp", "good-wi"} {
		pod := e.createPod(t, badInputNamespace, class+"-0", "app")
		req := e.publishRequest(pod, "secrets", class, spCredentials(spClientID, spSecret), token(pod))
		mkTargetParent(t, req.TargetPath)
		for range 2 { // publish, then kubelet's republish
			_, err := e.node.NodePublishVolume(ctx, req)
			require.NoError(t, err, class)
		}
		b, _ := readFile(t, req.TargetPath, "db-password")
		assert.Equal(t, dbPassword1, string(b))
		_, err = e.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
		require.NoError(t, err)
	}
	// A ServiceAccount without a federated credential: Entra ID refuses the
	// exchange, and the refusal is reported without the assertion.
	intruder := e.createPod(t, badInputNamespace, "intruder-0", "intruder")
	req := e.publishRequest(intruder, "secrets", "good-wi", nil, token(intruder))
	mkTargetParent(t, req.TargetPath)
	_, err = e.node.NodePublishVolume(ctx, req)
	requireCode(t, err, "PermissionDenied", "AADSTS700213")
	messages = append(messages, status.Convert(err).Message())
	return messages
}

// sentinels numbers waitForClasses' sentinel classes, unique across the
// drivers of one control plane.
var sentinels atomic.Int64

// createClassOf stores a SecretProviderClass of provider (default azure).
func (e *driverEnv) createClassOf(t testing.TB, namespace, name, provider string, params map[string]string) {
	t.Helper()
	if provider == "" {
		provider = "azure"
	}
	class := &spc.SecretProviderClass{
		TypeMeta:   metav1.TypeMeta{APIVersion: spc.SchemeGroupVersion.String(), Kind: "SecretProviderClass"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       spc.SecretProviderClassSpec{Provider: spc.Provider(provider), Parameters: params},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(class)
	require.NoError(t, err)
	_, err = e.dyn.Resource(spc.SecretProviderClassesResource).Namespace(namespace).
		Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// waitForClasses returns once kvdriver's informer has every class created
// so far in namespace: it creates one more, invalid, class and publishes
// against it until the answer is InvalidArgument rather than NotFound (the
// informer sees a namespace's objects in creation order).
func (e *driverEnv) waitForClasses(t testing.TB, namespace string) {
	t.Helper()
	name := fmt.Sprintf("informer-sentinel-%d", sentinels.Add(1))
	e.createClassOf(t, namespace, name, "", map[string]string{})
	pod := e.createPod(t, namespace, name, "app")
	req := e.publishRequest(pod, "secrets", name, nil, "")
	mkTargetParent(t, req.TargetPath)
	require.Eventually(t, func() bool {
		_, err := e.node.NodePublishVolume(callCtx(t), req)
		return status.Code(err) == codes.InvalidArgument
	}, 30*time.Second, 50*time.Millisecond, "kvdriver never saw SecretProviderClass %s/%s", namespace, name)
}

// assertNothingPublished checks what a failed publish must leave: the
// target as it was (absent, or the empty directory that was there), no mount
// anywhere under the pod's directory, and no SecretProviderClassPodStatus
// for the pod.
func (e *driverEnv) assertNothingPublished(t *testing.T, pod *corev1.Pod, target string, existed bool) {
	t.Helper()
	podDir := filepath.Join(e.kubelet, "pods", string(pod.UID))
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, m := range mounts {
		assert.False(t, m.MountPoint == podDir || strings.HasPrefix(m.MountPoint, podDir+string(filepath.Separator)),
			"%s is mounted (%s)", m.MountPoint, m.FsType)
	}

	if existed {
		entries, err := os.ReadDir(target)
		require.NoError(t, err, "the target directory that was there must stay")
		assert.Empty(t, entries, "files in the target directory")
		var st, parent unix.Stat_t
		require.NoError(t, unix.Stat(target, &st))
		require.NoError(t, unix.Stat(filepath.Dir(target), &parent))
		assert.Equal(t, parent.Dev, st.Dev, "the target is a mount point")
	} else {
		_, err := os.Lstat(target)
		assert.ErrorIs(t, err, os.ErrNotExist, "the target path was left behind")
	}

	list, err := e.dyn.Resource(spc.SecretProviderClassPodStatusesResource).Namespace(pod.Namespace).
		List(callCtx(t), metav1.ListOptions{})
	require.NoError(t, err)
	for _, item := range list.Items {
		podName, _, _ := unstructured.NestedString(item.Object, "status", "podName")
		assert.NotEqual(t, pod.Name, podName, "SecretProviderClassPodStatus %s was recorded", item.GetName())
	}
}
