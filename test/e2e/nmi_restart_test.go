package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The restart test's schedule: bounded in count and time.
const (
	restarts      = 5
	streamPause   = 2 * time.Millisecond // between one pod's requests
	restartBudget = 30 * time.Second     // per restart, until both pods are served again
)

// streamTally counts one pod's answers by status; status 0 counts
// transport errors (connection refused while no nmi listens).
type streamTally struct {
	mu       sync.Mutex
	byStatus map[int]int
	last200  time.Time
	lastErr  error
}

func (s *streamTally) add(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byStatus[status]++
	if status == http.StatusOK {
		s.last200 = time.Now()
	}
}

func (s *streamTally) servedSince(t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last200.After(t)
}

func (s *streamTally) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []int
	for k := range s.byStatus {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := fmt.Sprint(k)
		if k == 0 {
			name = "transport error"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, s.byStatus[k]))
	}
	return strings.Join(parts, ", ")
}

// TestNMIRestartUnderLoad restarts nmi, as a rollout does, while two bound
// pods (a workload identity and an AzureIdentityBinding) ask for tokens in
// a steady stream. While nmi is down the kept rules refuse connections;
// while it starts, its answers must all be ones IMDS clients retry: the
// Azure SDKs never retry 403, so a single "No identity is bound" would fail
// an application that starts during the rollout.
func TestNMIRestartUnderLoad(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	bindABC(ctx, t, cp, emu)
	pods := []*nmiPod{{name: "pod-a", sa: "sa-a", ip: "10.244.5.2"}, {name: "pod-b", sa: "sa-b", ip: "10.244.5.3"}}
	for _, p := range pods {
		createNodePod(ctx, t, cp, p)
		addPodNetns(t, p)
	}
	nmi := startNMI(t, cp, emu, "--remove-rules-on-exit=false")
	nmi.waitReady(t)

	sctx, stopStream := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tallies := make([]*streamTally, len(pods))
	for i, p := range pods {
		tallies[i] = &streamTally{byStatus: map[int]int{}}
		client := podHTTPClient(netnsOf(t, p.netns))
		wg.Go(func() {
			for sctx.Err() == nil {
				status, _, err := askToken(sctx, client, metadataURL)
				if err != nil {
					if sctx.Err() != nil {
						return
					}
					status = 0
					tallies[i].mu.Lock()
					tallies[i].lastErr = err
					tallies[i].mu.Unlock()
				}
				tallies[i].add(status)
				time.Sleep(streamPause)
			}
		})
	}
	defer func() {
		stopStream()
		wg.Wait()
		if t.Failed() {
			for i, p := range pods {
				t.Logf("%s: %s; last transport error: %v", p.name, tallies[i], tallies[i].lastErr)
			}
		}
	}()

	served := func(since time.Time) bool {
		for _, s := range tallies {
			if !s.servedSince(since) {
				return false
			}
		}
		return true
	}
	require.Eventually(t, func() bool { return served(time.Time{}) }, restartBudget, 10*time.Millisecond, "the pods were never served")
	for i := range restarts {
		nmi.stop(t)
		restarted := time.Now()
		nmi.launch(t)
		require.Eventually(t, func() bool { return served(restarted) }, restartBudget, 10*time.Millisecond,
			"restart %d: the pods were not served again", i+1)
	}
	stopStream()
	wg.Wait()

	for i, p := range pods {
		s := tallies[i]
		t.Logf("%s over %d restarts: %s", p.name, restarts, s)
		s.mu.Lock()
		for status, n := range s.byStatus {
			retryable := status == 0 || status == http.StatusOK || status == http.StatusNotFound || status == http.StatusGone ||
				status == http.StatusTooManyRequests || status >= 500
			assert.True(t, retryable, "%s got %d answers %d, which IMDS clients do not retry", p.name, n, status)
		}
		assert.Zero(t, s.byStatus[http.StatusForbidden], "%s was refused its identity during a restart", p.name)
		s.mu.Unlock()
	}
}
