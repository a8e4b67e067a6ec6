// Package pprofserver serves net/http/pprof's handlers for both daemons'
// --pprof-addr: on a loopback listener and a mux of their own, so that
// nothing else is exposed there and no pod can reach them.
package pprofserver

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"
)

// ParseAddr parses a --pprof-addr value, which must be a loopback
// address:port.
func ParseAddr(flag, v string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(v)
	if err != nil || !ap.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("%s %q: want a loopback address:port", flag, v)
	}
	return ap, nil
}

// Listen binds addr and returns the server to Serve on it.
func Listen(addr netip.AddrPort) (*http.Server, net.Listener, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, nil, err
	}
	// No write timeout: a CPU profile answers after its ?seconds=.
	return &http.Server{Addr: addr.String(), Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln, nil
}
