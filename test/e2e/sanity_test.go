package e2e

import (
	"flag"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
	"github.com/stretchr/testify/assert"
)

// TestCSISanity runs csi-sanity against the real kvdriver over its socket.
// kvdriver is a node-only plugin, so the controller specs are skipped, and
// so is "should remove target path", which needs CreateVolume to make a
// volume to publish; the project's own e2e tests cover real mounts.
//
// Ginkgo runs in this process with its configuration from the -ginkgo.*
// flags (focus, skip, verbosity); its failures fail this test.
func TestCSISanity(t *testing.T) {
	// Ginkgo runs its suite once per process and exits the whole test
	// binary when go test was given -count other than 1 or -parallel.
	if f := flag.Lookup("test.count"); f != nil && f.Value.String() != "1" {
		t.Skipf("csi-sanity's Ginkgo suite runs once per process; run with -count=1 (got -count=%s)", f.Value)
	}
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "test.parallel" {
			t.Skip("Ginkgo refuses go test's -parallel flag; run csi-sanity without it")
		}
	})

	e := startDriverEnv(t)
	dir := t.TempDir()
	cfg := sanity.NewTestConfig()
	cfg.Address = e.socket
	cfg.TargetPath = filepath.Join(dir, "csi-target")
	cfg.StagingPath = filepath.Join(dir, "csi-staging")
	cfg.IdempotentCount = 3 // repeat each idempotent call (specs that need CreateVolume skip anyway)
	sanity.GinkgoTest(&cfg)

	suiteCfg, reporterCfg := ginkgo.GinkgoConfiguration()
	suiteCfg.SkipStrings = append(suiteCfg.SkipStrings, `\[Controller Server\]`, `should remove target path`)
	reporterCfg.NoColor = true // go test output is a log, not a terminal
	var ran, passed, skipped, failed int
	ginkgo.ReportAfterSuite("kvdriver csi-sanity summary", func(r ginkgo.Report) {
		for _, spec := range r.SpecReports {
			if spec.LeafNodeType != types.NodeTypeIt {
				continue
			}
			switch {
			case spec.State.Is(types.SpecStatePassed):
				ran++
				passed++
			case spec.State.Is(types.SpecStateSkipped | types.SpecStatePending):
				skipped++
			default:
				ran++
				failed++
			}
		}
	})
	gomega.RegisterFailHandler(ginkgo.Fail)
	ok := ginkgo.RunSpecs(t, "kvdriver csi-sanity", suiteCfg, reporterCfg)
	t.Logf("csi-sanity: %d specs ran, %d passed, %d failed, %d skipped", ran, passed, failed, skipped)
	assert.True(t, ok, "csi-sanity failed")
	assert.Positive(t, passed, "csi-sanity ran no spec")
	assert.Zero(t, failed)
}
