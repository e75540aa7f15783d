#!/usr/bin/env bash
# llm-tracer benchmark suite (issue 7): direct vs nginx vs llm-tracer (capture on/off), in one run.
#
#   bench/run.sh            # full run: 3 rounds x 10 s per target, ~10 min; appends to bench/RESULTS.md
#   bench/run.sh --quick    # smoke run: 1 round x 2 s, < 3 min after the release build
#   bench/run.sh --help     # every option (rounds, duration, rate, noise threshold, ...)
#
# Not part of CI's pass/fail. Builds release, installs nginx and wrk if missing (apt), then runs
# bench/bench.py, which starts every server on 127.0.0.1, pins the load generator to CPU 1 and the
# mocks and proxies to CPU 0, and kills everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    exec python3 bench/bench.py run --help
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]} (apt)" >&2
    as_root apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
        as_root apt-get update >/dev/null
        as_root apt-get install -y "${missing[@]}" >/dev/null
    }
fi

echo "bench: building release (binary + load generator)" >&2
cargo build --release --quiet --bin llm-tracer --example loadgen

# bench.py owns every process it starts; this trap only covers a kill of the shell itself.
child=""
trap '[[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null; wait 2>/dev/null || true' EXIT INT TERM
python3 bench/bench.py run "$@" &
child=$!
wait "$child"
status=$?
child=""
exit "$status"
