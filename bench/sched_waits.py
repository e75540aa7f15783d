#!/usr/bin/env python3
"""Who makes requests wait for the CPU: one llm-tracer at a fixed request rate, pinned as bench.py
pins (servers on CPU 0, load generator on CPU 1), with `perf sched record -a` over a window in the
middle of the load. From `perf sched timehist` on the servers' CPU it prints:

- the scheduling delay (runnable, not running) of the proxy's runtime threads and of the nginx
  mock: p50 / p99 / max, in ms;
- for every delay above --over ms, the task that had the CPU just before the waiting thread got
  it (the usual culprit), counted and summed;
- each task's CPU time in the window and its longest single run.

Task names are as the kernel keeps them: at most 15 characters (`llm-tracer-writ` is the capture
writer, `llm-tracer-spoo` the spool appender); numbered pools fold into one row (`sled-io-*`).

    python3 bench/sched_waits.py target/release/llm-tracer
    python3 bench/sched_waits.py BIN --rate 5000 --seconds 8 --window 3 --over 0.3
    CAPTURE=0 python3 bench/sched_waits.py BIN
    python3 bench/sched_waits.py BIN --store /tmp/big-store --warm 10   # on a copy of a large store
                       (filled by 60 s of closed-loop load and saved there on the first run)

Needs `perf` (Debian: linux-perf) and permission to trace the scheduler (root, or
kernel.perf_event_paranoid ≤ -1). Not part of CI; bench/RESULTS.md (session 8) shows its use.
"""
import argparse
import atexit
import collections
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

# `perf sched timehist` rows: time, [cpu], task[tid/pid], wait, sch delay, run time (ms).
ROW = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
# Threads whose waits are a request's waits.
REQUEST_THREADS = ("tokio-rt-worker", "nginx")
# The load generator's warm-up (not measured, not recorded), seconds.
WARMUP = 1


def args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=8.0, help="load duration")
    p.add_argument("--window", type=float, default=3.0, help="seconds recorded, centred in the load")
    p.add_argument("--over", type=float, default=0.3, help="delays above this (ms) are attributed")
    p.add_argument("--store", help="start the proxy on a copy of this data dir (a large store, say); "
                   "if it does not exist, a store is first filled (--fill) and saved there")
    p.add_argument("--fill", type=int, default=60,
                   help="seconds of closed-loop load (wrk, 32 connections) that fill a new --store")
    p.add_argument("--warm", type=float, default=0.0,
                   help="seconds of the same load first, then wait until every call is stored")
    return p.parse_args()


def task_name(field):
    """`sled-io-3[31952/31944]` → `sled-io-*`; numbered thread pools fold into one row."""
    name = field.split("[")[0]
    return re.sub(r"-\d+$", "-*", name)


def parse(timehist):
    rows = []
    for line in timehist.splitlines():
        m = ROW.match(line)
        if m:
            rows.append((task_name(m.group(3)), float(m.group(5)), float(m.group(6))))
    return rows


def quantiles(xs):
    xs = sorted(xs)
    if not xs:
        return "n=0"
    q = lambda p: xs[max(0, math.ceil(p * len(xs)) - 1)]  # noqa: E731 (nearest rank)
    return f"n={len(xs)} p50 {q(0.5):.3f} p99 {q(0.99):.3f} max {xs[-1]:.3f} ms"


def report(rows, over):
    for who in REQUEST_THREADS:
        print(f"scheduling delay, {who}: {quantiles([d for t, d, _ in rows if t.startswith(who)])}")
    blame = collections.defaultdict(lambda: [0, 0.0])
    for prev, row in zip(rows, rows[1:]):
        task, delay, _ = row
        if task.startswith(REQUEST_THREADS) and delay > over:
            blame[prev[0]][0] += 1
            blame[prev[0]][1] += delay
    print(f"\ndelays of request threads above {over} ms, by the task that ran just before:")
    print(f"| {'task':28s} | delays | sum ms |\n| --- | ---: | ---: |")
    for task, (n, total) in sorted(blame.items(), key=lambda kv: -kv[1][1]):
        print(f"| {task:28s} | {n:6d} | {total:6.1f} |")
    runs = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for task, _, run in rows:
        r = runs[task]
        r[0] += 1
        r[1] += run
        r[2] = max(r[2], run)
    print("\nCPU in the window, by task:")
    print(f"| {'task':28s} | runs | CPU ms | longest run ms |\n| --- | ---: | ---: | ---: |")
    for task, (n, total, longest) in sorted(runs.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"| {task:28s} | {n:5d} | {total:7.1f} | {longest:6.3f} |")


def fill_store(a, work, upstream, body):
    """Fills a new store at `a.store`: a capture-on proxy takes `a.fill` seconds of closed-loop
    load (about 20,000 calls a second here), stores every call and stops cleanly; then its data
    dir is copied there (through a temporary name, so an interrupted copy leaves no store)."""
    if shutil.which("wrk") is None:
        raise SystemExit("filling a --store needs wrk (bench/run.sh installs it)")
    lua = os.path.join(work, "fill.lua")
    with open(body) as f, open(lua, "w") as out:
        out.write(bench.WRK_LUA.format(body=f.read().strip()))
    filler = bench.Tracer(a.binary, work, "fill", True, upstream, upstream)
    left = a.fill
    while left > 0:
        seconds = min(left, 20)
        r = bench.run_wrk(filler.proxy + "/v1/chat/completions", lua, 32, seconds)
        if r["errors"] or r["non_2xx"]:
            raise SystemExit(f"filling the store: {r['errors']} errors, {r['non_2xx']} non-2xx")
        left -= seconds
    drained, m = wait_stored(filler, 3600)
    if not drained:
        raise SystemExit("filling the store: not every call was stored within an hour")
    filler.stop()
    if filler.proc.returncode != 0:
        raise SystemExit(f"filling the store: the proxy exited with {filler.proc.returncode}")
    tmp = a.store.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(os.path.join(work, "fill-data"), tmp)
    os.rename(tmp, a.store)
    print(f"filled {a.store}: {m.get('llm_tracer_spans_captured_total', 0):.0f} calls", flush=True)


def wait_stored(tracer, timeout):
    """Waits until every call is recorded; whether it got there, and the metrics."""
    m = tracer.wait_drained(timeout=timeout)
    return tracer.is_drained(m), m


def wait_store_open(tracer, timeout=600):
    """A large store opens in the background after the proxy listens: waits until the admin API
    answers from it (`/api/stats` is 503 while it opens)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            tracer.stats_calls()
            return
        except OSError:  # urllib's HTTPError (503) and connection errors
            time.sleep(0.5)
    raise SystemExit(f"the store did not open within {timeout} s")


def main():
    a = args()
    if shutil.which("perf") is None:
        raise SystemExit("needs perf (apt-get install linux-perf)")
    if not 0 < a.window <= a.seconds:
        raise SystemExit(f"--window ({a.window}) must be above 0 and at most --seconds ({a.seconds})")
    loadgen = os.path.join(bench.ROOT, "target/release/examples/loadgen")
    if not os.path.exists(loadgen):
        raise SystemExit(f"{loadgen} is missing: cargo build --release --example loadgen")
    capture = os.environ.get("CAPTURE", "1") == "1"
    work = tempfile.mkdtemp(prefix="llm-tracer-sched-")
    # Stop the processes (perf, proxy, nginx) before their directory goes (atexit runs last first).
    atexit.register(lambda: (bench.PROCS.cleanup(), shutil.rmtree(work, ignore_errors=True)))
    port = bench.free_port()
    bench.start_mock_nginx(work, port)
    upstream = f"http://127.0.0.1:{port}"
    body = os.path.join(bench.ROOT, "bench/fixtures/chat_request.json")
    if a.store and not os.path.exists(a.store):
        fill_store(a, work, upstream, body)
    if a.store:
        shutil.copytree(a.store, os.path.join(work, "t-data"))
    tracer = bench.Tracer(a.binary, work, "t", capture, upstream, upstream, timeout=120)
    if a.store:
        wait_store_open(tracer)
    if a.warm > 0:
        bench.run_loadgen(loadgen, bench.rate_args(tracer.proxy, a.rate, 32, a.warm, body), a.warm + 60)
        if not wait_stored(tracer, 900)[0]:
            raise SystemExit("the warm-up load was not stored within 900 s")
    data = os.path.join(work, "perf.data")
    lead = (a.seconds - a.window) / 2
    recorded = {}
    load_over = threading.Event()

    def record():
        # Centred in the measured load; nothing is recorded if the load ended (or failed) first.
        if load_over.wait(WARMUP + lead):
            return
        err = os.path.join(work, "perf.stderr")
        proc = subprocess.Popen(["perf", "sched", "record", "-o", data, "--", "sleep", str(a.window)],
                                stdout=subprocess.DEVNULL, stderr=open(err, "w"))
        bench.PROCS.add("perf", proc)
        recorded["rc"] = proc.wait()
        with open(err) as f:
            recorded["err"] = f.read()[-600:]

    rec = threading.Thread(target=record, daemon=True)
    rec.start()
    try:
        x = bench.run_loadgen(loadgen, ["rate", "--url", tracer.proxy + "/v1/chat/completions",
                                        "--rate", str(a.rate), "--connections", "32", "--duration",
                                        str(a.seconds), "--warmup", str(WARMUP), "--body", body],
                              a.seconds + 60)
    finally:
        load_over.set()
    rec.join(a.window + 60)
    if recorded.get("rc") != 0:
        raise SystemExit(f"perf sched record failed (exit {recorded.get('rc')}): {recorded.get('err', '')}")
    hist = subprocess.run(["perf", "sched", "timehist", "-i", data, "--cpu", bench.SERVER_CPU],
                          capture_output=True, text=True)
    rows = parse(hist.stdout)
    if hist.returncode != 0 or not rows:
        raise SystemExit(f"perf sched timehist gave no rows (exit {hist.returncode}): {hist.stderr[-600:]}")
    print(f"{a.binary}, capture {'on' if capture else 'off'}, {a.rate} req/s: p50 "
          f"{x['p50_us'] / 1000:.3f} p99 {x['p99_us'] / 1000:.3f} p99.9 {x['p999_us'] / 1000:.3f} ms "
          f"(whole load); perf window {a.window} s on CPU {bench.SERVER_CPU}\n")
    report(rows, a.over)


if __name__ == "__main__":
    main()
