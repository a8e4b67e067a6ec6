// Command bareserver is the baseline of nmi's load benchmark: the least a Go
// HTTP server can do to answer a token request, as a process of its own so
// that its CPU time can be read from /proc like nmi's. It answers every
// request with one constant body and Content-Type, with nmi's server
// timeouts, and prints "ready" once it listens.
//
// Usage:
//
//	bareserver -listen ADDR -body FILE -content-type TYPE
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address:port to listen on")
	bodyFile := flag.String("body", "", "file holding the answer's body")
	contentType := flag.String("content-type", "application/json", "the answer's Content-Type")
	flag.Parse()
	if err := run(*listen, *bodyFile, *contentType); err != nil {
		fmt.Fprintln(os.Stderr, "bareserver:", err)
		os.Exit(1)
	}
}

func run(listen, bodyFile, contentType string) error {
	body, err := os.ReadFile(bodyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", listen)
	if err != nil {
		return err
	}
	ct := []string{contentType}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header()["Content-Type"] = ct
			_, _ = w.Write(body)
		}),
		// nmi's: the same deadline bookkeeping per connection.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      45 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	fmt.Println("ready")
	return srv.Serve(ln)
}
