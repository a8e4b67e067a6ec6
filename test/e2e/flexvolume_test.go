package e2e

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

// The azure/kv driver run as kubelet runs a FlexVolume driver: the file
// <plugin dir>/azure~kv/kv, executed once per call with argv[1] the call,
// its stdout and stderr read together as one JSON result. No control plane:
// the driver needs none.

const (
	flexTenant    = "3c2b1a09-8f7e-4d6c-9b5a-493827161504"
	flexSPClient  = "aaaaaaaa-1111-4222-8333-444444444444"
	flexSPSecret  = "flexvolume-service-principal-secret"
	flexMIClient  = "bbbbbbbb-5555-4666-8777-888888888888"
	flexVault     = "kvflex-e2e"
	flexGovVault  = "kvflex-gov"
	flexSecret1   = "flexvolume-secret-one-value"
	flexSecretOld = "flexvolume-secret-one-old-value"
	flexGovSecret = "flexvolume-us-government-secret"
	flexFSGroup   = 2000
)

// flexEnv is a node with the azure/kv driver installed and the emulator.
type flexEnv struct {
	emu *emulator.Emulator
	// driver is <plugin dir>/azure~kv/kv, the kvdriver binary by that name.
	driver string
	// kubelet is kubelet's root directory (pods/<uid>/volumes/...).
	kubelet string
	// oldVersion is the first version of secret1.
	oldVersion string
	// cert is the certificate cert1.
	cert *emulator.IssuedCertificate
	// planted are values that must never appear in output or logs.
	planted []string
}

func startFlexEnv(t *testing.T) *flexEnv {
	t.Helper()
	testenv.RequireNetns(t)
	emu := emulator.StartT(t)

	root := t.TempDir()
	// Registered after TempDir, so it runs first: a test that stops early
	// leaves no tmpfs behind.
	t.Cleanup(func() { unmountUnder(t, root) })
	pluginDir := filepath.Join(root, "volume-plugins", "azure~kv")
	require.NoError(t, os.MkdirAll(pluginDir, 0o755))
	driver := filepath.Join(pluginDir, "kv")
	require.NoError(t, os.Symlink(testenv.Binary(t, "kvdriver"), driver))

	e := &flexEnv{emu: emu, driver: driver, kubelet: filepath.Join(root, "kubelet")}
	sp, err := emu.AddApplication(emulator.Principal{TenantID: flexTenant, ClientID: flexSPClient, Secret: flexSPSecret})
	require.NoError(t, err)
	mi, err := emu.AddManagedIdentity(emulator.Principal{TenantID: flexTenant, ClientID: flexMIClient})
	require.NoError(t, err)
	require.NoError(t, emu.CreateVault(flexVault, emulator.VaultOptions{TenantID: flexTenant}))
	require.NoError(t, emu.CreateVault(flexGovVault, emulator.VaultOptions{TenantID: flexTenant, Cloud: "AzureUSGovernmentCloud"}))
	for _, v := range []string{flexVault, flexGovVault} {
		for _, p := range []emulator.Principal{sp, mi} {
			require.NoError(t, emu.Grant(v, p.ObjectID))
		}
	}
	e.oldVersion, err = emu.SetSecret(flexVault, "secret1", flexSecretOld, emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = emu.SetSecret(flexVault, "secret1", flexSecret1, emulator.SecretOptions{})
	require.NoError(t, err)
	_, err = emu.CreateKey(flexVault, "key1", emulator.KeyOptions{Type: "RSA", Size: 2048})
	require.NoError(t, err)
	e.cert, err = emu.CreateCertificate(flexVault, "cert1", emulator.CertificateOptions{
		ContentType: "application/x-pkcs12", ChainLength: 3, KeyType: "RSA", ShuffleChain: true})
	require.NoError(t, err)
	_, err = emu.SetSecret(flexGovVault, "secret1", flexGovSecret, emulator.SecretOptions{})
	require.NoError(t, err)
	e.planted = []string{flexSPSecret, base64.StdEncoding.EncodeToString([]byte(flexSPSecret)), flexSecret1, flexSecretOld, flexGovSecret}
	return e
}

// flexPod is the pod a volume is mounted for.
type flexPod struct {
	name, namespace, uid, serviceAccount string
}

var nginxPod = flexPod{name: "nginx-flex-kv", namespace: "default", uid: "0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", serviceAccount: "default"}

// target is kubelet's directory for a FlexVolume volume of pod, created
// as kubelet creates it before it calls mount.
func (e *flexEnv) target(t *testing.T, pod flexPod, volume string) string {
	t.Helper()
	dir := filepath.Join(e.kubelet, "pods", pod.uid, "volumes", "azure~kv", volume)
	require.NoError(t, os.MkdirAll(dir, 0o750))
	return dir
}

// kubeletOptions is the JSON kubelet passes to mount: the volume's options,
// the secretRef Secret's data base64-encoded under kubernetes.io/secret/,
// and kubelet's own keys. fsGroup < 0 leaves it out.
func kubeletOptions(t *testing.T, pod flexPod, volume string, options, secret map[string]string, fsGroup int) string {
	t.Helper()
	opts := map[string]string{
		"kubernetes.io/fsType":              "",
		"kubernetes.io/readwrite":           "rw",
		"kubernetes.io/pvOrVolumeName":      volume,
		"kubernetes.io/pod.name":            pod.name,
		"kubernetes.io/pod.namespace":       pod.namespace,
		"kubernetes.io/pod.uid":             pod.uid,
		"kubernetes.io/serviceAccount.name": pod.serviceAccount,
	}
	if fsGroup >= 0 {
		opts["kubernetes.io/mounterArgs.FsGroup"] = strconv.Itoa(fsGroup)
	}
	for k, v := range secret {
		opts["kubernetes.io/secret/"+k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	for k, v := range options {
		opts[k] = v
	}
	b, err := json.Marshal(opts)
	require.NoError(t, err)
	return string(b)
}

// merged is base with edit's keys set over it.
func merged(base, edit map[string]string) map[string]string {
	out := maps.Clone(base)
	maps.Copy(out, edit)
	return out
}

// spSecretData is the data of the kvcreds Secret of the driver's documentation.
var spSecretData = map[string]string{"clientid": flexSPClient, "clientsecret": flexSPSecret}

// flexResult is what one call printed and how it exited.
type flexResult struct {
	Status       string `json:"status"`
	Message      string `json:"message"`
	Capabilities *struct {
		Attach bool `json:"attach"`
	} `json:"capabilities"`
	exitCode int
	output   string
}

// run executes the driver file as kubelet does (argv[0] the file, no
// flags) with argv[1:] = args.
func (e *flexEnv) run(t *testing.T, args ...string) flexResult {
	t.Helper()
	return e.exec(t, e.driver, args...)
}

// exec runs bin with args in the node's environment (the emulator as the
// proxy) and decodes stdout and stderr together, as kubelet does: they must
// hold exactly one JSON object.
func (e *flexEnv) exec(t *testing.T, bin string, args ...string) flexResult {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, e.emu.Env()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var res flexResult
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.exitCode = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %s: %v", bin, err)
	}
	res.output = string(out)
	dec := json.NewDecoder(strings.NewReader(res.output))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&res), "output must be one JSON result: %q", res.output)
	assert.False(t, dec.More(), "output must be one JSON result: %q", res.output)
	assert.Equal(t, strings.Count(res.output, "\n"), 1, "one line: %q", res.output)
	for _, s := range e.planted {
		assert.NotContains(t, res.output, s, "a secret reached the driver's output")
	}
	return res
}

func requireSuccess(t *testing.T, r flexResult) {
	t.Helper()
	require.Equal(t, "Success", r.Status, "message: %s", r.Message)
	require.Equal(t, 0, r.exitCode)
}

// assertFile checks a file's bytes and mode.
func assertFile(t *testing.T, dir, name string, want []byte, mode os.FileMode) {
	t.Helper()
	b, m := readFile(t, dir, name)
	assert.Equal(t, string(want), string(b), name)
	assert.Equal(t, mode, m, name)
}

func assertNotMounted(t *testing.T, dir string) {
	t.Helper()
	notMnt, err := mount.New("").IsLikelyNotMountPoint(dir)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	require.NoError(t, err)
	assert.True(t, notMnt, "%s must not be a mount point", dir)
}

// unmountTwice unmounts as kubelet does, then again: both succeed and
// nothing is left.
func (e *flexEnv) unmountTwice(t *testing.T, dir string) {
	t.Helper()
	for i := range 2 {
		r := e.run(t, "unmount", dir)
		assert.Equal(t, "Success", r.Status, "unmount %d: %s", i, r.Message)
		assert.Equal(t, 0, r.exitCode)
	}
	assertNotMounted(t, dir)
	assert.NoDirExists(t, dir)
}

func TestFlexVolumeInitAndUnsupportedCalls(t *testing.T) {
	e := startFlexEnv(t)
	r := e.run(t, "init")
	requireSuccess(t, r)
	assert.Equal(t, `{"status":"Success","capabilities":{"attach":false}}`+"\n", r.output)

	// The same driver as a subcommand, for wrappers.
	r = e.exec(t, testenv.Binary(t, "kvdriver"), "flexvolume", "init")
	assert.Equal(t, `{"status":"Success","capabilities":{"attach":false}}`+"\n", r.output)

	for _, args := range [][]string{
		{"attach", `{"keyvaultname":"x"}`, "node-1"},
		{"waitforattach", "/dev/x", `{}`},
		{"mountdevice", "/mnt/x", "/dev/x", `{}`},
		{"getvolumename", `{}`},
		{"isattached", `{}`, "node-1"},
	} {
		r := e.run(t, args...)
		assert.Equal(t, "Not supported", r.Status, args[0])
		assert.Equal(t, 0, r.exitCode, args[0], "exit 0 on every answered call: kubelet logs a failed exec's argv")
	}
}

// TestFlexVolumeCanonicalExample mounts the pod volume of the original
// driver's documentation, with the vault names of the emulator.
func TestFlexVolumeCanonicalExample(t *testing.T) {
	e := startFlexEnv(t)
	dir := e.target(t, nginxPod, "test")
	opts := kubeletOptions(t, nginxPod, "test", map[string]string{
		"usepodidentity":      "false",
		"keyvaultname":        flexVault,
		"keyvaultobjectnames": "secret1;key1",
		"keyvaultobjecttypes": "secret;key",
		"resourcegroup":       "testresourcegroup",
		"subscriptionid":      "testsub",
		"tenantid":            flexTenant,
	}, spSecretData, flexFSGroup)

	for range 2 { // kubelet mounts once; a repeated call changes nothing
		requireSuccess(t, e.run(t, "mount", dir, opts))
		assertTmpfs(t, dir)
		assertFile(t, dir, "secret1", []byte(flexSecret1), 0o644)
	}
	b, _ := readFile(t, dir, "key1")
	blocks := pemBlocks(t, b)
	require.Len(t, blocks, 1)
	assert.Equal(t, "PUBLIC KEY", blocks[0].Type)
	pub, err := x509.ParsePKIXPublicKey(blocks[0].Bytes)
	require.NoError(t, err)
	assert.IsType(t, &rsa.PublicKey{}, pub)

	// kubelet's fsGroup owns the files.
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(filepath.Join(dir, "secret1"), &st))
	assert.Equal(t, uint32(flexFSGroup), st.Gid)
	// The atomic writer's layout, as the CSI path writes it.
	link, err := os.Readlink(filepath.Join(dir, "secret1"))
	require.NoError(t, err)
	assert.Equal(t, filepath.Join("..data", "secret1"), link)

	e.unmountTwice(t, dir)
}

// TestFlexVolumeServicePrincipal mounts every object kind with aliases and
// versions through a wrapper ("kvdriver flexvolume --log-file ..."), and
// checks that the log has no secret.
func TestFlexVolumeServicePrincipal(t *testing.T) {
	e := startFlexEnv(t)
	dir := e.target(t, nginxPod, "secrets")
	logFile := filepath.Join(t.TempDir(), "kv-driver.log")
	opts := kubeletOptions(t, nginxPod, "secrets", map[string]string{
		"keyvaultname":           flexVault,
		"keyvaultobjectnames":    "secret1;secret1;key1;cert1;cert1",
		"keyvaultobjecttypes":    "secret;secret;key;cert;secret",
		"keyvaultobjectversions": ";" + e.oldVersion + ";;;",
		"keyvaultobjectaliases":  "db/current;db/previous;;tls/leaf.crt;tls/bundle.pem",
		"tenantid":               flexTenant,
	}, spSecretData, -1)

	r := e.exec(t, testenv.Binary(t, "kvdriver"), "flexvolume", "--log-file", logFile, "-v", "5", "mount", dir, opts)
	requireSuccess(t, r)
	assertTmpfs(t, dir)
	assertFile(t, dir, "db/current", []byte(flexSecret1), 0o644)
	assertFile(t, dir, "db/previous", []byte(flexSecretOld), 0o644)
	b, _ := readFile(t, dir, "key1")
	assert.Equal(t, "PUBLIC KEY", pemBlocks(t, b)[0].Type)
	assertFile(t, dir, "tls/leaf.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.cert.Leaf.Raw}), 0o644)
	assertFile(t, dir, "tls/bundle.pem", expectedBundle(t, e.cert), 0o644)
	assert.Equal(t, 1, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Method: "POST", Identity: flexSPClient}))

	r = e.exec(t, testenv.Binary(t, "kvdriver"), "flexvolume", "--log-file", logFile, "unmount", dir)
	requireSuccess(t, r)
	e.unmountTwice(t, dir)

	logs, err := os.ReadFile(logFile)
	require.NoError(t, err)
	assert.Contains(t, string(logs), `"mounted"`)
	assert.Contains(t, string(logs), `"unmounted"`)
	for _, s := range e.planted {
		assert.NotContains(t, string(logs), s, "a secret reached the driver's log")
	}
}

func TestFlexVolumeVMManagedIdentity(t *testing.T) {
	e := startFlexEnv(t)
	dir := e.target(t, nginxPod, "mi")
	opts := kubeletOptions(t, nginxPod, "mi", map[string]string{
		"usevmmanagedidentity":      "true",
		"vmmanagedidentityclientid": flexMIClient,
		"keyvaultname":              flexVault,
		"keyvaultobjectnames":       "secret1",
		"keyvaultobjecttypes":       "secret",
		"tenantid":                  flexTenant,
	}, nil, -1)
	requireSuccess(t, e.run(t, "mount", dir, opts))
	assertTmpfs(t, dir)
	assertFile(t, dir, "secret1", []byte(flexSecret1), 0o644)
	assert.Equal(t, 1, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Identity: flexMIClient, Status: 200}))
	assert.Zero(t, e.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra}))
	e.unmountTwice(t, dir)
}

func TestFlexVolumeUSGovernmentCloud(t *testing.T) {
	e := startFlexEnv(t)
	dir := e.target(t, nginxPod, "gov")
	opts := kubeletOptions(t, nginxPod, "gov", map[string]string{
		"cloudname":           "AzureUSGovernmentCloud",
		"keyvaultname":        flexGovVault,
		"keyvaultobjectnames": "secret1",
		"keyvaultobjecttypes": "secret",
		"tenantid":            flexTenant,
	}, spSecretData, -1)
	requireSuccess(t, e.run(t, "mount", dir, opts))
	assertTmpfs(t, dir)
	assertFile(t, dir, "secret1", []byte(flexGovSecret), 0o644)

	hosts := map[string]bool{}
	for _, r := range e.emu.Requests(emulator.RequestFilter{}) {
		hosts[strings.ToLower(r.Host)] = true
	}
	assert.True(t, hosts["login.microsoftonline.us"], "token from the US Government authority: %v", hosts)
	assert.True(t, hosts[flexGovVault+".vault.usgovcloudapi.net"], "%v", hosts)
	assert.False(t, hosts["login.microsoftonline.com"], "no public-cloud authority: %v", hosts)
	e.unmountTwice(t, dir)
}

// TestFlexVolumeFailures: each bad mount reports Failure naming the problem
// and leaves kubelet's directory as it was: not a mount point, empty.
func TestFlexVolumeFailures(t *testing.T) {
	e := startFlexEnv(t)
	good := map[string]string{
		"keyvaultname": flexVault, "keyvaultobjectnames": "secret1;key1", "keyvaultobjecttypes": "secret;key", "tenantid": flexTenant,
	}
	with := func(edit map[string]string) map[string]string { return merged(good, edit) }
	for _, tc := range []struct {
		name   string
		json   func(volume string) string
		expect []string
	}{{
		name: "malformed JSON",
		json: func(string) string {
			return `{"keyvaultname": "` + flexVault + `", "kubernetes.io/secret/clientsecret": "`
		},
		expect: []string{"options: not a JSON object of string values: syntax error"},
	}, {
		name: "list length mismatch",
		json: func(v string) string {
			return kubeletOptions(t, nginxPod, v, with(map[string]string{"keyvaultobjecttypes": "secret"}), spSecretData, -1)
		},
		expect: []string{"keyvaultobjecttypes: has 1 entry but keyvaultobjectnames has 2 entries"},
	}, {
		name: "unknown object type",
		json: func(v string) string {
			return kubeletOptions(t, nginxPod, v, with(map[string]string{"keyvaultobjecttypes": "secret;certificate"}), spSecretData, -1)
		},
		expect: []string{`keyvaultobjecttypes[1]: "certificate" is not one of secret, key, cert`},
	}, {
		name:   "missing credentials",
		json:   func(v string) string { return kubeletOptions(t, nginxPod, v, good, nil, -1) },
		expect: []string{"kubernetes.io/secret/clientid: missing: set secretRef", "kubernetes.io/secret/clientsecret: missing"},
	}, {
		name: "pod identity with nmi not running",
		json: func(v string) string {
			return kubeletOptions(t, nginxPod, v, with(map[string]string{"usepodidentity": "true"}), nil, -1)
		},
		expect: []string{"pod identity: nmi at http://127.0.0.1:2579"},
	}, {
		name: "wrong client secret",
		json: func(v string) string {
			return kubeletOptions(t, nginxPod, v, good, map[string]string{"clientid": flexSPClient, "clientsecret": "not-the-secret"}, -1)
		},
		expect: []string{"AADSTS7000215"},
	}, {
		name: "object not in the vault",
		json: func(v string) string {
			return kubeletOptions(t, nginxPod, v, with(map[string]string{"keyvaultobjectnames": "secret1;no-such-key"}), spSecretData, -1)
		},
		expect: []string{"no-such-key", "404"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			volume := strings.ReplaceAll(tc.name, " ", "-")
			dir := e.target(t, nginxPod, volume)
			r := e.run(t, "mount", dir, tc.json(volume))
			t.Logf("result: %s", r.output)
			assert.Equal(t, "Failure", r.Status)
			assert.Equal(t, 0, r.exitCode, "exit 0 on every answered call: kubelet logs a failed exec's argv")
			for _, want := range tc.expect {
				assert.Contains(t, r.Message, want)
			}
			assert.Contains(t, r.Message, "mount "+dir+": ")
			assertNotMounted(t, dir)
			entries, err := os.ReadDir(dir)
			require.NoError(t, err, "kubelet's directory stays")
			assert.Empty(t, entries)
			e.unmountTwice(t, dir)
		})
	}
}

// TestFlexVolumeKeepsCredentialsOut drives successful and failing mounts
// through the driver as a wrapper installs it (kvdriver flexvolume
// --log-file F -v N) at the default verbosity and at -v=10, with the argv
// kubelet passes (the secretRef Secret's values base64-encoded in the JSON
// options), and checks that no client secret, in either form, reaches the
// result kubelet records or the log file, and that every call exits 0, so
// that kubelet never logs the argv itself.
func TestFlexVolumeKeepsCredentialsOut(t *testing.T) {
	e := startFlexEnv(t)
	const wrongSecret = "flexvolume-wrong-client-secret"
	e.planted = append(e.planted, flexSPSecret, wrongSecret,
		base64.StdEncoding.EncodeToString([]byte(flexSPSecret)), base64.StdEncoding.EncodeToString([]byte(wrongSecret)))
	good := map[string]string{
		"keyvaultname": flexVault, "keyvaultobjectnames": "secret1", "keyvaultobjecttypes": "secret", "tenantid": flexTenant,
	}
	for _, verbosity := range []string{"0", "10"} {
		t.Run("v="+verbosity, func(t *testing.T) {
			logFile := filepath.Join(t.TempDir(), "flexvolume.log")
			call := func(args ...string) flexResult {
				r := e.exec(t, testenv.Binary(t, "kvdriver"), append([]string{"flexvolume", "--log-file", logFile, "-v", verbosity}, args...)...)
				assert.Equal(t, 0, r.exitCode, "%s: %s", args[0], r.output)
				return r
			}
			bad := func(edit map[string]string) map[string]string { return merged(good, edit) }
			for _, tc := range []struct {
				name    string
				options string
				status  string
			}{
				{"success", kubeletOptions(t, nginxPod, "ok", good, spSecretData, -1), "Success"},
				{"wrong secret", kubeletOptions(t, nginxPod, "wrong",
					good, map[string]string{"clientid": flexSPClient, "clientsecret": wrongSecret}, -1), "Failure"},
				{"unknown object", kubeletOptions(t, nginxPod, "unknown",
					bad(map[string]string{"keyvaultobjectnames": "no-such-secret"}), spSecretData, -1), "Failure"},
				{"bad option", kubeletOptions(t, nginxPod, "bad",
					bad(map[string]string{"keyvaultobjecttypes": "password"}), spSecretData, -1), "Failure"},
				{"secret in a misspelt option", kubeletOptions(t, nginxPod, "misspelt",
					bad(map[string]string{"clientsecret": wrongSecret}), spSecretData, -1), "Failure"},
				{"malformed JSON", `{"keyvaultname":"` + flexVault + `","kubernetes.io/secret/clientsecret":"` +
					base64.StdEncoding.EncodeToString([]byte(flexSPSecret)) + `"`, "Failure"},
			} {
				dir := e.target(t, nginxPod, strings.ReplaceAll(tc.name, " ", "-")+"-v"+verbosity)
				r := call("mount", dir, tc.options)
				assert.Equal(t, tc.status, r.Status, "%s: %s", tc.name, r.Message)
				call("unmount", dir)
			}
			call("init")
			call("getvolumename", kubeletOptions(t, nginxPod, "x", good, spSecretData, -1))

			b, err := os.ReadFile(logFile)
			require.NoError(t, err)
			require.NotEmpty(t, b, "the driver logs to --log-file")
			for _, s := range e.planted {
				assert.NotContains(t, string(b), s, "a credential reached the driver's log")
			}
		})
	}
}
