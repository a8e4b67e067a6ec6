// Package interception installs, keeps and removes the packet-filter rules
// that send pods' requests for the instance metadata endpoint
// (169.254.169.254:80) to nmi, and the anti-spoofing rules that stop a pod
// from reaching nmi with another pod's source address.
//
// Interception is a nat chain (KVNODE-NMI by default) jumped to from
// PREROUTING:
//
//	-A KVNODE-NMI [-s <pod CIDR>] -d 169.254.169.254/32 (-i <prefix>+ | ! -i lo) -p tcp -m tcp --dport 80 -j DNAT --to-destination <nmi addr>:<port>
//	-A KVNODE-NMI -j RETURN
//
// Only packets that arrive from an interface pass through PREROUTING; the
// node's own processes (host network) send through OUTPUT and keep reaching
// the real endpoint. "! -i lo" also leaves alone whatever the node sends to
// itself, whatever its source address.
//
// nmi's address must be a host-side address such as one on the node's lo or
// the pods' gateway, not 127.0.0.1: DNAT to loopback works only with
// route_localnet=1 on the pod-facing interfaces, which would expose every
// localhost-only service of the node to pods (CVE-2020-8558).
//
// After a change to the nat rules the Interceptor deletes the conntrack
// entries of connections to 169.254.169.254:80 that are not already going to
// nmi, so a connection opened before the rule cannot keep bypassing it. It
// does so over netlink (github.com/vishvananda/netlink, the library kubelet's
// and many CNI plugins' dependency trees already carry) rather than by
// running the conntrack tool, which nodes often lack.
//
// Anti-spoofing is a raw-table chain (KVNODE-ANTISPOOF by default) jumped to
// from raw PREROUTING, with for each pod's host-side interface a rule that
// drops every IPv4 packet whose source is not one of that pod's addresses:
//
//	-A KVNODE-ANTISPOOF ! -s <pod ip>/32 -i <host veth> -j DROP
//
// The raw table runs before conntrack and NAT, so a forged SYN never reaches
// nmi. Optionally reverse-path filtering is also set to strict on those
// interfaces. Both work for CNIs that give each pod a veth routed by a /32
// (Calico, Cilium in routed mode, Azure CNI transparent mode, kindnet,
// ptp); neither works on a bridge (the CNI bridge plugin, kubenet), where
// every pod's packets enter through the bridge: see antispoof.go.
//
// Only IPv4 is handled: the metadata endpoint is IPv4-only.
package interception

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"
)

// Defaults for Config.
const (
	DefaultNATChain = "KVNODE-NMI"
	DefaultRawChain = "KVNODE-ANTISPOOF"
)

// The instance metadata endpoint that is intercepted.
const (
	MetadataIP   = "169.254.169.254"
	MetadataPort = 80
)

const (
	tableNAT        = "nat"
	tableRaw        = "raw"
	chainPrerouting = "PREROUTING"
)

// Config says where intercepted requests go and which packets are intercepted.
type Config struct {
	// Address is the IPv4 address nmi listens on, on the node's side: an
	// address on the node's lo or the pods' gateway. Loopback addresses are
	// refused (see the package comment).
	Address netip.Addr
	// Port is nmi's TCP port.
	Port uint16
	// InterfacePrefix, when set, intercepts only packets that enter through
	// an interface whose name starts with it ("cali", "azv", "veth"),
	// instead of every interface but lo.
	InterfacePrefix string
	// PodCIDR, when valid, intercepts only packets whose source is in it.
	PodCIDR netip.Prefix
	// NATChain and RawChain name the chains the Interceptor owns; empty
	// means DefaultNATChain and DefaultRawChain. Anything else in them is
	// removed.
	NATChain string
	RawChain string
	// DisableRawRules leaves out the raw-table anti-spoofing chain (and
	// removes it if present), for layouts where it cannot help or the CNI
	// already filters sources.
	DisableRawRules bool
	// StrictReversePath also sets rp_filter=1 (strict) on the host-side
	// interfaces given to SetPods, and restores their previous value on
	// Remove. The raw-table rules do not depend on it.
	StrictReversePath bool
	// ProcSys is the sysctl tree, /proc/sys when empty.
	ProcSys string
	// IPTablesPath is the iptables binary; empty means the one on PATH.
	IPTablesPath string
}

var (
	ifaceName = regexp.MustCompile(`^[A-Za-z0-9_.@:-]{1,15}$`)
	chainName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,28}$`)
	// metadataAddr is MetadataIP parsed; never changed.
	metadataAddr = netip.MustParseAddr(MetadataIP)
)

// validate checks the configuration and fills in defaults.
func (c *Config) validate() error {
	if !c.Address.IsValid() || !c.Address.Is4() {
		return fmt.Errorf("nmi address %v: want an IPv4 address", c.Address)
	}
	if c.Address.IsLoopback() {
		return fmt.Errorf("nmi address %v: a loopback address needs route_localnet on pod interfaces, which exposes the node's localhost services; use an address on lo or the pod gateway", c.Address)
	}
	if c.Address.IsUnspecified() || c.Address == metadataAddr {
		return fmt.Errorf("nmi address %v: not a usable DNAT destination", c.Address)
	}
	if c.Port == 0 {
		return errors.New("nmi port is 0")
	}
	if c.InterfacePrefix != "" && !ifaceName.MatchString(c.InterfacePrefix) {
		return fmt.Errorf("interface prefix %q is not an interface name prefix", c.InterfacePrefix)
	}
	if c.PodCIDR.IsValid() && !c.PodCIDR.Addr().Is4() {
		return fmt.Errorf("pod CIDR %v: want IPv4", c.PodCIDR)
	}
	if c.NATChain == "" {
		c.NATChain = DefaultNATChain
	}
	if c.RawChain == "" {
		c.RawChain = DefaultRawChain
	}
	for _, ch := range []string{c.NATChain, c.RawChain} {
		if !chainName.MatchString(ch) {
			return fmt.Errorf("chain name %q: at most 28 letters, digits, '-', '_'", ch)
		}
	}
	if c.ProcSys == "" {
		c.ProcSys = "/proc/sys"
	}
	return nil
}

// Interceptor keeps nmi's rules in place. Its methods are safe for concurrent
// use.
type Interceptor struct {
	cfg     Config
	ipt     *iptables.IPTables
	trigger chan struct{}
	ready   atomic.Bool

	mu sync.Mutex
	// pods is the desired anti-spoofing set, sorted by interface.
	pods []PodInterface
	// podsSet is set by the first SetPods. Until then a raw chain already
	// in place (left by an nmi that was killed or restarted) keeps its
	// rules, so a restart never opens a window in which forged sources
	// pass while the pods' interfaces are still being listed.
	podsSet bool
	// flushed is set once conntrack has been cleaned after the nat rules
	// were found or made right.
	flushed bool
	// savedRPFilter holds the rp_filter value each interface had before
	// StrictReversePath changed it.
	savedRPFilter map[string]string
}

// New checks cfg and returns an Interceptor. It changes nothing until
// Reconcile or Run.
func New(cfg Config) (*Interceptor, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	family, wait := iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(5)
	var ipt *iptables.IPTables
	var err error
	if cfg.IPTablesPath != "" {
		ipt, err = iptables.New(family, wait, iptables.Path(cfg.IPTablesPath))
	} else {
		ipt, err = iptables.New(family, wait)
	}
	if err != nil {
		return nil, fmt.Errorf("set up iptables: %w", err)
	}
	return &Interceptor{
		cfg:           cfg,
		ipt:           ipt,
		trigger:       make(chan struct{}, 1),
		savedRPFilter: map[string]string{},
	}, nil
}

// Ready reports whether the last Reconcile succeeded, for nmi's /readyz.
func (in *Interceptor) Ready() bool { return in.ready.Load() }

// Trigger asks a running Run loop to reconcile now. It never blocks.
func (in *Interceptor) Trigger() {
	select {
	case in.trigger <- struct{}{}:
	default:
	}
}

// Reconcile makes the chains, their rules (exactly, in order) and the jumps
// to them what they should be, changing only what differs. When nothing
// differs it only lists four chains.
func (in *Interceptor) Reconcile(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	err := in.reconcileLocked(ctx)
	in.ready.Store(err == nil)
	return err
}

func (in *Interceptor) reconcileLocked(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	// Anti-spoofing first, so that nmi is never reachable through the nat
	// rules while forged sources still pass.
	if in.cfg.DisableRawRules {
		if err := in.removeChain(tableRaw, in.cfg.RawChain); err != nil {
			return err
		}
	} else {
		rawChanged, err := in.syncRawChain()
		if err != nil {
			return err
		}
		rawJumpChanged, err := in.ensureJump(tableRaw, in.cfg.RawChain)
		if err != nil {
			return err
		}
		if rawChanged || rawJumpChanged {
			logger.Info("Updated anti-spoofing rules", "chain", in.cfg.RawChain, "interfaces", len(in.pods))
		}
	}
	if in.cfg.StrictReversePath {
		if err := in.syncRPFilter(logger); err != nil {
			return err
		}
	}

	natChanged, err := in.syncChain(tableNAT, in.cfg.NATChain, natRules(in.cfg))
	if err != nil {
		return err
	}
	jumpChanged, err := in.ensureJump(tableNAT, in.cfg.NATChain)
	if err != nil {
		return err
	}
	if natChanged || jumpChanged {
		logger.Info("Updated metadata interception rules", "chain", in.cfg.NATChain, "to", netip.AddrPortFrom(in.cfg.Address, in.cfg.Port))
	}
	// The first reconcile cleans too: connections may have been opened
	// while nmi was down, whatever the rules look like now.
	if natChanged || jumpChanged || !in.flushed {
		n, err := deleteBypassingFlows(in.cfg.Address)
		if err != nil {
			return fmt.Errorf("delete conntrack entries for %s:%d: %w", MetadataIP, MetadataPort, err)
		}
		in.flushed = true
		logger.V(2).Info("Deleted conntrack entries bypassing interception", "entries", n)
	}
	return nil
}

// syncRawChain makes the anti-spoofing chain hold the rules for in.pods;
// before the first SetPods it only creates the chain when it is missing.
func (in *Interceptor) syncRawChain() (bool, error) {
	if in.podsSet {
		return in.syncChain(tableRaw, in.cfg.RawChain, antiSpoofRules(in.pods))
	}
	_, exists, err := in.listRules(tableRaw, in.cfg.RawChain)
	if err != nil || exists {
		return false, err
	}
	return in.syncChain(tableRaw, in.cfg.RawChain, nil)
}

// Run reconciles at once, then every interval and whenever Trigger or
// SetPods asks, until ctx ends. Failures are logged and retried at the next
// tick; Ready reports them. Run does not remove the rules: call Remove.
func (in *Interceptor) Run(ctx context.Context, interval time.Duration) {
	logger := klog.FromContext(ctx)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		start := time.Now()
		if err := in.Reconcile(ctx); err != nil {
			logger.Error(err, "Reconcile interception rules")
		} else {
			logger.V(5).Info("Reconciled interception rules", "took", time.Since(start))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-in.trigger:
		}
	}
}

// Remove deletes the jumps and the chains, and restores rp_filter where
// StrictReversePath changed it. Missing pieces are not errors.
func (in *Interceptor) Remove() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.ready.Store(false)
	in.flushed = false
	var errs []error
	for _, tc := range [][2]string{{tableNAT, in.cfg.NATChain}, {tableRaw, in.cfg.RawChain}} {
		if err := in.removeChain(tc[0], tc[1]); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, in.restoreRPFilter(nil))
	return errors.Join(errs...)
}
