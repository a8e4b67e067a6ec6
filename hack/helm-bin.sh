#!/usr/bin/env bash
# Prints the path of the Helm CLI pinned in tools/helm, building it once into
# a cache outside the repository (about 2 minutes on two cores). $KVNODE_HELM,
# when it names an executable, is used as it is.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${KVNODE_HELM:-}" && -x "$KVNODE_HELM" ]]; then
	echo "$KVNODE_HELM"
	exit 0
fi
version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v4" {print $3}' "$root/tools/helm/go.mod")
cache=${KVNODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvnode}
out="$cache/helm/$version/helm"
if [[ ! -x "$out" ]]; then
	echo "building helm $version from the Go module proxy: first time only, about 2 minutes, cached in $(dirname "$out")" >&2
	mkdir -p "$(dirname "$out")"
	# shellcheck source=hack/progress.sh
	. "$root/hack/progress.sh"
	(cd "$root/tools/helm" && with_progress helm env CGO_ENABLED=0 go build -trimpath -o "$out.tmp" helm.sh/helm/v4/cmd/helm) >&2
	mv "$out.tmp" "$out"
fi
echo "$out"
