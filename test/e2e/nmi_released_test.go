package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvnode/kvnode/test/emulator"
)

// The node's uplink in miniature: a network namespace joined to the node by
// a veth pair, the node's side with 192.168.77.2/24 and the node's default
// route via the network's 192.168.77.1. Replies to any address the node has
// no route of its own for leave through it, as through a real node's
// uplink. Everything stays in testenv's private namespaces.
const (
	uplinkNodeIP = "192.168.77.2"
	uplinkHostIP = "192.168.77.1"
)

// addUplink creates the uplink namespace and the node's default route
// through it, and removes both when the test ends.
func addUplink(t *testing.T) *nmiPod {
	t.Helper()
	h := &nmiPod{name: "uplink", netns: fmt.Sprintf("kvnode-nmi-%d-uplink", os.Getpid()), hostIf: "nmiuplink", ip: uplinkHostIP}
	ip(t, "netns", "add", h.netns)
	t.Cleanup(func() { removePodNetns(t, h) })
	ip(t, "link", "add", h.hostIf, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
	ip(t, "addr", "add", uplinkNodeIP+"/24", "dev", h.hostIf)
	ip(t, "link", "set", h.hostIf, "up")
	ip(t, "route", "add", "default", "via", uplinkHostIP, "dev", h.hostIf)
	ipIn(t, h, "link", "set", "lo", "up")
	ipIn(t, h, "addr", "add", uplinkHostIP+"/24", "dev", "eth0")
	ipIn(t, h, "link", "set", "eth0", "up")
	ipIn(t, h, "route", "add", "default", "via", uplinkNodeIP, "dev", "eth0")
	return h
}

// tokenFrom opens a connection from namespace nsName (from source address
// from, when set) to addr, sends one token request and returns the
// answer's status and client_id. status 0: the connection was closed or
// reset without an answer; err: the connection could not be made or broke
// in another way. It only returns errors, so it can run in Eventually.
func tokenFrom(ctx context.Context, nsName, addr, from string) (status int, clientID string, err error) {
	var src net.IP
	if from != "" {
		src = net.ParseIP(from)
	}
	// The handle is closed at once: an open one keeps a deleted
	// namespace, and its interfaces, alive.
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return 0, "", err
	}
	c, err := dialIn(ctx, ns, "tcp4", addr, src)
	ns.Close()
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, "", err
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n", tokenQuery); err != nil {
		return 0, "", nil // closed before the request was written
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF || strings.Contains(err.Error(), "connection reset") {
			return 0, "", nil
		}
		return 0, "", fmt.Errorf("want an answer or a closed connection: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		ClientID string `json:"client_id"`
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	_ = json.Unmarshal(b, &body)
	return resp.StatusCode, body.ClientID, nil
}

// TestNMIReleasedAddress deletes a bound pod gracefully and removes its
// network, as kubelet and the CNI do, while its Pod object stays
// (terminating). Its address must not be served as the old pod's again:
// not to a host on the node's uplink that uses the released address (the
// node's replies then leave by the default route, so the handshake
// completes), whether through the metadata address or to nmi's address
// directly, and not to a new sandbox given the address before its Pod
// object reports it. Once the new Pod reports the address, the new pod gets
// its own identity.
func TestNMIReleasedAddress(t *testing.T) {
	requireNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, emu := startNode(t)
	require.NoError(t, cp.EnsureNamespace(ctx, "apps"))
	mis := map[string]emulator.Principal{}
	for _, name := range []string{"pod-old", "pod-new"} {
		mi, err := emu.AddManagedIdentity(emulator.Principal{TenantID: nmiTenant})
		require.NoError(t, err)
		mis[name] = mi
		_, err = cp.CreateServiceAccount(ctx, "apps", "sa-"+name, nil)
		require.NoError(t, err)
		bindAzureIdentity(ctx, t, cp, "id-"+name, mi, name)
	}
	const addr = "10.244.7.2"
	oldPod := &nmiPod{name: "pod-old", sa: "sa-pod-old", ip: addr}
	createNodePod(ctx, t, cp, oldPod)
	addPodNetns(t, oldPod)
	uplink := addUplink(t)

	nmi := startNMI(t, cp, emu)
	nmi.waitReady(t)
	nmi.waitAntiSpoofing(t, oldPod)
	metadata := "169.254.169.254:80"
	direct := net.JoinHostPort(nmiAddr, strconv.Itoa(nmiPort))

	status, id, err := tokenFrom(ctx, oldPod.netns, metadata, "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, mis["pod-old"].ClientID, id)

	// Graceful delete: the object stays, terminating, until kubelet
	// confirms; the pod is served while its network exists.
	require.NoError(t, cp.Client.CoreV1().Pods("apps").Delete(ctx, oldPod.name, metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		return strings.Contains(nmi.logs.String(), `"Pod terminating: served only through the interfaces it has now" pod="apps/pod-old"`)
	}, 15*time.Second, 20*time.Millisecond, "nmi never saw the pod terminating")
	status, id, err = tokenFrom(ctx, oldPod.netns, metadata, "")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, status, "a terminating pod is served while its network exists")
	assert.Equal(t, mis["pod-old"].ClientID, id)

	// The CNI removes the old pod's network; the Pod object remains.
	removePodNetns(t, oldPod)
	t.Run("host on the uplink with the released address", func(t *testing.T) {
		ipIn(t, uplink, "addr", "add", addr+"/32", "dev", "eth0")
		defer ipIn(t, uplink, "addr", "del", addr+"/32", "dev", "eth0")
		for _, to := range []string{metadata, direct} {
			status, id, err := tokenFrom(ctx, uplink.netns, to, addr)
			require.NoError(t, err, "the handshake to %s completes through the default route", to)
			assert.Zero(t, status, "to %s: the connection must be closed without an answer, got %d for %q", to, status, id)
		}
		// From the uplink host's own address to nmi's address: closed too.
		status, _, err := tokenFrom(ctx, uplink.netns, direct, "")
		require.NoError(t, err)
		assert.Zero(t, status)
	})
	// The CNI gives the address to a new sandbox, whose Pod has not
	// reported it yet.
	newPod := &nmiPod{name: "pod-new", sa: "sa-pod-new", ip: addr}
	addPodNetns(t, newPod)
	t.Run("new sandbox before its Pod reports the address", func(t *testing.T) {
		status, id, err := tokenFrom(ctx, newPod.netns, metadata, "")
		require.NoError(t, err)
		assert.Equal(t, http.StatusNotFound, status, "the new sandbox got %q", id)
		assert.NotEqual(t, mis["pod-old"].ClientID, id, "the new sandbox got the old pod's identity")
		status, _, err = tokenFrom(ctx, newPod.netns, direct, "")
		require.NoError(t, err)
		assert.Zero(t, status, "a pod to nmi's address directly: closed without an answer")
	})
	t.Run("new Pod reports the address", func(t *testing.T) {
		createNodePod(ctx, t, cp, newPod)
		var last atomic.Value
		if !assert.Eventually(t, func() bool {
			status, id, err := tokenFrom(ctx, newPod.netns, metadata, "")
			last.Store(fmt.Sprintf("status %d, client_id %q, err %v", status, id, err))
			return err == nil && status == http.StatusOK && id == mis["pod-new"].ClientID
		}, 15*time.Second, 50*time.Millisecond) {
			t.Fatalf("the new pod never got its own identity; last answer: %v", last.Load())
		}
	})
	assert.GreaterOrEqual(t, nmi.metric(t, `kvnode_nmi_refused_connections_total{reason="not_intercepted"}`), 3.0)
	assert.GreaterOrEqual(t, nmi.metric(t, `kvnode_nmi_refused_connections_total{reason="not_pod_interface"}`), 1.0)
}
