package imds

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// keepAlive builds a raw request for target that asks to keep the
// connection, with headers and then body.
func keepAlive(method, target, body string, headers ...string) string {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: 169.254.169.254\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// answers writes raw on one connection to addr in a single write, reads
// the answers the server gives, and reports how the connection ended:
// io.EOF when the server closed it, or the read error (a timeout means the
// server kept it open, waiting for more).
func answers(t *testing.T, addr, raw string) ([]int, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, raw)
	require.NoError(t, err)
	br := bufio.NewReader(c)
	var statuses []int
	for {
		// A server that keeps the connection after its last answer is
		// waiting for another request: two seconds of silence says so.
		require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
		if _, err := br.Peek(1); err != nil {
			return statuses, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return statuses, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		statuses = append(statuses, resp.StatusCode)
	}
}

// TestConnectionClosedAfterRefusalOrAmbiguousFraming sends request
// smuggling variants and pipelined requests over raw TCP. After refusing a
// malformed request (target, method, headers, query), and after any request
// whose body framing is ambiguous or present at all, the server answers
// once and closes the connection (RFC 9112 section 6.1 and 6.3): whatever
// follows on the wire is never parsed as a request.
func TestConnectionClosedAfterRefusalOrAmbiguousFraming(t *testing.T) {
	w := newTestWorld(t, nil)
	addrs := w.serve(t, podIP, unboundIP, strangerIP)
	tok := TokenPath + "?" + goodQuery
	// The request hidden in a body: a token request the pod may make.
	hidden := keepAlive("GET", tok, "", md)

	cases := []struct {
		name string
		from string
		raw  string
		want []int
	}{
		{"POST with Content-Length and chunked, hidden request after the last chunk (CL.TE)", podIP,
			keepAlive("POST", tok, "0\r\n\r\n"+hidden, md, "Content-Length: "+strconv.Itoa(len("0\r\n\r\n"+hidden)), "Transfer-Encoding: chunked"),
			[]int{405}},
		{"POST with chunked and a short Content-Length, hidden request inside a chunk (TE.CL)", podIP,
			keepAlive("POST", tok, strconv.FormatInt(int64(len(hidden)), 16)+"\r\n"+hidden+"\r\n0\r\n\r\n", md, "Content-Length: 4", "Transfer-Encoding: chunked"),
			[]int{405}},
		{"POST chunked, hidden request after the body", podIP,
			keepAlive("POST", tok, "0\r\n\r\n"+hidden, md, "Transfer-Encoding: chunked"),
			[]int{405}},
		{"POST with Content-Length, hidden request after the body", podIP,
			keepAlive("POST", tok, "x=1"+hidden, md, "Content-Length: 3"),
			[]int{405}},
		{"GET with Content-Length and chunked, hidden request after the last chunk", podIP,
			keepAlive("GET", tok, "0\r\n\r\n"+hidden, md, "Content-Length: 5", "Transfer-Encoding: chunked"),
			[]int{200}},
		{"GET with a body", podIP,
			keepAlive("GET", tok, "abc"+hidden, md, "Content-Length: 3"),
			[]int{200}},
		{"HTTP/1.0 keep-alive with Transfer-Encoding and Content-Length", podIP,
			strings.Replace(keepAlive("GET", tok, "0\r\n\r\n"+hidden, md, "Connection: keep-alive", "Content-Length: 5", "Transfer-Encoding: chunked"), "HTTP/1.1", "HTTP/1.0", 1),
			[]int{200}},
		{"two Transfer-Encoding headers", podIP,
			keepAlive("POST", tok, "0\r\n\r\n"+hidden, md, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
			[]int{501}},
		{"two different Content-Length headers", podIP,
			keepAlive("POST", tok, "0\r\n\r\n"+hidden, md, "Content-Length: 5", "Content-Length: 6"),
			[]int{400}},
		{"pipelined after 404", podIP, keepAlive("GET", "/metadata/identity/oauth2/token/?"+goodQuery, "", md) + hidden, []int{404}},
		{"pipelined after 400", podIP, keepAlive("GET", tok, "") + hidden, []int{400}},
		{"pipelined after 405", podIP, keepAlive("PUT", tok, "", md, "Content-Length: 0") + hidden, []int{405}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			statuses, err := answers(t, addrs[tc.from], tc.raw)
			assert.Equal(t, tc.want, statuses, "one answer, and nothing for the request that followed it")
			assert.ErrorIs(t, err, io.EOF, "the server must close the connection after the answer")
		})
	}

	// Well-formed requests keep the connection, answered or refused: what
	// follows them on the wire is the next request either way, and a
	// client's retry then costs no new connection (and no conntrack entry).
	for _, tc := range []struct {
		name string
		from string
		want []int
	}{
		{"two good requests", podIP, []int{200, 200}},
		{"403: no identity bound", unboundIP, []int{403, 403}},
		{"404: not a pod of this node", strangerIP, []int{404, 404}},
	} {
		t.Run("kept after "+tc.name, func(t *testing.T) {
			statuses, err := answers(t, addrs[tc.from], hidden+hidden)
			assert.Equal(t, tc.want, statuses)
			assert.True(t, errors.Is(err, os.ErrDeadlineExceeded), "a well-formed request keeps the connection open: %v", err)
		})
	}
}

// Token answers carry Content-Length, as IMDS's do, whatever the token's
// size: net/http adds it by itself only to bodies under 2 KB.
func TestTokenAnswerHasContentLength(t *testing.T) {
	for _, size := range []int{100, 1800, 2500, 9000} {
		srv := tokenServer(t, size)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		hs := &http.Server{Handler: srv, DisableGeneralOptionsHandler: true}
		go func() {
			_ = hs.Serve(remoteListener{Listener: ln, remote: &net.TCPAddr{IP: net.ParseIP(podIP), Port: 40000}})
		}()
		for range 2 { // the answer's first build, then the memo's
			c, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			_, err = io.WriteString(c, keepAlive(http.MethodGet, TokenPath+"?"+goodQuery, "", "Metadata: true"))
			require.NoError(t, err)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			require.NoError(t, err)
			c.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
			assert.Empty(t, resp.TransferEncoding, "token of %d bytes: not chunked", size)
			assert.Equal(t, strconv.Itoa(len(body)), resp.Header.Get("Content-Length"), "token of %d bytes", size)
			assert.Greater(t, len(body), size)
		}
		require.NoError(t, hs.Close())
	}
}
