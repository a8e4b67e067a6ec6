#!/usr/bin/env bash
# Prints a directory holding kubelet, kube-controller-manager and
# kube-scheduler for the tests' single-node cluster, building them from the
# pinned tools/kube module (the one that builds kube-apiserver) when they are
# not there yet.
#
# A directory named by KVNODE_NODE_BINS that holds all three is used as it is.
# Otherwise the binaries are built once into a cache outside the repository
# and reused after that:
#   ${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}/node/kube-<version>/
# A cold build takes about 15 minutes on two cores once kube-apiserver is
# built (they share most packages; 30 seconds when only the link is left).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bins=(kubelet kube-controller-manager kube-scheduler)

have_all() { # have_all <dir>
	local b
	for b in "${bins[@]}"; do
		[[ -x "$1/$b" ]] || return 1
	done
}

if [[ -n "${KVNODE_NODE_BINS:-}" ]] && have_all "$KVNODE_NODE_BINS"; then
	echo "$KVNODE_NODE_BINS"
	exit 0
fi

# shellcheck source=hack/kube-version.sh
. "$root/hack/kube-version.sh"
cache=${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}
dir="$cache/node/kube-$kube_version"
mkdir -p "$dir"

# shellcheck source=hack/progress.sh
. "$root/hack/progress.sh"

if ! have_all "$dir"; then
	echo "first-time setup: the tests' node and controllers (${bins[*]}) are built once; about 15 minutes on two cores" >&2
fi
for b in "${bins[@]}"; do
	out="$dir/$b"
	[[ -x "$out" ]] && continue
	echo "building $b $kube_version from the Go module proxy: first time only, cached in $dir" >&2
	(cd "$root/tools/kube" && with_progress "$b" env CGO_ENABLED=0 go build -trimpath -ldflags "$(kube_ldflags)" -o "$out.tmp" "k8s.io/kubernetes/cmd/$b") >&2
	mv "$out.tmp" "$out"
done
echo "$dir"
