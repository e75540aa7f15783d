#!/usr/bin/env python3
"""Interleaved A/B of two llm-tracer binaries (capture off unless the 4th argument is `on`), with a
bare nginx reverse proxy alongside, all in front of one nginx mock; wrk -t1 -c32, pinned as
bench.py pins (servers CPU 0, wrk CPU 1). Rounds alternate A, B, nginx, 3 s each, so a noisy
machine's noise hits all three alike; prints req/s and each proxy's CPU µs per request.

    python3 bench/ab.py BEFORE_BINARY AFTER_BINARY ROUNDS [on]

`WORKLOAD=sse` measures the SSE fixture (/stream/v1/chat/completions) instead of the chat JSON.

Standard library only; every process it starts is killed on exit (bench.py's process table).
"""
import atexit
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
a_bin, b_bin, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
capture = len(sys.argv) > 4 and sys.argv[4] == "on"
work = tempfile.mkdtemp(prefix="llm-tracer-ab-")
atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
port = bench.free_port()
bench.start_mock_nginx(work, port)
up = f"http://127.0.0.1:{port}"
nport = bench.free_port()
bench.start_proxy_nginx(work, nport, port)
ta = bench.Tracer(a_bin, work, "a", capture, up, up)
tb = bench.Tracer(b_bin, work, "b", capture, up, up)
lua = os.path.join(work, "chat.lua")
request = bench.fixture("bench/fixtures/chat_request.json").strip()
path = "/v1/chat/completions"
if os.environ.get("WORKLOAD") == "sse":
    request = bench.compact_json(request)[:-1] + ',"stream":true}'
    path = "/stream/v1/chat/completions"
open(lua, "w").write(bench.WRK_LUA.format(body=request))
res = {"base": [], "new": [], "nginx": []}
cpu = {"base": [], "new": [], "nginx": []}
pids = {"base": ta.pid, "new": tb.pid}
for url in (ta.proxy, tb.proxy, f"http://127.0.0.1:{nport}"):
    bench.run_wrk(url + path, lua, 32, 1)
for i in range(rounds):
    for name, url in (("base", ta.proxy), ("new", tb.proxy), ("nginx", f"http://127.0.0.1:{nport}")):
        t0 = bench.proc_ticks(pids[name]) if name in pids else 0
        r = bench.run_wrk(url + path, lua, 32, 3)
        res[name].append(r["rps"])
        if name in pids:
            cpu[name].append(1e6 * (bench.proc_ticks(pids[name]) - t0) / bench.CLK / r["requests"])
for k, v in res.items():
    print(k, "median req/s", round(statistics.median(v)), [round(x) for x in v])
print("cpu us/req base", [round(x,1) for x in cpu["base"]], "median", round(statistics.median(cpu["base"]),2))
print("cpu us/req new ", [round(x,1) for x in cpu["new"]], "median", round(statistics.median(cpu["new"]),2))
print("new/base", round(statistics.median(res["new"]) / statistics.median(res["base"]), 3),
      "base/nginx", round(statistics.median(res["base"]) / statistics.median(res["nginx"]), 3),
      "new/nginx", round(statistics.median(res["new"]) / statistics.median(res["nginx"]), 3))
