package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
)

// staleRestarts bounds TestNMIStalePodObjects.
const staleRestarts = 4

// TestNMIStalePodObjects: after a node restart, Pod objects can still say
// Running with addresses their sandboxes no longer have, while new pods
// got those addresses. Here two addresses each have a stale Pod object
// (started an hour ago) and the pod whose sandbox has the address now
// (started a minute ago), each bound to an identity of its own. For one
// address the stale pod's name sorts after the current pod's, for the other
// before it: a re-list delivers pods by name, so a choice by arrival order
// gets one of them wrong. nmi is restarted several times; every answer
// from each current pod must carry its own identity.
func TestNMIStalePodObjects(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	require.NoError(t, cp.EnsureNamespace(ctx, "apps"))
	now := time.Now().Truncate(time.Second)
	pairs := []struct{ current, stale *nmiPod }{
		{&nmiPod{name: "pod-a-now", ip: "10.244.8.2", started: now.Add(-time.Minute)},
			&nmiPod{name: "pod-z-stale", ip: "10.244.8.2", started: now.Add(-time.Hour)}},
		{&nmiPod{name: "pod-y-now", ip: "10.244.8.3", started: now.Add(-time.Minute)},
			&nmiPod{name: "pod-b-stale", ip: "10.244.8.3", started: now.Add(-time.Hour)}},
	}
	ids := map[string]string{} // pod name -> its identity's client ID
	for _, pair := range pairs {
		for _, p := range []*nmiPod{pair.current, pair.stale} {
			mi, err := emu.AddManagedIdentity(emulator.Principal{TenantID: nmiTenant})
			require.NoError(t, err)
			ids[p.name] = mi.ClientID
			p.sa = "sa-" + p.name
			_, err = cp.CreateServiceAccount(ctx, "apps", p.sa, nil)
			require.NoError(t, err)
			bindAzureIdentity(ctx, t, cp, "id-"+p.name, mi, p.name)
			createNodePod(ctx, t, cp, p)
		}
		// Only the current pod has a sandbox.
		addPodNetns(t, pair.current)
	}

	nmi := startNMI(t, cp, emu)
	for run := range staleRestarts + 1 {
		if run > 0 {
			nmi.stop(t)
			nmi.launch(t)
		}
		nmi.waitReady(t)
		for _, pair := range pairs {
			p := pair.current
			var status int
			var id string
			require.Eventually(t, func() bool {
				var err error
				status, id, err = tokenFrom(ctx, p.netns, "169.254.169.254:80", "")
				return err == nil && status != http.StatusServiceUnavailable
			}, 15*time.Second, 20*time.Millisecond, "run %d: %s got no answer", run, p.name)
			assert.Equal(t, http.StatusOK, status, "run %d: %s", run, p.name)
			if id == ids[pair.stale.name] {
				t.Errorf("run %d: %s was served the stale pod %s's identity", run, p.name, pair.stale.name)
			} else {
				assert.Equal(t, ids[p.name], id, "run %d: %s", run, p.name)
			}
		}
	}
}
