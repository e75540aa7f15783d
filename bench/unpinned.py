#!/usr/bin/env python3
"""Throughput with nothing pinned: the independent check may not pin as bench.py does.
An nginx mock, a bare nginx reverse proxy (one worker) and llm-tracer (capture off, or on with
CAPTURE=on), every
process placed by the kernel; wrk -c32 with 1 and then 2 threads. Each round runs direct, nginx
and llm-tracer for 3 s each, starting at a different one each round; prints req/s medians,
llm-tracer/nginx, and context switches per request: every thread alive on the machine at both
ends of the round, plus wrk's own (threads that exit during a round are not counted).

    python3 bench/unpinned.py BINARY ROUNDS
    CAPTURE=on python3 bench/unpinned.py BINARY ROUNDS   # llm-tracer with capture on (target c/b ≥ 0.6)

Standard library only; every process it starts is killed on exit (bench.py's process table).
"""
import atexit
import glob
import os
import resource
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

if len(sys.argv) != 3 or not sys.argv[2].isdigit() or int(sys.argv[2]) < 1:
    raise SystemExit(__doc__)
binary, rounds = sys.argv[1], int(sys.argv[2])
bench.SERVER_CPU = None  # start_nginx pins to it
work = tempfile.mkdtemp(prefix="llm-tracer-unpinned-")
# Registered first so it runs last: the servers are stopped before their directory goes.
atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
atexit.register(bench.PROCS.cleanup)
port = bench.free_port()
bench.start_mock_nginx(work, port)
up = f"http://127.0.0.1:{port}"
nport = bench.free_port()
bench.start_proxy_nginx(work, nport, port)
capture = os.environ.get("CAPTURE", "off") == "on"
tracer = bench.Tracer(binary, work, "t", capture, up, up, cpu=None)
lua = os.path.join(work, "chat.lua")
with open(lua, "w") as f:
    f.write(bench.WRK_LUA.format(body=bench.fixture("bench/fixtures/chat_request.json").strip()))
path = "/v1/chat/completions"
targets = [("direct", up), ("nginx", f"http://127.0.0.1:{nport}"), ("llm-tracer", tracer.proxy)]


def context_switches():
    """Context switches of every thread now on the machine, plus those of reaped children (wrk)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = children.ru_nvcsw + children.ru_nivcsw
    for status in glob.glob("/proc/[0-9]*/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def wrk(url, seconds, threads):
    r = bench.run_wrk(url + path, lua, 32, seconds, threads, cpu=None)
    if r["errors"] or r["non_2xx"]:
        raise RuntimeError(f"{url}: {r['errors']} errors, {r['non_2xx']} non-2xx answers")
    return r


for threads in (1, 2):
    rps = {name: [] for name, _ in targets}
    switches = {name: [] for name, _ in targets}
    for _, url in targets:
        wrk(url, 1, threads)
    for i in range(rounds):
        for name, url in targets[i % 3:] + targets[:i % 3]:
            before = context_switches()
            r = wrk(url, 3, threads)
            rps[name].append(r["rps"])
            switches[name].append((context_switches() - before) / max(r["requests"], 1))
    print(f"wrk -t{threads} -c32, {rounds} rounds of 3 s, nothing pinned:")
    for name, _ in targets:
        print(f"  {name:10s} median {statistics.median(rps[name]):8.0f} req/s {[round(x) for x in rps[name]]}"
              f"  context switches/req {statistics.median(switches[name]):.2f}")
    ratio = statistics.median(rps["llm-tracer"]) / statistics.median(rps["nginx"])
    print(f"  llm-tracer/nginx {ratio:.3f} (capture {'on' if capture else 'off'})", flush=True)
