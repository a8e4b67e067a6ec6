// Package e2e holds kvnode's end-to-end tests: a real kube-apiserver and etcd,
// the Azure emulator, and the real Azure SDK or kvnode binaries as processes,
// all inside a network namespace that has only loopback.
package e2e

import (
	"testing"

	"github.com/kvnode/kvnode/test/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, "github.com/kvnode/kvnode/cmd/kvdriver", "github.com/kvnode/kvnode/cmd/nmi", "github.com/kvnode/kvnode/test/provider",
		"github.com/kvnode/kvnode/test/bareserver")
}
