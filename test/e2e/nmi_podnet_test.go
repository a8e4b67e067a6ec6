package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
)

// metadataURL is the token request pods make.
const metadataURL = "http://169.254.169.254" + tokenQuery

// dialIn opens a TCP connection from network namespace ns, optionally from
// local address from. The socket is created on a thread locked into ns;
// the connection is then used from any goroutine.
//
// The thread goes back to its own namespace and is unlocked afterwards
// rather than left to die with its goroutine: the product binaries run as
// children with Pdeathsig, which the kernel sends when the thread that
// started them exits, and that may be any of the test's threads. Only if
// going back fails is the thread kept locked, and so discarded.
func dialIn(ctx context.Context, ns netns.NsHandle, network, addr string, from net.IP) (net.Conn, error) {
	d := net.Dialer{Timeout: 2 * time.Second}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			ch <- result{err: fmt.Errorf("open this thread's network namespace: %w", err)}
			return // the thread stays locked and is discarded
		}
		var r result
		if err := netns.Set(ns); err != nil {
			r.err = fmt.Errorf("enter network namespace: %w", err)
		} else {
			r.c, r.err = d.DialContext(ctx, network, addr)
		}
		// Back home and home's descriptor closed before answering: the
		// caller may close ns, and a later descriptor reuse its number.
		if netns.Set(home) == nil {
			runtime.UnlockOSThread()
		}
		home.Close()
		ch <- r
	}()
	r := <-ch
	return r.c, r.err
}

// netnsOf opens the named network namespace (ip netns) of p.
func netnsOf(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromName(name)
	require.NoError(t, err, "open network namespace %s", name)
	t.Cleanup(func() { h.Close() })
	return h
}

// podHTTPClient is an HTTP client whose connections are opened inside the
// network namespace ns, as an application in the pod opens them: they are
// intercepted by the node's rules like the pod's own.
func podHTTPClient(ns netns.NsHandle) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialIn(ctx, ns, network, addr, nil)
			},
		},
	}
}

// askToken sends one token request with c and returns the status and body,
// or the transport error.
func askToken(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Metadata", "true")
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}
