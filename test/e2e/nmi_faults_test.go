package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
)

// The bounds of the nmi fault tests. nmiUpstreamDeadline is nmi's own
// deadline for one upstream call (tokencache's default UpstreamTimeout);
// an answer may take that long and a little more, never the pod client's
// whole timeout.
const (
	nmiUpstreamDeadline = 30 * time.Second
	faultAnswerBound    = nmiUpstreamDeadline + 15*time.Second
	faultClientTimeout  = 2 * time.Minute
	// podGracePeriod is the chart's terminationGracePeriodSeconds (the
	// templates leave Kubernetes' default).
	podGracePeriod = 30 * time.Second
	// otherResource is a resource no test asks for before a fault: its
	// token is never cached.
	otherResource = "https://storage.azure.com"
)

// podAnswer is one answer nmi gave a pod.
type podAnswer struct {
	status   int
	clientID string // of a token
	errCode  string // IMDS's "error" of an error answer
	took     time.Duration
	err      error // transport error
}

func (a podAnswer) String() string {
	if a.err != nil {
		return fmt.Sprintf("transport error after %v: %v", a.took, a.err)
	}
	return fmt.Sprintf("%d client_id=%q error=%q after %v", a.status, a.clientID, a.errCode, a.took)
}

// retryable reports whether IMDS clients retry the answer (the Azure SDKs
// retry 404, 410, 429 and 5xx; never 403).
func (a podAnswer) retryable() bool {
	s := a.status
	return s == http.StatusNotFound || s == http.StatusGone || s == http.StatusTooManyRequests || s >= 500
}

// askPod asks nmi for a token of resource from p, as an application in p,
// with a client that waits up to faultClientTimeout.
func askPod(ctx context.Context, t testing.TB, p *nmiPod, resource string) podAnswer {
	t.Helper()
	c := podHTTPClient(netnsOf(t, p.netns))
	c.Timeout = faultClientTimeout
	defer c.CloseIdleConnections()
	u := "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + url.QueryEscape(resource)
	start := time.Now()
	status, body, err := askToken(ctx, c, u)
	a := podAnswer{status: status, took: time.Since(start), err: err}
	if err == nil {
		var b struct {
			ClientID string `json:"client_id"`
			Error    string `json:"error"`
		}
		_ = json.Unmarshal(body, &b)
		a.clientID, a.errCode = b.ClientID, b.Error
	}
	return a
}

// requireToken asks until p is served a token (nmi may still be starting)
// and checks whose it is.
func requireToken(ctx context.Context, t *testing.T, p *nmiPod, resource, clientID string) {
	t.Helper()
	var last podAnswer
	require.Eventually(t, func() bool {
		last = askPod(ctx, t, p, resource)
		return last.status == http.StatusOK
	}, 60*time.Second, 200*time.Millisecond, "%s was never served %s: last answer %s", p.name, resource, &last)
	require.Equal(t, clientID, last.clientID, "%s was served another identity's token", p.name)
}

// assertServedFromCache: p's cached token is served at once, with p's
// identity, while the fault lasts.
func assertServedFromCache(ctx context.Context, t *testing.T, p *nmiPod, clientID string) {
	t.Helper()
	for i := range 3 {
		a := askPod(ctx, t, p, nmiVault)
		if assert.Equal(t, http.StatusOK, a.status, "%s's cached token, request %d: %s", p.name, i, a) {
			assert.Equal(t, clientID, a.clientID, "%s request %d", p.name, i)
		}
	}
}

// assertRetryableFailure: with no cached token p gets an IMDS error that
// clients retry, in IMDS's JSON shape, within nmi's upstream deadline.
func assertRetryableFailure(ctx context.Context, t *testing.T, p *nmiPod, what string) {
	t.Helper()
	a := askPod(ctx, t, p, otherResource)
	t.Logf("%s: %s got %s", what, p.name, a)
	require.NoError(t, a.err, "%s: %s got no answer", what, p.name)
	assert.True(t, a.retryable(), "%s: %s got %s, which IMDS clients do not retry", what, p.name, a)
	assert.NotEmpty(t, a.errCode, "%s: not an IMDS error body", what)
	assert.Less(t, a.took, faultAnswerBound, "%s: the answer outlasted nmi's upstream deadline", what)
}

// TestFaultNMIAPIServerDown stops kube-apiserver under a running nmi.
// Pods nmi already knows are served their cached tokens from the informer
// caches; a pod it has never seen is refused with 404 (which IMDS clients
// retry), never 403; a known pod whose workload-identity token is not
// cached, which needs the TokenRequest API, gets a retryable error. When
// kube-apiserver is back the same nmi serves the pod it did not know and
// the workload-identity exchange again.
func TestFaultNMIAPIServerDown(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	appA, miB := bindABC(ctx, t, cp, emu)
	// sa-e is a second service account of application A: its token is
	// exchanged apart from sa-a's.
	require.NoError(t, emu.AddFederatedCredential(appA.ClientID, emulator.FederatedCredential{Issuer: cp.Issuer, Subject: "system:serviceaccount:apps:sa-e"}))
	_, err := cp.CreateServiceAccount(ctx, "apps", "sa-e", map[string]string{"azure.workload.identity/client-id": appA.ClientID})
	require.NoError(t, err)

	podA := &nmiPod{name: "pod-a", sa: "sa-a", ip: "10.244.11.2"}
	podB := &nmiPod{name: "pod-b", sa: "sa-b", ip: "10.244.11.3"}
	podE := &nmiPod{name: "pod-e", sa: "sa-e", ip: "10.244.11.4"}
	// pod-u's sandbox exists, its Pod object does not yet.
	podU := &nmiPod{name: "pod-u", sa: "sa-a", ip: "10.244.11.5"}
	for _, p := range []*nmiPod{podA, podB, podE} {
		createNodePod(ctx, t, cp, p)
	}
	for _, p := range []*nmiPod{podA, podB, podE, podU} {
		addPodNetns(t, p)
	}
	nmi := startNMI(t, cp, emu)
	nmi.waitReady(t)
	requireToken(ctx, t, podA, nmiVault, appA.ClientID)
	requireToken(ctx, t, podB, nmiVault, miB.ClientID)
	pid := nmi.cmd.Process.Pid

	require.NoError(t, cp.StopAPIServer())
	apiserverDown := true
	t.Cleanup(func() {
		if apiserverDown {
			_ = cp.StartAPIServer() // for the control plane's own cleanup
		}
	})
	for range 3 {
		assertServedFromCache(ctx, t, podA, appA.ClientID)
		assertServedFromCache(ctx, t, podB, miB.ClientID)
		a := askPod(ctx, t, podU, nmiVault)
		require.NoError(t, a.err, "unknown pod")
		assert.Equal(t, http.StatusNotFound, a.status, "a pod nmi has not seen must get a status IMDS clients retry: %s", a)
		a = askPod(ctx, t, podE, nmiVault)
		require.NoError(t, a.err, "pod-e")
		assert.True(t, a.retryable(), "pod-e's exchange needs the API server: want a retryable error, got %s", a)
		assert.Less(t, a.took, faultAnswerBound)
		time.Sleep(500 * time.Millisecond)
	}

	require.NoError(t, cp.StartAPIServer())
	apiserverDown = false
	createNodePod(ctx, t, cp, podU)
	requireToken(ctx, t, podU, nmiVault, appA.ClientID)
	requireToken(ctx, t, podE, nmiVault, appA.ClientID)
	assertServedFromCache(ctx, t, podB, miB.ClientID)
	assert.Equal(t, pid, nmi.cmd.Process.Pid)
	select {
	case err := <-nmi.done:
		nmi.done <- err
		t.Fatalf("nmi exited: %v", err)
	default:
	}
}

// upstreamFault is one way an upstream token endpoint fails.
type upstreamFault struct {
	name  string
	fault emulator.Fault
}

var upstreamFaults = []upstreamFault{
	{"429", emulator.Fault{Status: http.StatusTooManyRequests}},
	{"500", emulator.Fault{Status: http.StatusInternalServerError}},
	{"503", emulator.Fault{Status: http.StatusServiceUnavailable}},
	// Longer than nmi's upstream deadline and shorter than the client's.
	{"hang", emulator.Fault{Latency: nmiUpstreamDeadline + 30*time.Second}},
}

// TestFaultNMIUpstreamDown makes the node's IMDS, then Entra ID, fail in
// each way (429, 500, 503, hanging). Throughout, a pod's cached token is
// served; a token nmi has not cached is answered with an error IMDS
// clients retry, in IMDS's shape, within nmi's upstream deadline (never
// a hang until the client gives up, never a 403); when the upstream
// recovers that token is served.
func TestFaultNMIUpstreamDown(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	appA, miB := bindABC(ctx, t, cp, emu)
	podA := &nmiPod{name: "pod-a", sa: "sa-a", ip: "10.244.12.2"}
	podB := &nmiPod{name: "pod-b", sa: "sa-b", ip: "10.244.12.3"}
	for _, p := range []*nmiPod{podA, podB} {
		createNodePod(ctx, t, cp, p)
		addPodNetns(t, p)
	}
	nmi := startNMI(t, cp, emu)
	nmi.waitReady(t)
	requireToken(ctx, t, podA, nmiVault, appA.ClientID)
	requireToken(ctx, t, podB, nmiVault, miB.ClientID)

	for _, upstream := range []struct {
		name     string
		pod      *nmiPod
		clientID string
		inject   func(emulator.Fault) error
		clear    func()
	}{
		{name: "IMDS", pod: podB, clientID: miB.ClientID, inject: emu.InjectIMDSFault, clear: emu.ClearIMDSFaults},
		{name: "Entra ID", pod: podA, clientID: appA.ClientID, inject: emu.InjectEntraFault, clear: emu.ClearEntraFaults},
	} {
		for _, f := range upstreamFaults {
			t.Run(upstream.name+" "+f.name, func(t *testing.T) {
				require.NoError(t, upstream.inject(f.fault))
				defer upstream.clear()
				assertServedFromCache(ctx, t, upstream.pod, upstream.clientID)
				assertRetryableFailure(ctx, t, upstream.pod, upstream.name+" "+f.name)
			})
		}
		t.Run(upstream.name+" recovered", func(t *testing.T) {
			requireToken(ctx, t, upstream.pod, otherResource, upstream.clientID)
		})
	}
}
