// Package podnet wires a pod's network as a routed CNI does, for the tests
// and the demo that stand in for kubelet and the CNI: the pod is a named
// network namespace joined to the node (the calling process's namespace) by
// a veth pair; "eth0" in the pod holds the pod's /32 with a default route
// via a gateway address that is on every node-side veth, and the node routes
// the pod's /32 to its veth. It runs ip(8) and needs root.
package podnet

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// Pod is one pod's network.
type Pod struct {
	Netns   string // the ip-netns name
	HostIf  string // the node-side veth, at most 15 bytes
	IP      string // the pod's IPv4 address
	Gateway string // the pods' gateway, on every node-side veth
}

// Add creates the namespace and the veth pair and sets up addresses and
// routes on both sides.
func (p Pod) Add() error {
	for _, args := range [][]string{
		{"netns", "add", p.Netns},
		{"link", "add", p.HostIf, "type", "veth", "peer", "name", "eth0", "netns", p.Netns},
		{"addr", "add", p.Gateway + "/32", "dev", p.HostIf},
		{"link", "set", p.HostIf, "up"},
		{"route", "add", p.IP + "/32", "dev", p.HostIf},
		{"-n", p.Netns, "link", "set", "lo", "up"},
		{"-n", p.Netns, "addr", "add", p.IP + "/32", "dev", "eth0"},
		{"-n", p.Netns, "link", "set", "eth0", "up"},
		{"-n", p.Netns, "route", "add", p.Gateway, "dev", "eth0"},
		{"-n", p.Netns, "route", "add", "default", "via", p.Gateway, "dev", "eth0"},
	} {
		if err := IP(args...); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes the veth pair, and with it the pod's /32 route, then the
// namespace, as a CNI does when the pod's sandbox goes: the veth first, for a
// namespace goes away only once nothing holds it, and then asynchronously.
func (p Pod) Remove() error {
	_ = exec.Command("ip", "link", "del", p.HostIf).Run()
	return IP("netns", "del", p.Netns)
}

// IP runs ip(8) with args and returns its output in the error when it fails.
func IP(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
