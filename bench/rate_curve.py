#!/usr/bin/env python3
"""Added latency against request rate: direct, nginx as a bare reverse proxy, and llm-tracer with
capture off and on, at several fixed rates (open loop, `loadgen rate`, 32 connections), pinned as
bench.py pins (servers on CPU 0, load generator on CPU 1). Rounds interleave every (rate,
target) pair; each capture-on round waits until every call is stored before the next one runs.

It answers "how much of the fixed-rate figure is the host's": issue #7's latency targets are
absolute (p50 ≤ 0.15 ms, p99 ≤ 0.5 ms over direct at 5,000 req/s), and what a bare nginx adds
on the same host, in the same run, says how much of ours any reverse proxy pays here.

Prints, per rate, medians over the rounds: p50 / p99 of each target, the latency each proxy adds
over direct (a difference of medians), its CPU per request (all its threads, from /proc; for
capture on, storing the round's calls included), the capture-on proxy's spooled calls, the
requests that failed or were not 2xx (summed over the rounds; a latency from a round with failures
is suspect), and the busiest round's CPU used by processes the script did not start (`other`, %
of one CPU).

    python3 bench/rate_curve.py                                  # 1000,2000,5000 req/s, 3 rounds of 4 s
    python3 bench/rate_curve.py --rates 500,5000 --rounds 5 --seconds 5 --bin /tmp/old-llm-tracer

Needs nginx (apt) and `cargo build --release --example loadgen`. Standard library only; every
process it starts is killed on exit (bench.py's process table). Not part of CI.
"""
import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TARGETS = ["direct", "nginx", "capture off", "capture on"]


def args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="1000,2000,5000", help="comma-separated req/s")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per round (after a 1 s warm-up)")
    p.add_argument("--bin", default=os.path.join(bench.ROOT, "target/release/llm-tracer"))
    a = p.parse_args()
    try:
        a.rates = sorted({int(r) for r in a.rates.split(",")})
    except ValueError:
        p.error(f"--rates must be comma-separated integers, not {a.rates!r}")
    if not a.rates or min(a.rates) <= 0 or a.rounds <= 0 or a.seconds <= 0:
        p.error("--rates, --rounds and --seconds must be positive")
    return a


def main():
    a = args()
    loadgen = os.path.join(bench.ROOT, "target/release/examples/loadgen")
    for path, build in [(loadgen, "cargo build --release --example loadgen"), (a.bin, "cargo build --release")]:
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: {build}")
    work = tempfile.mkdtemp(prefix="llm-tracer-rate-curve-")
    atexit.register(lambda: (bench.PROCS.cleanup(), shutil.rmtree(work, ignore_errors=True)))
    port = bench.free_port()
    bench.start_mock_nginx(work, port)
    upstream = f"http://127.0.0.1:{port}"
    nginx_port = bench.free_port()
    nginx = bench.start_proxy_nginx(work, nginx_port, port)
    off = bench.Tracer(a.bin, work, "off", False, upstream, upstream)
    on = bench.Tracer(a.bin, work, "on", True, upstream, upstream)
    # name -> (base URL, pid whose CPU is the proxy's, tracer to drain)
    targets = {
        "direct": (upstream, None, None),
        "nginx": (f"http://127.0.0.1:{nginx_port}", nginx.pid, None),
        "capture off": (off.proxy, off.pid, None),
        "capture on": (on.proxy, on.pid, on),
    }
    body = os.path.join(bench.ROOT, "bench/fixtures/chat_request.json")
    rows = {}  # (rate, target) -> [result]
    spooled_before = 0.0
    for rnd in range(a.rounds):
        for rate in a.rates:
            for name in TARGETS:
                base, pid, tracer = targets[name]
                window = bench.Window(pid)
                x = bench.run_loadgen(loadgen, bench.rate_args(base, rate, 32, a.seconds, body), a.seconds + 60)
                if tracer is not None:
                    # The CPU of storing the round's calls counts too: the window closes after.
                    m = tracer.wait_drained()
                    spooled = m.get("llm_tracer_spooled_calls_total", 0)
                    x["spooled"], spooled_before = spooled - spooled_before, spooled
                w = window.close()
                x["other_cpu_pct"] = w["other_cpu_pct"]
                # The whole run (warm-up included) sent rate × (seconds + 1) requests.
                x["cpu_us"] = 1e6 * w["subject_cpu_s"] / (rate * (a.seconds + 1)) if pid else None
                x["failed"] = x.get("errors", 0) + x.get("non_2xx", 0)
                rows.setdefault((rate, name), []).append(x)
                bench.log(f"r{rnd + 1} {rate} req/s {name:12s} p50 {x['p50_us'] / 1000:.3f} "
                          f"p99 {x['p99_us'] / 1000:.3f} ms, failed {x['failed']}, other CPU {x['other_cpu_pct']:.0f}%")
    report(a, rows)


def med(xs, key):
    vals = [x[key] for x in xs if x.get(key) is not None]
    return statistics.median(vals) if vals else None


def report(a, rows):
    print(f"\n{a.bin}; {a.rounds} round(s) × {a.seconds:g} s per (rate, target), 32 connections, medians; "
          "load generator on CPU 1, mock and proxies on CPU 0")
    print("\n| rate | target | p50 ms | p99 ms | added p50 | added p99 | CPU µs/req | spooled | failed | other CPU |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rate in a.rates:
        direct = rows[(rate, "direct")]
        d50, d99 = med(direct, "p50_us") / 1000, med(direct, "p99_us") / 1000
        for name in TARGETS:
            xs = rows[(rate, name)]
            p50, p99 = med(xs, "p50_us") / 1000, med(xs, "p99_us") / 1000
            added = "– | –" if name == "direct" else f"{p50 - d50:+.3f} | {p99 - d99:+.3f}"
            cpu = med(xs, "cpu_us")
            spooled = med(xs, "spooled")
            other = max(x["other_cpu_pct"] for x in xs)
            failed = sum(x["failed"] for x in xs)
            print(f"| {rate} | {name} | {p50:.3f} | {p99:.3f} | {added} | "
                  f"{'–' if cpu is None else f'{cpu:.1f}'} | {'–' if spooled is None else f'{spooled:.0f}'} | "
                  f"{failed} | {other:.0f}%{'!' if other > 10 else ''} |")


if __name__ == "__main__":
    main()
