package interception

import (
	"fmt"
	"strconv"
	"strings"
)

// A rule is one iptables rule specification, written exactly as
// "iptables -S" prints it back (option order, "-m tcp", masked CIDRs), so
// that a listed rule can be compared with the wanted one as a string.
type rule []string

func (r rule) String() string { return strings.Join(r, " ") }

// natRules returns the interception chain's rules in order.
func natRules(cfg Config) []rule {
	var r rule
	if cfg.PodCIDR.IsValid() {
		r = append(r, "-s", cfg.PodCIDR.Masked().String())
	}
	r = append(r, "-d", MetadataIP+"/32")
	if cfg.InterfacePrefix != "" {
		r = append(r, "-i", cfg.InterfacePrefix+"+")
	} else {
		r = append(r, "!", "-i", "lo")
	}
	r = append(r, "-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(MetadataPort),
		"-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", cfg.Address, cfg.Port))
	return []rule{r, {"-j", "RETURN"}}
}

// antiSpoofRules returns the raw chain's rules for pods, which must be
// sorted by interface and hold only IPv4 addresses.
func antiSpoofRules(pods []PodInterface) []rule {
	var rules []rule
	for _, p := range pods {
		switch len(p.IPs) {
		case 0:
			rules = append(rules, rule{"-i", p.Interface, "-j", "DROP"})
		case 1:
			rules = append(rules, rule{"!", "-s", p.IPs[0].String() + "/32", "-i", p.Interface, "-j", "DROP"})
		default:
			for _, ip := range p.IPs {
				rules = append(rules, rule{"-s", ip.String() + "/32", "-i", p.Interface, "-j", "RETURN"})
			}
			rules = append(rules, rule{"-i", p.Interface, "-j", "DROP"})
		}
	}
	return rules
}

// listRules returns the rules of table/chain as "iptables -S" prints them,
// without the "-A <chain> " prefix, and whether the chain exists.
func (in *Interceptor) listRules(table, chain string) ([]string, bool, error) {
	lines, err := in.ipt.List(table, chain)
	if err != nil {
		// A missing chain is reported differently by the legacy and the
		// nf_tables iptables; ask for the chain list to tell it apart.
		exists, cerr := in.ipt.ChainExists(table, chain)
		if cerr == nil && !exists {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("list %s chain %s: %w", table, chain, err)
	}
	prefix := "-A " + chain + " "
	var rules []string
	for _, l := range lines {
		if s, ok := strings.CutPrefix(l, prefix); ok {
			rules = append(rules, s)
		}
	}
	return rules, true, nil
}

// syncChain creates table/chain if needed and makes its rules exactly want.
// It changes a rule in place (iptables -R) rather than flushing the chain,
// so a correct rule is never missing, even for a moment. It reports whether
// it changed anything.
func (in *Interceptor) syncChain(table, chain string, want []rule) (bool, error) {
	have, exists, err := in.listRules(table, chain)
	if err != nil {
		return false, err
	}
	changed := false
	if !exists {
		if err := in.ipt.NewChain(table, chain); err != nil {
			return false, fmt.Errorf("create %s chain %s: %w", table, chain, err)
		}
		changed = true
	}
	for i, w := range want {
		switch {
		case i < len(have) && have[i] == w.String():
			continue
		case i < len(have):
			if err := in.ipt.Replace(table, chain, i+1, w...); err != nil {
				return true, fmt.Errorf("replace rule %d of %s chain %s with %q: %w", i+1, table, chain, w, err)
			}
		default:
			if err := in.ipt.Append(table, chain, w...); err != nil {
				return true, fmt.Errorf("append %q to %s chain %s: %w", w, table, chain, err)
			}
		}
		changed = true
	}
	for n := len(have); n > len(want); n-- {
		if err := in.ipt.DeleteById(table, chain, n); err != nil {
			return true, fmt.Errorf("delete rule %d of %s chain %s: %w", n, table, chain, err)
		}
		changed = true
	}
	return changed, nil
}

// ensureJump makes table's PREROUTING jump to chain exactly once, inserting
// the jump first when it is missing. It reports whether it changed anything.
func (in *Interceptor) ensureJump(table, chain string) (bool, error) {
	have, _, err := in.listRules(table, chainPrerouting)
	if err != nil {
		return false, err
	}
	jump := rule{"-j", chain}
	n := 0
	for _, r := range have {
		if r == jump.String() {
			n++
		}
	}
	if n == 0 {
		if err := in.ipt.Insert(table, chainPrerouting, 1, jump...); err != nil {
			return true, fmt.Errorf("insert jump from %s %s to %s: %w", table, chainPrerouting, chain, err)
		}
		return true, nil
	}
	for ; n > 1; n-- {
		if err := in.ipt.Delete(table, chainPrerouting, jump...); err != nil {
			return true, fmt.Errorf("delete duplicate jump from %s %s to %s: %w", table, chainPrerouting, chain, err)
		}
	}
	return false, nil
}

// removeChain deletes every jump from table's PREROUTING to chain, then the
// chain.
func (in *Interceptor) removeChain(table, chain string) error {
	have, _, err := in.listRules(table, chainPrerouting)
	if err != nil {
		return err
	}
	jump := rule{"-j", chain}
	for _, r := range have {
		if r != jump.String() {
			continue
		}
		if err := in.ipt.Delete(table, chainPrerouting, jump...); err != nil {
			return fmt.Errorf("delete jump from %s %s to %s: %w", table, chainPrerouting, chain, err)
		}
	}
	_, exists, err := in.listRules(table, chain)
	if err != nil || !exists {
		return err
	}
	if err := in.ipt.ClearAndDeleteChain(table, chain); err != nil {
		return fmt.Errorf("delete %s chain %s: %w", table, chain, err)
	}
	return nil
}
