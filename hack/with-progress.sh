#!/usr/bin/env bash
# with-progress.sh WHAT CMD...: runs CMD, printing to stderr that WHAT is
# being built and, every 30 seconds while it runs, for how long (see
# progress.sh). make uses it for the builds that take minutes the first time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/progress.sh
. "$root/hack/progress.sh"
what=$1
shift
echo "building $what ($*)" >&2
with_progress "$what" "$@"
