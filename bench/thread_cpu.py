#!/usr/bin/env python3
"""Where a capture-on proxy's CPU goes, by thread, at a fixed rate. For each binary (rounds
alternate binaries), a fresh capture-on proxy in front of an nginx mock takes `loadgen rate` at
RATE req/s (default 5,000) over 32 connections for SECONDS; once every call is stored, it prints
each thread group's CPU (user + system, from /proc/PID/task/*/stat) and context switches
(voluntary + involuntary, /proc/PID/task/*/status) per call: the runtime (the request path:
tokio workers and the main thread),
the writer, sled's I/O pool (`sled-io-*`) and flusher, and the rest. Medians at the end.
Pinned as bench.py pins (servers CPU 0, load generator CPU 1). Not part of CI.

    python3 bench/thread_cpu.py ROUNDS SECONDS BINARY [BINARY...]
    RATE=2000 python3 bench/thread_cpu.py 3 5 target/release/llm-tracer /tmp/old-llm-tracer

Standard library only; every process it starts is killed on exit (bench.py's process table).
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

rounds, seconds, binaries, work, upstream, body, loadgen = bench.ab_rate_setup(
    __doc__, "llm-tracer-thread-cpu-")
rate_per_s = int(os.environ.get("RATE", "5000"))
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
GROUPS = ["runtime", "writer", "sled-io pool", "sled flusher", "other"]


def group(comm, main):
    """The thread group of a thread named `comm` (`main`: the process's first thread, named after
    the binary's file; it runs the runtime's `block_on`)."""
    if comm.startswith("tokio") or main:
        return "runtime"
    if comm == "llm-tracer-writ":  # comm is cut at 15 bytes
        return "writer"
    if comm.startswith("sled-io"):
        return "sled-io pool"
    if comm.startswith("sled-flush") or comm == "log flusher":
        return "sled flusher"
    return "other"


def threads(pid):
    """{tid: (group, cpu µs, context switches)} of every live thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue  # the thread ended
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) * TICK_US  # utime + stime
        switches = sum(int(line.split()[1]) for line in status.splitlines()
                       if "ctxt_switches:" in line)
        out[tid] = (group(comm, tid == str(pid)), cpu, switches)
    return out


def by_group(before, after):
    """CPU µs and switches per group over the interval (threads that ended are lost: few)."""
    cpu = {g: 0.0 for g in GROUPS}
    sw = {g: 0 for g in GROUPS}
    for tid, (g, c, s) in after.items():
        c0, s0 = before.get(tid, (g, 0.0, 0))[1:]
        cpu[g] += c - c0
        sw[g] += s - s0
    return cpu, sw


results = {}
for r in range(rounds):
    for i, binary in enumerate(binaries):
        tracer = bench.Tracer(binary, work, f"r{r}b{i}", True, upstream, upstream)
        before = threads(tracer.pid)
        x = bench.run_loadgen(loadgen, bench.rate_args(tracer.proxy, rate_per_s, 32, seconds, body),
                              seconds + 60)
        m = tracer.wait_drained()
        cpu, sw = by_group(before, threads(tracer.pid))
        calls = max(1.0, m.get("llm_tracer_spans_captured_total", 0.0))
        row = {g: (cpu[g] / calls, sw[g] / calls) for g in GROUPS}
        row["all"] = (sum(cpu.values()) / calls, sum(sw.values()) / calls)
        results.setdefault(binary, []).append(row)
        tracer.stop()
        cells = "  ".join(f"{g} {row[g][0]:6.1f} µs {row[g][1]:5.2f} sw" for g in GROUPS + ["all"])
        print(f"r{r + 1} {binary}: {calls:.0f} calls, p50 {x['p50_us'] / 1000:.3f} "
              f"p99 {x['p99_us'] / 1000:.3f} ms\n    {cells}", flush=True)
print("medians per stored call (CPU µs, context switches):")
for binary, rows in results.items():
    cells = "  ".join(
        f"{g} {statistics.median(row[g][0] for row in rows):6.1f} µs "
        f"{statistics.median(row[g][1] for row in rows):5.2f} sw" for g in GROUPS + ["all"])
    print(f"  {binary}\n    {cells}")
