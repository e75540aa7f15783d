#!/usr/bin/env bash
# Store at scale (issue 7): load spans into a fresh sled store, then measure ingest spans/s,
# list / filter / one-trace latency through the admin API, start-up time with that store,
# bytes on disk per span, and full-text `q=` latency.
#
#   bench/store.sh                  # 1M spans in 100k traces (a few minutes; capped at 10 min)
#   bench/store.sh --spans 20000    # smoke run
#   bench/store.sh --help
#   bench/store.sh --random-span-ids  # every span id random (OTLP-like); before session 24 the
#                                     # only shape, so compare older rows with this
#
# Not part of CI's pass/fail. The store lives in a temp dir that is removed at the end; the
# server it starts is stopped (SIGTERM) after each phase.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin llm-tracer --example store_bench
exec target/release/examples/store_bench --bin target/release/llm-tracer --max-seconds 600 "$@"
