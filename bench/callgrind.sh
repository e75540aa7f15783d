#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable on a busy machine
# (the count does not depend on what else runs), unlike timings.
#
#   bench/callgrind.sh                         # 2,000 requests, capture on and off, JSON and SSE
#   bench/callgrind.sh --requests 500 --capture off
#   bench/callgrind.sh --keep DIR              # keep the dumps for callgrind_annotate
#
# The proxy runs under valgrind against an nginx mock upstream (apt-installed if missing); the
# load generator (examples/loadgen.rs, closed loop, 4 connections) is not measured. Counters are
# zeroed after a warm-up and dumped once every request's span is stored, so the figure covers
# the request path *and* the capture pipeline (span assembly, store write) per request.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
for pkg in valgrind nginx; do
    command -v "$pkg" >/dev/null 2>&1 || [[ -x "/usr/sbin/$pkg" ]] || as_root apt-get install -y "$pkg" >/dev/null
done
cargo build --release --quiet --bin llm-tracer --example loadgen
exec python3 bench/bench.py callgrind "$@"
