package main

import (
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPauseExitsOnSignal runs the built pause and stops it as the runtime
// does when a pod goes away: SIGTERM (or SIGINT) ends it with status 0.
func TestPauseExitsOnSignal(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pause")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(bin)
		require.NoError(t, cmd.Start())
		time.Sleep(200 * time.Millisecond) // let it install its handlers
		require.NoError(t, cmd.Process.Signal(syscall.SIGCHLD), "SIGCHLD does not end it")
		require.NoError(t, cmd.Process.Signal(sig))
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			require.NoError(t, err, "pause exits 0 on %v", sig)
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("pause still running 5s after %v", sig)
		}
	}
}
