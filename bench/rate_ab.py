#!/usr/bin/env python3
"""Interleaved fixed-rate latency of llm-tracer builds against direct calls: an nginx mock, one
proxy per binary (capture on unless CAPTURE=0), and `examples/loadgen.rs rate` at 5,000 req/s
over 32 connections, pinned as bench.py pins (servers CPU 0, load generator CPU 1). Rounds
alternate direct, binary 1, binary 2, ...; each capture-on round waits until every call is
stored, then prints p50/p99/p99.9 and the proxy's trim, spool, writer-raise and drop counters.
Medians at the end. A build comparison for the latency targets on a fresh store (bench.py's
rate phase runs after the throughput rounds, on a store of a million spans).

    python3 bench/rate_ab.py ROUNDS SECONDS BINARY [BINARY...]
    CAPTURE=0 python3 bench/rate_ab.py 3 4 target/release/llm-tracer /tmp/old-llm-tracer

Standard library only; every process it starts is killed on exit (bench.py's process table).
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

rounds, seconds, binaries, work, upstream, body, loadgen = bench.ab_rate_setup(__doc__, "llm-tracer-rate-ab-")
capture = os.environ.get("CAPTURE", "1") == "1"
tracers = [bench.Tracer(b, work, f"t{i}", capture, upstream, upstream) for i, b in enumerate(binaries)]


def rate(base):
    return bench.run_loadgen(loadgen, bench.rate_args(base, 5000, 32, seconds, body), seconds + 60)


results = {}
for r in range(rounds):
    for name, base, tracer in [("direct", upstream, None)] + [(b, t.proxy, t) for b, t in zip(binaries, tracers)]:
        x = rate(base)
        results.setdefault(name, []).append(x)
        extra = ""
        if tracer is not None:
            m = tracer.wait_drained()
            extra = (f"  trims {m.get('llm_tracer_malloc_trims_total', 0):.0f}"
                     f" spooled {m.get('llm_tracer_spooled_calls_total', 0):.0f}"
                     f" writer raises {m.get('llm_tracer_writer_raises_total', 0):.0f}"
                     f" dropped {tracer.dropped(m):.0f}")
        print(f"r{r + 1} {name:40s} p50 {x['p50_us'] / 1000:.3f} p99 {x['p99_us'] / 1000:.3f} "
              f"p99.9 {x['p999_us'] / 1000:.3f} ms{extra}", flush=True)
for name, xs in results.items():
    p50 = statistics.median(x["p50_us"] for x in xs) / 1000
    p99 = statistics.median(x["p99_us"] for x in xs) / 1000
    print(f"median {name:40s} p50 {p50:.3f} p99 {p99:.3f} ms")
