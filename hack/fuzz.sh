#!/usr/bin/env bash
# Runs every native Go fuzz target of the repository for FUZZTIME each
# (default 30s) and prints, per target, the executions and the new corpus
# entries the fuzzer reported. The seed corpora (testdata/fuzz and f.Add)
# run in `make test` as ordinary tests; a crasher found here is written to
# the package's testdata/fuzz/<target>/ and must be committed as a
# regression test once fixed.
#
# Note: Go's fuzzer reports executions only when a worker returns a batch,
# so for slow targets (PKCS#12 decoding runs key derivation) the count can
# lag behind the work done.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
go=${GO:-go}

mapfile -t targets < <(grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' pkg cmd test 2>/dev/null |
	while read -r file; do
		dir=$(dirname "$file")
		grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | sed 's/^func //' | sed "s#^#./$dir #"
	done | sort -u)

printf '%-28s %-34s %12s %8s\n' package target execs new
failed=0
for t in "${targets[@]}"; do
	pkg=${t% *}
	name=${t#* }
	log=$(mktemp)
	corpus="$pkg/testdata/fuzz/$name"
	before=$( (ls "$corpus" 2>/dev/null || true) | wc -l)
	if ! $go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1; then
		after=$( (ls "$corpus" 2>/dev/null || true) | wc -l)
		if [ "$after" = "$before" ] && grep -q 'context deadline exceeded' "$log"; then
			# Go's fuzzer can report its own end as a failure when a worker
			# is still inside a slow input (PKCS#12 key derivation) as
			# -fuzztime runs out; no crasher was found or written.
			echo "note: $pkg $name: the fuzzer's own deadline ended a slow input; no crasher" >&2
		else
			failed=1
			echo "FAIL $pkg $name:" >&2
			grep -v '^fuzz: elapsed' "$log" >&2 || true
		fi
	fi
	last=$(grep -E '^fuzz: elapsed: .*execs: ' "$log" | tail -1 || true)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	new=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	printf '%-28s %-34s %12s %8s\n' "$pkg" "$name" "${execs:-?}" "${new:-?}"
	rm -f "$log"
done
exit $failed
