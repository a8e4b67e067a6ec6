# Sourced by the hack/ build scripts. with_progress WHAT CMD... runs CMD and,
# while it runs, prints to stderr every 30 seconds that WHAT is still being
# built and for how long, so that a first build of many minutes is never
# silent.
with_progress() {
	local what=$1
	shift
	local start
	start=$(date +%s)
	(
		trap 'kill "$nap" 2>/dev/null; exit 0' TERM
		while :; do
			sleep 30 &
			nap=$!
			wait "$nap"
			elapsed=$(($(date +%s) - start))
			printf '  ... still building %s: %dm%02ds so far\n' "$what" $((elapsed / 60)) $((elapsed % 60))
		done
	) >&2 &
	local ticker=$! rc=0
	"$@" || rc=$?
	kill "$ticker" 2>/dev/null || true
	wait "$ticker" 2>/dev/null || true
	return "$rc"
}
