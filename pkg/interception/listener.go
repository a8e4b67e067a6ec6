package interception

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Listener is nmi's pod-facing listener. It accepts only connections that
// the nat rule sent to nmi from a pod, and closes every other one before a
// byte is read:
//
//   - The connection's original destination, which conntrack keeps for the
//     socket (SO_ORIGINAL_DST), must be 169.254.169.254:80. A connection
//     made to nmi's address directly, from a pod, the node or the network,
//     was not intercepted and is refused.
//   - With PodRoutes, the node's route back to the connection's source must
//     be that address's own /32 through a pod's veth (PodRoutes.PodLink),
//     looked up when the connection is accepted. The handshake has then
//     completed through that veth: the SYN-ACK went to it, and only a peer
//     behind it could answer. A source whose pod network is gone (the
//     default route would carry replies to the uplink), or that is reached
//     through the uplink or a bridge, is refused, so a host on the node's
//     network cannot use a released pod address.
//
// Accepted connections carry the pod interface's index (PodConn.PodLink),
// which the token handler passes to the pod index: a pod's address is
// served only through the interface that carries it.
//
// Why these checks rather than an iptables mark or a DNAT rule per pod
// veth: marks are shared with kube-proxy and the CNIs (Calico and Cilium use
// many of the bits), and per-veth DNAT rules would rewrite the nat table,
// and flush conntrack, on every pod start. The kernel already knows both
// facts per connection, and asking it costs two system calls per
// connection, not per request.
type Listener struct {
	net.Listener
	routes  *PodRoutes
	refused *prometheus.CounterVec
	// Resolved series of refused.
	notIntercepted, notFromPod prometheus.Counter
}

// NewListener wraps ln, a TCP listener on nmi's pod-facing address. routes
// nil skips the route check (bridge layouts, where every pod is reached
// through the bridge's subnet route).
func NewListener(ln net.Listener, routes *PodRoutes) *Listener {
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kvnode", Subsystem: "nmi", Name: "refused_connections_total",
		Help: "Connections to the pod listener closed unread: not intercepted (made to nmi's address directly), or not from a pod interface.",
	}, []string{"reason"})
	return &Listener{
		Listener:       ln,
		routes:         routes,
		refused:        refused,
		notIntercepted: refused.WithLabelValues("not_intercepted"),
		notFromPod:     refused.WithLabelValues("not_pod_interface"),
	}
}

// Collector is the listener's refused-connections counter, for a registry.
func (l *Listener) Collector() prometheus.Collector { return l.refused }

// PodConn is a connection accepted by Listener.
type PodConn struct {
	*net.TCPConn
	link int
}

// PodLink is the index of the pod interface the connection came through;
// 0 when the listener has no PodRoutes.
func (c *PodConn) PodLink() int { return c.link }

// Accept returns the next admitted connection; refused connections are
// closed and never returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if pc := l.admit(c); pc != nil {
			return pc, nil
		}
		c.Close()
	}
}

// admit returns c as a PodConn, or nil when it must be refused.
func (l *Listener) admit(c net.Conn) *PodConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		l.notIntercepted.Inc()
		return nil
	}
	remote, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		l.notIntercepted.Inc()
		return nil
	}
	dst, err := originalDst(tc)
	if err != nil || dst != netip.AddrPortFrom(metadataAddr, MetadataPort) {
		l.notIntercepted.Inc()
		klog.V(4).InfoS("Refused a connection that was not intercepted", "source", remote, "destination", dst, "err", err)
		return nil
	}
	pc := &PodConn{TCPConn: tc}
	if l.routes != nil {
		link, ok := l.routes.PodLink(remote.Addr())
		if !ok {
			l.notFromPod.Inc()
			klog.V(4).InfoS("Refused a connection whose source no pod interface carries", "source", remote)
			return nil
		}
		pc.link = link
	}
	return pc
}

// originalDst returns a socket's destination before DNAT, from conntrack.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		dst  netip.AddrPort
		serr error
	)
	err = raw.Control(func(fd uintptr) {
		// The answer is a struct sockaddr_in; IPv6Mreq is the 16-byte
		// shape the x/sys getsockopt helpers offer for it.
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			serr = fmt.Errorf("SO_ORIGINAL_DST: %w", err)
			return
		}
		b := m.Multiaddr
		if binary.NativeEndian.Uint16(b[0:2]) != unix.AF_INET {
			serr = errors.New("SO_ORIGINAL_DST: not an IPv4 address")
			return
		}
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), uint16(b[2])<<8|uint16(b[3]))
	})
	if err == nil {
		err = serr
	}
	return dst, err
}
