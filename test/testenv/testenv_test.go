package testenv

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { Main(m) }

// The private namespace must have loopback and nothing else, so that no test
// can reach the machine's network, and a dial to the metadata address must
// fail at once rather than leave the machine.
func TestNamespaceIsLoopbackOnly(t *testing.T) {
	RequireNetns(t)
	ifs, err := net.Interfaces()
	require.NoError(t, err)
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	assert.Equal(t, []string{"lo"}, names)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err, "loopback must be up")
	ln.Close()

	start := time.Now()
	_, err = net.DialTimeout("tcp", "169.254.169.254:80", 5*time.Second)
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ENETUNREACH)
	assert.Less(t, time.Since(start), time.Second, "the dial must fail at once, not time out")
}

func TestSDKClientReportsUsageErrors(t *testing.T) {
	res := SDKClient(t, nil, "-cred", "nonsense", "token")
	require.NotNil(t, res.Err)
	assert.Equal(t, 1, res.ExitCode)
	assert.Equal(t, "usage", res.Err.Kind)
	assert.Contains(t, res.Err.Message, `unknown credential kind "nonsense"`)
}
