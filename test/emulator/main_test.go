package emulator

import (
	"testing"

	"github.com/kvnode/kvnode/test/testenv"
)

// The SDK tests run the real Azure SDK in child processes; testenv keeps them,
// and the emulator, in a network namespace that has only loopback.
func TestMain(m *testing.M) { testenv.Main(m) }
