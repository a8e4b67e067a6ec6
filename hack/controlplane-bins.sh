#!/usr/bin/env bash
# Prints a directory holding etcd and kube-apiserver for the test control plane,
# building them from the pinned tools modules when they are not there yet.
#
# A directory already named by KUBEBUILDER_ASSETS that holds both binaries is
# used as it is (controller-runtime's envtest convention). Otherwise the binaries
# are built once into a cache outside the repository and reused after that:
#   ${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}/controlplane/<versions>/
# A cold build takes about 15 minutes on two cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
	echo "$KUBEBUILDER_ASSETS"
	exit 0
fi

# shellcheck source=hack/kube-version.sh
. "$root/hack/kube-version.sh"
etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$root/tools/etcd/go.mod")
cache=${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}
dir="$cache/controlplane/kube-$kube_version-etcd-$etcd_version"
mkdir -p "$dir"

# shellcheck source=hack/progress.sh
. "$root/hack/progress.sh"

build() { # build <module dir> <package> <output name> <version> [ldflags]
	local out="$dir/$3"
	[[ -x "$out" ]] && return 0
	echo "building $3 $4 from the Go module proxy: first time only, cached in $dir" >&2
	(cd "$root/tools/$1" && with_progress "$3" env CGO_ENABLED=0 go build -trimpath -ldflags "${5:-}" -o "$out.tmp" "$2") >&2
	mv "$out.tmp" "$out"
}

# A kube-apiserver cached before it was stamped with its version is linked
# again (about a minute: its packages are in Go's build cache).
if [[ -x "$dir/kube-apiserver" ]] && ! "$dir/kube-apiserver" --version 2>/dev/null | grep -qF "$kube_version"; then
	rm -f "$dir/kube-apiserver"
fi

if [[ ! -x "$dir/etcd" || ! -x "$dir/kube-apiserver" ]]; then
	echo "first-time setup: the tests' control plane (etcd, kube-apiserver) is built once; about 15 minutes on two cores" >&2
fi
build etcd ./cmd/etcd etcd "$etcd_version"
build kube k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$kube_version" "$(kube_ldflags)"
echo "$dir"
