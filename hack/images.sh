#!/usr/bin/env bash
# Prints the directory of the test cluster's images (image tarballs and
# images.json), building them with tools/images: kvdriver, nmi (with
# Debian's iptables), the CSI sidecars, the pod sandbox and the test
# workload. Everything is cached outside the repository:
#   ${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}/images/
# and a run whose images have not changed rewrites nothing (a few seconds).
# The first run downloads iptables' .debs with apt-get.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}/images
version=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
mkdir -p "$cache"

# shellcheck source=hack/progress.sh
. "$root/hack/progress.sh"

if [[ ! -d "$cache/sets" ]]; then
	echo "first-time setup: building the test cluster's images into $cache" >&2
fi
(cd "$root/tools/images" && with_progress "the image builder" env CGO_ENABLED=0 go build -trimpath -o "$cache/images-builder" .) >&2
with_progress "the images" "$cache/images-builder" -repo "$root" -cache "$cache" -version "$version"
