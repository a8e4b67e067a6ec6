#!/usr/bin/env bash
# Installs the Debian packages kvnode's tests and benchmarks (wrk) need, when
# they are missing.
# Needs root (the integration tests need it too: tmpfs mounts, network
# namespaces, iptables).
set -euo pipefail

# command:package pairs
wanted=(
	"ip:iproute2"
	"iptables:iptables"
	"make:make"
	"git:git"
	"curl:curl"
	"wrk:wrk"
)

missing=()
for pair in "${wanted[@]}"; do
	cmd=${pair%%:*}
	pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
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
