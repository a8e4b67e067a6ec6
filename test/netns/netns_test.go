package netns

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// envChild makes the test binary, re-executed by a test, check its namespace
// and exit with the status it names instead of running the tests.
const envChild = "KVNODE_NETNS_TEST_CHILD"

// envLeave makes the child, before it exits, do what a careless test does:
// "process:FILE" starts a process in a session of its own that would
// outlive it and writes its pid to FILE; "cgroup:DIR" makes the cgroup DIR.
// envTrap makes it write a file, wait for SIGTERM, then write "term" into
// the file and exit 3.
const (
	envLeave = "KVNODE_NETNS_TEST_LEAVE"
	envTrap  = "KVNODE_NETNS_TEST_TRAP"
)

func TestMain(m *testing.M) {
	if code := os.Getenv(envChild); code != "" {
		os.Exit(child(code))
	}
	os.Exit(m.Run())
}

// child brings lo up, checks that it is the only interface, that loopback
// works and that other addresses are unreachable, then exits with code.
func child(code string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "netns child: "+format+"\n", args...)
		return 100
	}
	if err := LoopbackUp(); err != nil {
		return fail("%v", err)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return fail("%v", err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
		return fail("interfaces %v, want only lo, up", ifs)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail("listen on loopback: %v", err)
	}
	ln.Close()
	start := time.Now()
	if _, err := net.DialTimeout("tcp", "169.254.169.254:80", 5*time.Second); err == nil || time.Since(start) > time.Second {
		return fail("dial 169.254.169.254: %v after %s; want an immediate error", err, time.Since(start))
	}
	n, err := strconv.Atoi(code)
	if err != nil {
		return fail("%s=%q", envChild, code)
	}
	if what, arg, ok := strings.Cut(os.Getenv(envLeave), ":"); ok {
		switch what {
		case "process":
			sleep := exec.Command("sleep", "300")
			sleep.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := sleep.Start(); err != nil {
				return fail("%v", err)
			}
			if err := os.WriteFile(arg, []byte(strconv.Itoa(sleep.Process.Pid)), 0o600); err != nil {
				return fail("%v", err)
			}
		case "cgroup":
			if err := os.MkdirAll(arg, 0o755); err != nil {
				return fail("%v", err)
			}
		}
	}
	if file := os.Getenv(envTrap); file != "" {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM)
		if err := os.WriteFile(file, []byte("ready"), 0o600); err != nil {
			return fail("%v", err)
		}
		select {
		case <-sigs:
		case <-time.After(30 * time.Second):
			return fail("no SIGTERM")
		}
		if err := os.WriteFile(file, []byte("term"), 0o600); err != nil {
			return fail("%v", err)
		}
		return 3
	}
	return n
}

func TestReexecRunsInLoopbackOnlyNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create a network namespace")
	}
	for _, want := range []int{0, 7} {
		code, err := Reexec([]string{fmt.Sprintf("%s=%d", envChild, want)})
		require.NoError(t, err)
		assert.Equal(t, want, code, "the child's exit status comes back")
	}
}

func TestCommandKillsChildWithParent(t *testing.T) {
	cmd, err := Command(nil)
	require.NoError(t, err)
	require.NotNil(t, cmd.SysProcAttr)
	assert.Equal(t, uintptr(syscall.CLONE_NEWNET), cmd.SysProcAttr.Cloneflags)
	assert.Equal(t, syscall.SIGKILL, cmd.SysProcAttr.Pdeathsig)
	assert.Equal(t, os.Args[1:], cmd.Args[1:])
}

// TestReexecKillsWhatTheTestsLeft: a process the tests started and left
// running in their namespace is killed once they exit, and a run that
// passed is failed for it.
func TestReexecKillsWhatTheTestsLeft(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create a network namespace")
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	code, err := Reexec([]string{envChild + "=0", envLeave + "=process:" + pidFile})
	require.NoError(t, err)
	assert.Equal(t, 1, code, "a passing run that left a process fails")
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(string(b))
	require.NoError(t, err)
	_, err = netnsOf(pid)
	assert.Error(t, err, "process %d is gone (or a zombie waiting for init)", pid)

	code, err = Reexec([]string{envChild + "=5", envLeave + "=process:" + pidFile})
	require.NoError(t, err)
	assert.Equal(t, 5, code, "a failing run keeps its status")
}

// TestReexecPassesSignalsOn: SIGTERM to the caller reaches the tests,
// which can tear down before they exit; the caller waits for them.
func TestReexecPassesSignalsOn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create a network namespace")
	}
	file := filepath.Join(t.TempDir(), "trap")
	go func() {
		for range 600 {
			if b, _ := os.ReadFile(file); string(b) == "ready" {
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	code, err := Reexec([]string{envChild + "=0", envTrap + "=" + file})
	require.NoError(t, err)
	assert.Equal(t, 3, code)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, "term", string(b), "the tests saw the signal")
}

// TestReexecNodeRemovesNodeCgroups: a node cgroup the tests made and left
// is removed; one that existed before is not touched.
func TestReexecNodeRemovesNodeCgroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create namespaces and cgroups")
	}
	hierarchy := filepath.Join(cgroupRoot, "pids")
	if _, err := os.Stat(filepath.Join(hierarchy, "cgroup.procs")); err != nil {
		hierarchy = cgroupRoot // cgroup v2
	}
	dir := filepath.Join(hierarchy, "kubepods")
	if _, err := os.Stat(dir); err == nil {
		t.Skipf("skipped: %s exists already", dir)
	}
	code, err := ReexecNode([]string{envChild + "=0", envLeave + "=cgroup:" + filepath.Join(dir, "pod1")})
	require.NoError(t, err)
	assert.Equal(t, 0, code)
	assert.NoDirExists(t, dir)
}
