// Package testenv runs kvnode's integration tests in a network namespace of
// their own and runs the Azure SDK client program (test/sdkclient) for them.
//
// The namespace has only a loopback interface. Everything a test starts (the
// Azure emulator, etcd, kube-apiserver, the product binaries) listens there,
// and a client that is misconfigured and tries to reach Azure, the instance
// metadata address 169.254.169.254 or any other address fails at once instead
// of sending a packet from the machine.
package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvnode/kvnode/test/netns"
)

const (
	// envInNetns marks the re-executed test process.
	envInNetns = "KVNODE_TEST_IN_NETNS"
	// envNoNetns says why the tests run without a private namespace.
	envNoNetns = "KVNODE_TEST_NO_NETNS"
	// EnvSDKClient names a prebuilt sdkclient binary; Main builds one when unset.
	EnvSDKClient = "KVNODE_SDKCLIENT"
)

// Main is called from a package's TestMain. As root it builds the SDK client
// and any other programs named by their package paths, then re-executes the
// test binary in a new network namespace with only loopback up and exits
// with its status. Without root it runs the tests in place, and the tests
// that need isolation skip with the reason. Binary finds the built programs.
func Main(m *testing.M, programs ...string) {
	main(m, false, programs)
}

// NodeMain is Main for tests that play a whole node (test/cluster): the
// test binary runs in a new mount namespace too, whose mounts are slaves of
// the machine's, so that what the node mounts (kubelet's and containerd's
// directories, pod volumes, container root filesystems) never shows on the
// machine and goes when the tests end. The tests' TMPDIR is a directory of
// their own, removed after them however they ended.
func NodeMain(m *testing.M, programs ...string) {
	main(m, true, programs)
}

func main(m *testing.M, node bool, programs []string) {
	if os.Getenv(envInNetns) == "1" {
		if err := netns.LoopbackUp(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: bring up loopback in the private network namespace: %v\n", err)
			os.Exit(2)
		}
		if node {
			if err := netns.PrivateMounts(); err != nil {
				fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
				os.Exit(2)
			}
		}
		os.Exit(m.Run())
	}
	if os.Geteuid() != 0 {
		os.Setenv(envNoNetns, "needs root to create a private network namespace")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "kvnode-testbin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		os.Exit(2)
	}
	env, err := buildPrograms(dir, programs)
	if err != nil {
		os.RemoveAll(dir)
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		os.Exit(2)
	}
	var tmp string
	if node {
		// The node's tests get a temporary directory of their own (short:
		// containerd's sockets live below it), removed whatever way they
		// end; an interrupted test never runs its cleanups.
		if tmp, err = os.MkdirTemp("", "kvn-"); err != nil {
			os.RemoveAll(dir)
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
			os.Exit(2)
		}
		env = append(env, "TMPDIR="+tmp)
	}
	code := reexecInNetns(env, node)
	os.RemoveAll(dir)
	if tmp != "" {
		// Mounts below it were made in the node's mount namespace, which
		// is gone with its processes.
		if err := os.RemoveAll(tmp); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		}
	}
	os.Exit(code)
}

// binEnv is the environment variable that holds the path of a program built
// by Main.
func binEnv(name string) string {
	return "KVNODE_TESTBIN_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Binary returns the path of a program that Main built, by its base name
// ("kvdriver" for github.com/kvnode/kvnode/cmd/kvdriver).
func Binary(t testing.TB, name string) string {
	t.Helper()
	p := os.Getenv(binEnv(name))
	if p == "" {
		t.Fatalf("testenv: program %q was not built; pass its package path to testenv.Main", name)
	}
	return p
}

// buildPrograms builds the SDK client and programs into dir, before the
// tests enter the namespace, where the Go module proxy cannot be reached.
// It returns the environment entries that locate them.
func buildPrograms(dir string, programs []string) ([]string, error) {
	var env []string
	if p := os.Getenv(EnvSDKClient); p != "" {
		env = append(env, EnvSDKClient+"="+p)
	} else {
		programs = append([]string{"github.com/kvnode/kvnode/test/sdkclient"}, programs...)
	}
	for _, pkg := range programs {
		name := filepath.Base(pkg)
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		if strings.HasPrefix(pkg, "github.com/kvnode/kvnode/cmd/") {
			// The daemons are built as the Dockerfile builds them, so
			// that the tests (and the benchmarks' memory figures) are of
			// the binaries that ship: static, without symbol tables.
			cmd = exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("build %s: %w", pkg, err)
		}
		if name == "sdkclient" {
			env = append(env, EnvSDKClient+"="+bin)
		} else {
			env = append(env, binEnv(name)+"="+bin)
		}
	}
	return env, nil
}

// reexecInNetns runs the test binary again in a private network namespace
// and returns its exit status.
func reexecInNetns(env []string, node bool) int {
	reexec := netns.Reexec
	if node {
		reexec = netns.ReexecNode
	}
	code, err := reexec(append([]string{envInNetns + "=1"}, env...))
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: run tests in a private network namespace: %v\n", err)
		return 2
	}
	return code
}

// RequireNetns skips the test unless it runs in the private namespace.
func RequireNetns(t testing.TB) {
	t.Helper()
	if os.Getenv(envInNetns) != "1" {
		reason := os.Getenv(envNoNetns)
		if reason == "" {
			reason = "the package's TestMain does not call testenv.Main"
		}
		t.Skipf("skipped: %s", reason)
	}
}

// SDKFailure is the error an sdkclient run reports.
type SDKFailure struct {
	Kind    string `json:"kind"`
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// SDKResult is the outcome of one sdkclient run.
type SDKResult struct {
	Args     []string
	Stdout   []byte
	Stderr   []byte
	ExitCode int
	Duration time.Duration
	// Err is set when the program reported a failure.
	Err *SDKFailure
}

// Decode unmarshals the program's JSON result into v, failing the test if the
// program failed.
func (r SDKResult) Decode(t testing.TB, v any) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("sdkclient %s failed: %+v\nstderr: %s", strings.Join(r.Args, " "), *r.Err, r.Stderr)
	}
	if err := json.Unmarshal(r.Stdout, v); err != nil {
		t.Fatalf("sdkclient %s: decode %q: %v", strings.Join(r.Args, " "), r.Stdout, err)
	}
}

// SDKClient runs the sdkclient program with args. Its environment is a minimal
// base (PATH, HOME) plus env, so nothing from the caller's environment can send
// it anywhere but where env says; pass the emulator's Env() and any AZURE_*
// variables there.
func SDKClient(t testing.TB, env []string, args ...string) SDKResult {
	t.Helper()
	RequireNetns(t)
	bin := os.Getenv(EnvSDKClient)
	if bin == "" {
		t.Fatalf("testenv: %s is not set", EnvSDKClient)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := SDKResult{Args: args, Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Duration: time.Since(start)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run sdkclient: %v", err)
		}
		res.ExitCode = ee.ExitCode()
		var out struct {
			Error *SDKFailure `json:"error"`
		}
		if jerr := json.Unmarshal(res.Stdout, &out); jerr != nil || out.Error == nil {
			t.Fatalf("sdkclient %s exited %d without a JSON error: stdout %q stderr %q", strings.Join(args, " "), res.ExitCode, res.Stdout, res.Stderr)
		}
		res.Err = out.Error
	}
	return res
}
