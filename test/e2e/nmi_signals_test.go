package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
)

// TestFaultNMISIGKILL kills nmi (SIGKILL: no chance to tidy up) while two
// bound pods ask for tokens in a steady stream, and starts it again, a
// few times. While no nmi runs the interception rules stay: a pod's
// connection is refused at once, never sent on to the node's IMDS (fail
// open) nor left to time out; after each restart both pods are served
// again; and no answer ever carries another identity's token.
func TestFaultNMISIGKILL(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	appA, miB := bindABC(ctx, t, cp, emu)
	pods := []*nmiPod{{name: "pod-a", sa: "sa-a", ip: "10.244.13.2"}, {name: "pod-b", sa: "sa-b", ip: "10.244.13.3"}}
	want := map[string]string{"pod-a": appA.ClientID, "pod-b": miB.ClientID}
	for _, p := range pods {
		createNodePod(ctx, t, cp, p)
		addPodNetns(t, p)
	}
	// The chart's settings: the rules outlive nmi.
	nmi := startNMI(t, cp, emu, "--remove-rules-on-exit=false")
	nmi.waitReady(t)

	const kills = 3
	type tally struct {
		mu        sync.Mutex
		byStatus  map[int]int
		wrong     []string // answers with another identity
		oddErrors []string // transport errors other than a refused connection
		last200   time.Time
	}
	tallies := make([]*tally, len(pods))
	sctx, stopStream := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, p := range pods {
		tl := &tally{byStatus: map[int]int{}}
		tallies[i] = tl
		client := podHTTPClient(netnsOf(t, p.netns))
		wg.Go(func() {
			for sctx.Err() == nil {
				// A 200 counts from when its request was sent: one
				// answered by the nmi just killed may be tallied after
				// the restart.
				sent := time.Now()
				status, body, err := askToken(sctx, client, metadataURL)
				if sctx.Err() != nil {
					return
				}
				tl.mu.Lock()
				switch {
				case err != nil:
					tl.byStatus[0]++
					if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) &&
						!strings.Contains(err.Error(), "EOF") && len(tl.oddErrors) < 5 {
						tl.oddErrors = append(tl.oddErrors, err.Error())
					}
				case status == http.StatusOK:
					tl.byStatus[status]++
					var b struct {
						ClientID string `json:"client_id"`
					}
					if json.Unmarshal(body, &b) != nil || b.ClientID != want[p.name] {
						tl.wrong = append(tl.wrong, b.ClientID)
					}
					tl.last200 = sent
				default:
					tl.byStatus[status]++
				}
				tl.mu.Unlock()
				time.Sleep(streamPause)
			}
		})
	}
	defer func() { stopStream(); wg.Wait() }()
	served := func(since time.Time) bool {
		for _, tl := range tallies {
			tl.mu.Lock()
			ok := tl.last200.After(since)
			tl.mu.Unlock()
			if !ok {
				return false
			}
		}
		return true
	}
	require.Eventually(t, func() bool { return served(time.Time{}) }, restartBudget, 10*time.Millisecond, "the pods were never served")
	for i := range kills {
		require.NoError(t, nmi.cmd.Process.Kill())
		<-nmi.done
		nmi.stopped = true
		assert.Contains(t, iptablesRules(t, "nat"), "KVNODE-NMI", "kill %d: the rules went with nmi", i+1)
		// With no nmi, each pod's request fails at once: the kept rule
		// sends it to nmi's closed port. Without the rule it would leave
		// for the node's IMDS (here: go unanswered until it times out).
		// For an instant after the kill a child nmi forked to run
		// iptables, and has not yet exec'd, still holds the listening
		// socket: the kernel completes the handshake and resets the
		// connection when that copy closes. A reset is as good as a
		// refusal to IMDS clients; an answer or a timeout is not.
		for _, p := range pods {
			client := podHTTPClient(netnsOf(t, p.netns))
			var refused bool
			for attempt := 0; attempt < 50 && !refused; attempt++ {
				rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				status, _, err := askToken(rctx, client, metadataURL)
				cancel()
				if !assert.Error(t, err, "kill %d: %s was answered %d with no nmi running", i+1, p.name, status) {
					break
				}
				refused = errors.Is(err, syscall.ECONNREFUSED)
				if !refused && !assert.True(t, errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "EOF"),
					"kill %d: %s's request with no nmi running: %v", i+1, p.name, err) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			assert.True(t, refused, "kill %d: %s's connections were never refused with no nmi running", i+1, p.name)
		}
		restarted := time.Now()
		nmi.launch(t)
		require.Eventually(t, func() bool { return served(restarted) }, restartBudget, 10*time.Millisecond,
			"kill %d: the pods were not served again", i+1)
	}
	stopStream()
	wg.Wait()
	for i, p := range pods {
		tl := tallies[i]
		t.Logf("%s over %d kills: %v", p.name, kills, tl.byStatus)
		assert.Empty(t, tl.wrong, "%s was served another identity's token", p.name)
		assert.Empty(t, tl.oddErrors, "%s: with no nmi a connection must be refused at once", p.name)
		assert.Positive(t, tl.byStatus[0], "%s never met the killed nmi: the test proves nothing", p.name)
		for status, n := range tl.byStatus {
			ok := status == 0 || status == http.StatusOK || (podAnswer{status: status}).retryable()
			assert.True(t, ok, "%s got %d answers %d, which IMDS clients do not retry", p.name, n, status)
		}
	}
}

// TestFaultNMISIGTERM sends SIGTERM while a pod's token request waits on a
// slow IMDS: the request is answered with the token, and nmi exits within
// the pod's termination grace period.
func TestFaultNMISIGTERM(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	_, miB := bindABC(ctx, t, cp, emu)
	podB := &nmiPod{name: "pod-b", sa: "sa-b", ip: "10.244.14.3"}
	createNodePod(ctx, t, cp, podB)
	addPodNetns(t, podB)
	nmi := startNMI(t, cp, emu, "--remove-rules-on-exit=false")
	nmi.waitReady(t)
	requireToken(ctx, t, podB, nmiVault, miB.ClientID)

	// In flight for well under the grace period, longer than a quick
	// shutdown would wait.
	const inFlight = 12 * time.Second
	require.NoError(t, emu.InjectIMDSFault(emulator.Fault{Latency: inFlight, Count: 1}))
	calls := nmi.metric(t, "kvnode_nmi_upstream_requests_total")
	answer := make(chan podAnswer, 1)
	go func() { answer <- askPod(ctx, t, podB, otherResource) }()
	require.Eventually(t, func() bool {
		return nmi.metric(t, "kvnode_nmi_upstream_requests_total") > calls
	}, 10*time.Second, 10*time.Millisecond, "the request never went upstream")

	sent := time.Now()
	require.NoError(t, nmi.cmd.Process.Signal(syscall.SIGTERM))
	var exited time.Duration
	select {
	case err := <-nmi.done:
		exited = time.Since(sent)
		nmi.stopped = true
		assert.NoError(t, err, "nmi exit")
	case <-time.After(podGracePeriod + 10*time.Second):
		t.Fatal("nmi did not exit")
	}
	assert.Less(t, exited, podGracePeriod, "nmi outlived the termination grace period")
	a := <-answer
	t.Logf("in-flight request: %s; nmi exited %v after SIGTERM", a, exited)
	assert.Equal(t, http.StatusOK, a.status, "the request in flight at SIGTERM was not answered: %s", a)
	assert.Equal(t, miB.ClientID, a.clientID)
}
