#!/usr/bin/env bash
# Installs the Debian packages kvnode's tests and benchmarks (wrk) need, when
# they are missing: among them the test node's container runtime (containerd,
# runc, the CNI plugins, conntrack).
# Needs root (the integration tests need it too: tmpfs mounts, network
# namespaces, iptables).
set -euo pipefail

# command:package pairs; a command that is an absolute path is checked as a
# file (the CNI plugins live outside PATH, in /usr/lib/cni).
wanted=(
	"ip:iproute2"
	"iptables:iptables"
	"make:make"
	"git:git"
	"curl:curl"
	"wrk:wrk"
	"containerd:containerd"
	"runc:runc"
	"/usr/lib/cni/bridge:containernetworking-plugins"
	"conntrack:conntrack"
)

missing=()
for pair in "${wanted[@]}"; do
	cmd=${pair%%:*}
	pkg=${pair#*:}
	if [[ $cmd == /* ]]; then
		[[ -x $cmd ]] || missing+=("$pkg")
	else
		command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
	fi
done
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) != 0 ]]; then
	echo "install-deps: missing ${missing[*]}; run as root or install them" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
