package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/mount-utils"

	"github.com/kvnode/kvnode/test/pinned"
)

// buildDemo builds the demo program into a directory anyone may read, so
// that it can also run as an unprivileged user.
func buildDemo(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kvnode-demo-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "demo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// The demo runs end to end, says what it promises, and leaves nothing behind.
func TestDemoRunsToCompletion(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: the demo needs root (tmpfs mounts, network namespaces)")
	}
	if os.Getenv(pinned.ControlPlane.Env) == "" {
		t.Skip("skipped: KUBEBUILDER_ASSETS is not set; make test sets it to the control-plane binaries")
	}
	bin := buildDemo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	out := stdout.String()
	require.NoError(t, err, "the demo failed after %s\nstdout:\n%s\nstderr:\n%s", time.Since(start), out, stderr.String())
	t.Logf("demo took %s:\n%s", time.Since(start).Round(time.Millisecond), out)

	for _, want := range []string{
		"private network namespace, interfaces: lo (",
		"filesystem: tmpfs (statfs f_type 0x1021994)",
		"db-password   = rotated-horse-battery-staple",
		`api-key       = "kvnode demo api key"`,
		"feature-flags/ 0=checkout=on,search=beta 1=checkout=on 2=checkout=off",
		"1. PRIVATE KEY",
		"private key first, then leaf -> intermediate -> root",
		"SecretProviderClassPodStatus demo/web-0-demo-kvnode-demo: mounted=true",
		"0 Key Vault requests, 0 Entra ID requests: served from kvdriver's object cache",
		"db-password   = " + rotatedValue,
		"NodeUnpublishVolume for demo/web-0 and demo/web-1: tmpfs unmounted",
		// nmi's half.
		"iptables -t nat: -A KVNODE-NMI -d 169.254.169.254/32 ! -i lo -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.200.0.1:2579",
		"appid 5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d (the managed identity), aud https://vault.azure.net,",
		"nmi asked upstream for it: 1 IMDS request ",
		"0 IMDS requests, 0 Entra ID requests: served from nmi's token cache",
		"(ServiceAccount batch, no identity bound) asks the same: refused, HTTP 403",
		"nmi's answer, as the SDK reports it: invalid_request: No identity is bound to this pod",
		"db-password   = " + rotatedValue + "   (read with the managed identity's token)",
		"and for the pod's token (nmi had it cached): 0 IMDS requests",
		"NodeUnpublishVolume for demo/api-0: unmounted",
		"stopped nmi (its iptables rules removed), kvdriver, kube-apiserver and etcd, Azure emulator; no mounts left",
	} {
		assert.Contains(t, out, want)
	}
	assert.Regexp(t, `pod demo/api-0 -> 169.254.169.254: Azure SDK ManagedIdentityCredential, no options: token in \d+ms`, out)
	assert.Regexp(t, `NodePublishVolume for pod demo/api-0, class kvnode-demo-pod-identity \(usePodIdentity\): ok in \d+ms`, out)
	assert.NotContains(t, out+stderr.String(), "eyJ", "something that looks like a token is printed")
	assert.Regexp(t, `the emulator counted for this mount: \d+ Key Vault requests`, out)
	assert.Regexp(t, `CERTIFICATE  leaf .*\n.*CERTIFICATE  intermediate .*\n.*CERTIFICATE  root `, out)
	// Narrative only: no log lines of the libraries or of kvdriver.
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		assert.Regexp(t, `^(kvnode demo: |\[ *\d+\.\ds\] |          )`, line)
	}
	assert.NotContains(t, out+stderr.String(), "demo-client-secret", "the service principal's secret is printed")

	// Nothing is left: the directory is gone and nothing is mounted below it.
	m := regexp.MustCompile(`into (/\S+kvnode-demo-\d+)\n`).FindStringSubmatch(out)
	require.NotNil(t, m, "the demo names its directory")
	assert.NoDirExists(t, m[1])
	mounts, err := mount.New("").List()
	require.NoError(t, err)
	for _, mp := range mounts {
		assert.False(t, strings.HasPrefix(mp.Path, m[1]), "left mounted: %s", mp.Path)
	}
	left, err := filepath.Glob(filepath.Join("/run/netns", filepath.Base(m[1])+"-*"))
	require.NoError(t, err)
	assert.Empty(t, left, "pod network namespaces left behind")
}

// Without root the demo says what it needs and fails.
func TestDemoNeedsRoot(t *testing.T) {
	bin := buildDemo(t)
	cmd := exec.Command(bin)
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "stdout %q stderr %q", stdout.String(), stderr.String())
	assert.Equal(t, 1, ee.ExitCode())
	assert.Equal(t, "kvnode demo: make demo needs root (tmpfs mounts, network namespaces, iptables)\n", stderr.String())
	assert.Empty(t, stdout.String())
}

// Without root `make demo` says so in one line, before it installs or
// builds anything.
func TestMakeDemoNeedsRoot(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("skipped: make is missing")
	}
	root, err := repoRoot()
	require.NoError(t, err)
	cmd := exec.Command("make", "--no-print-directory", "-C", root, "demo")
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		// The unprivileged user must be able to read the Makefile.
		if err := syscall.Access(filepath.Join(root, "Makefile"), 4); err != nil {
			t.Skipf("skipped: %v", err)
		}
		f, err := os.Stat(root)
		require.NoError(t, err)
		if f.Mode().Perm()&0o005 != 0o005 {
			t.Skipf("skipped: %s is not readable by other users", root)
		}
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/nonexistent"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "stdout %q stderr %q", stdout.String(), stderr.String())
	assert.Empty(t, stdout.String())
	assert.Regexp(t, `^Makefile:\d+: \*\*\* make demo needs root \(tmpfs mounts, network namespaces, iptables\): run it as root\.  Stop\.\n$`, stderr.String())
}
