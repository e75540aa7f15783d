#!/usr/bin/env bash
# Instructions per span in `Store::put_spans`, counted by valgrind's callgrind (repeatable on a
# busy machine, unlike timings), for four shapes: 10 spans per trace (an agent's trace) and 1 span
# per trace (the proxy's: each call without trace headers is its own trace), each in batches of
# 512 (the writer under load) and 16 (a lightly loaded writer).
#
#   bench/store_callgrind.sh                     # 4,000 spans per shape, this tree's build
#   bench/store_callgrind.sh --bin OLD_BENCH     # another build of examples/store_bench
#   bench/store_callgrind.sh --spans 2000 --keep DIR   # keep the dumps for callgrind_annotate
#   bench/store_callgrind.sh --time-ordered-ids  # trace ids as the proxy mints them
#
# Counts only put_spans (--toggle-collect), on the calling thread: sled's background flusher is
# not in the figure, and its timing makes counts vary by ~1-2 % from run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
spans=4000
keep=""
ids=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --spans) spans="$2"; shift 2 ;;
        --keep) keep="$2"; shift 2 ;;
        --time-ordered-ids) ids=(--time-ordered-ids); shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
if [[ -z "$bin" ]]; then
    cargo build --release --quiet --example store_bench
    bin=target/release/examples/store_bench
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out="${keep:-$work}"
mkdir -p "$out"
for shape in "10 512" "10 16" "1 512" "1 16"; do
    read -r per_trace batch <<<"$shape"
    dump="$out/callgrind.out.$per_trace.$batch"
    rm -rf "$work/db"
    valgrind --tool=callgrind --callgrind-out-file="$dump" --toggle-collect='*put_spans*' \
        "$bin" --ingest-only --spans "$spans" --spans-per-trace "$per_trace" --batch "$batch" \
        --dir "$work/db" "${ids[@]}" >/dev/null 2>"$work/valgrind.log"
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
    printf 'spans/trace %-3s batch %-4s %6d instructions per span\n' "$per_trace" "$batch" $((ir / spans))
done
