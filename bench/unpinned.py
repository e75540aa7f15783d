#!/usr/bin/env python3
"""Throughput with nothing pinned: the independent check may not pin as bench.py does. An nginx
mock, a bare nginx reverse proxy (one worker) and llm-tracer (capture off unless the 3rd argument
is `on`), every process placed by the kernel; wrk -c32 with 1 and 2 threads. Rounds alternate
direct, nginx and llm-tracer, 3 s each; prints req/s medians, llm-tracer/nginx, and context
switches per request over every process on the machine.

    python3 bench/unpinned.py BINARY ROUNDS [on]

Standard library only; every process it starts is killed on exit (bench.py's process table).
"""
import atexit
import glob
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

if len(sys.argv) < 3:
    raise SystemExit(__doc__)
binary, rounds = sys.argv[1], int(sys.argv[2])
capture = len(sys.argv) > 3 and sys.argv[3] == "on"
bench.SERVER_CPU = None  # start_nginx pins to it
work = tempfile.mkdtemp(prefix="llm-tracer-unpinned-")
atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
port = bench.free_port()
bench.start_mock_nginx(work, port)
up = f"http://127.0.0.1:{port}"
nport = bench.free_port()
bench.start_proxy_nginx(work, nport, port)
tracer = bench.Tracer(binary, work, "t", capture, up, up, cpu=None)
lua = os.path.join(work, "chat.lua")
with open(lua, "w") as f:
    f.write(bench.WRK_LUA.format(body=bench.fixture("bench/fixtures/chat_request.json").strip()))
path = "/v1/chat/completions"
targets = {"direct": up, "nginx": f"http://127.0.0.1:{nport}", "llm-tracer": tracer.proxy}


def context_switches():
    """Voluntary + involuntary context switches of every thread on the machine so far."""
    total = 0
    for status in glob.glob("/proc/[0-9]*/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


for threads in (1, 2):
    rps = {k: [] for k in targets}
    switches = {k: [] for k in targets}
    for url in targets.values():
        bench.run_wrk(url + path, lua, 32, 1, threads, cpu=None)
    for _ in range(rounds):
        for name, url in targets.items():
            before = context_switches()
            r = bench.run_wrk(url + path, lua, 32, 3, threads, cpu=None)
            rps[name].append(r["rps"])
            switches[name].append((context_switches() - before) / max(r["requests"], 1))
    if capture:
        tracer.wait_drained()
    print(f"wrk -t{threads} -c32, {rounds} rounds of 3 s, nothing pinned:")
    for name in targets:
        print(f"  {name:10s} median {statistics.median(rps[name]):8.0f} req/s {[round(x) for x in rps[name]]}"
              f"  context switches/req {statistics.median(switches[name]):.2f}")
    ratio = statistics.median(rps["llm-tracer"]) / statistics.median(rps["nginx"])
    print(f"  llm-tracer/nginx {ratio:.3f} (capture {'on' if capture else 'off'})", flush=True)
