package netns

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// envChild makes the test binary, re-executed by a test, check its namespace
// and exit with the status it names instead of running the tests.
const envChild = "KVNODE_NETNS_TEST_CHILD"

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
