#!/usr/bin/env python3
"""Does a capture-on proxy's memory stay flat? bench.py's memory phase, repeated: one fresh
capture-on proxy (in front of the Rust streaming mock), then N runs of 256 concurrent streams of
1,000 chunks (1 ms apart); after each run, once every call is stored and 2 s have passed, prints
RSS (anonymous and file-backed) and the peak so far. Then stops the proxy, starts a new one on
the same store and prints its RSS (what the stored data itself costs a process) and after one
list query.

    python3 bench/mem_runs.py RUNS [BINARY]
    LLM_TRACER_CACHE_CAPACITY_BYTES=4194304 python3 bench/mem_runs.py 6

`LLM_TRACER_*` variables pass through to the proxy (a setting to try). The proxy is pinned to
CPU 0 and the load generator to CPU 1, as bench.py pins. Standard library only; every process
it starts is killed on exit (bench.py's process table). Not part of CI.
"""
import atexit
import os
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

if len(sys.argv) < 2:
    raise SystemExit(__doc__)
runs = int(sys.argv[1])
binary = sys.argv[2] if len(sys.argv) > 2 else os.path.join(bench.ROOT, "target/release/llm-tracer")
loadgen = os.path.join(bench.ROOT, "target/release/examples/loadgen")
for path in (binary, loadgen):
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing: cargo build --release --bin llm-tracer --example loadgen")
work = tempfile.mkdtemp(prefix="llm-tracer-mem-runs-")
atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))

_, mock = bench.start_rust_mock(loadgen)


def mib(pid, key):
    return bench.vm_kib(pid, key) / 1024


def rss_line(pid):
    return (
        f"RSS {mib(pid, 'VmRSS'):6.1f} MiB (anon {mib(pid, 'RssAnon'):5.1f}, "
        f"file {mib(pid, 'RssFile'):4.1f}), peak {mib(pid, 'VmHWM'):6.1f} MiB"
    )


tracer = bench.Tracer(binary, work, "mem", True, mock, mock)
print(f"before:        {rss_line(tracer.pid)}", flush=True)
for i in range(runs):
    # bench.py's memory phase: 256 streams of 994 words + 6 = 1,000 chunks, 1 ms apart.
    r = bench.run_loadgen(loadgen, bench.mem_streams_args(tracer.proxy, 256, 994, 1), 300)
    m = tracer.wait_drained(timeout=120)
    time.sleep(2)
    print(
        f"after run {i + 1:2}:  {rss_line(tracer.pid)}; frames {r['frames']}, "
        f"dropped {tracer.dropped(m):.0f}",
        flush=True,
    )
stored = tracer.stats_calls()
tracer.stop()
data = os.path.join(work, "mem-data")
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs)
print(f"store: {stored:.0f} calls, {size / 1048576:.1f} MiB on disk")

again = bench.Tracer(binary, work, "mem", True, mock, mock)
time.sleep(2)
print(f"reopened:      {rss_line(again.pid)}")
with urllib.request.urlopen(again.admin + "/api/traces?limit=50", timeout=30) as resp:
    resp.read()
print(f"after a list:  {rss_line(again.pid)}")
again.stop()
