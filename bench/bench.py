#!/usr/bin/env python3
"""llm-tracer benchmark orchestrator (issue 7). Standard library only.

    python3 bench/bench.py run [--quick] [...]      # what bench/run.sh calls after building
    python3 bench/bench.py callgrind [...]           # what bench/callgrind.sh calls

`run` measures, in one run and on one machine:
  (a) direct to the mock upstream, (b) through nginx as a plain reverse proxy (keepalive to the
  upstream, no capture: the baseline), (c) through llm-tracer with capture on, (d) with capture off.
Load generator on CPU 1; mocks and proxies on CPU 0 (taskset). Every round records how much CPU
*other* processes used meanwhile (/proc/stat minus ours); a round above --noise-max is re-run, not
averaged in. Medians of the rounds are printed and appended to bench/RESULTS.md.

Every process this script starts is killed on exit (normal, error, Ctrl-C or SIGTERM). Every load
loop is bounded in time. Traffic goes to 127.0.0.1 only.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")
LOADGEN_CPU = "1"
SERVER_CPU = "0"


# --------------------------------------------------------------------------------------------
# processes: everything started is tracked and killed on exit


class Procs:
    def __init__(self):
        self.started = []  # (name, Popen)

    def add(self, name, proc):
        self.started.append((name, proc))
        return proc

    def stop(self, proc, grace=10.0):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def cleanup(self):
        # SIGTERM to all first, then wait for each: shutdowns run in parallel.
        for _name, proc in self.started:
            try:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _name, proc in reversed(self.started):
            try:
                self.stop(proc)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        self.started = []


PROCS = Procs()
atexit.register(PROCS.cleanup)


def _on_signal(signum, _frame):
    sys.stderr.write(f"\nbench: signal {signum}, cleaning up\n")
    sys.exit(128 + signum)


for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def pin(cpu, argv):
    if cpu is None or shutil.which("taskset") is None or os.cpu_count() < 2:
        return argv
    return ["taskset", "-c", cpu] + argv


# --------------------------------------------------------------------------------------------
# /proc readings


def proc_ticks(pid):
    """utime + stime of a live process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def busy_ticks():
    """CPU ticks spent by everything on the machine (all CPUs), idle and iowait excluded."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts]
    user, nice, system, _idle, _iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0
    return user + nice + system + irq + softirq + steal


def children_ticks():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * CLK


def vm_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Window:
    """CPU accounting over one measured window: ours (every process we started, plus children
    reaped meanwhile: the load generator) versus everything else on the machine."""

    def __init__(self, subject_pid):
        self.subject = subject_pid
        self.pids = [p.pid for _n, p in PROCS.started if p.poll() is None]
        self.t0 = time.time()
        self.busy0 = busy_ticks()
        self.kids0 = children_ticks()
        self.ours0 = {pid: proc_ticks(pid) for pid in self.pids}

    def close(self):
        wall = max(time.time() - self.t0, 1e-6)
        busy = busy_ticks() - self.busy0
        kids = children_ticks() - self.kids0
        ours = {pid: proc_ticks(pid) - t for pid, t in self.ours0.items()}
        other = max(busy - sum(ours.values()) - kids, 0)
        return {
            "wall_s": wall,
            # Other processes' CPU as a percentage of one CPU.
            "other_cpu_pct": 100.0 * other / CLK / wall,
            "subject_cpu_s": ours.get(self.subject, 0) / CLK,
            "loadgen_cpu_s": kids / CLK,
        }


# --------------------------------------------------------------------------------------------
# servers


NGINX_COMMON = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    client_body_buffer_size 64k;
{body}
}}
"""


def nginx_string(text):
    """A single-quoted nginx string. `$` would start a variable: the fixtures have none."""
    if "$" in text:
        raise ValueError("fixture text must not contain '$'")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def start_nginx(name, dir_, body):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = os.path.join(dir_, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=dir_, name=name, body=body))
    proc = subprocess.Popen(
        pin(SERVER_CPU, [nginx, "-p", dir_, "-c", conf]),
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(dir_, f"{name}.stderr"), "w"),
    )
    return PROCS.add(name, proc)


def start_mock_nginx(dir_, port, chat_json=None, chat_sse=None):
    """nginx answering the chat JSON and SSE stream (by default the fixtures every bench uses)."""
    if chat_json is None:
        chat_json = compact_json(fixture("tests/fixtures/openai_chat.json"))
    if chat_sse is None:
        chat_sse = fixture("tests/fixtures/openai_chat_stream.sse")
    body = f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {nginx_string(chat_json)};
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            return 200 {nginx_string(chat_sse)};
        }}
    }}"""
    proc = start_nginx("mock-nginx", dir_, body)
    wait_port(port)
    return proc


def start_proxy_nginx(dir_, port, upstream_port):
    body = f"""
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    proc = start_nginx("proxy-nginx", dir_, body)
    wait_port(port)
    return proc


def read_line(proc, pattern, timeout, what):
    """Reads the child's stdout until a line matches `pattern`; returns the match."""
    deadline = time.time() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            continue
        buf += chunk
        m = re.search(pattern, buf.decode(errors="replace"))
        if m:
            return m
    raise RuntimeError(f"{what} did not print {pattern!r} within {timeout}s")


def start_rust_mock(loadgen):
    proc = subprocess.Popen(
        pin(SERVER_CPU, [loadgen, "mock"]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    PROCS.add("rust-mock", proc)
    m = read_line(proc, r"mock listening on (http://\S+)", 20, "the mock upstream")
    return proc, m.group(1)


class Tracer:
    """One llm-tracer process: proxy and admin on port 0, its own store."""

    def __init__(self, binary, dir_, name, capture, upstream, slow_upstream, wrapper=None, cpu=SERVER_CPU, timeout=30):
        self.name = name
        self.capture = capture
        data = os.path.join(dir_, f"{name}-data")
        conf = os.path.join(dir_, f"{name}.toml")
        with open(conf, "w") as f:
            f.write(
                f'listen = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
                f'data_dir = "{data}"\nupstream = "{upstream}"\n'
                f"capture = {'true' if capture else 'false'}\n"
                f'\n[[route]]\nprefix = "/slow"\nupstream = "{slow_upstream}"\nstrip_prefix = true\n'
            )
        argv = (wrapper or []) + [binary, "serve", "--config", conf]
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
        self.stderr_path = os.path.join(dir_, f"{name}.stderr")
        self.proc = subprocess.Popen(
            pin(cpu, argv), stdout=subprocess.PIPE, stderr=open(self.stderr_path, "w"), env=env
        )
        PROCS.add(name, self.proc)
        m = read_line(
            self.proc,
            r"proxy listening on http://(\S+)\s+admin listening on http://(\S+)",
            timeout,
            f"llm-tracer ({name})",
        )
        self.proxy = "http://" + m.group(1)
        self.admin = "http://" + m.group(2)
        self.pid = self.proc.pid

    def metrics(self):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=30) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
        return out

    def dropped(self, m=None):
        m = m or self.metrics()
        return sum(v for k, v in m.items() if k.startswith("llm_tracer_captures_dropped_total"))

    def wait_drained(self, timeout=900.0, first_sleep=0.0, poll=0.1):
        """Until every proxied call is recorded: in flight 0, queue and disk spool empty, and
        every request either stored or counted as dropped. Calls that waited in the spool are
        stored after the load stops; the catch-up is part of the round's CPU window."""
        time.sleep(first_sleep)
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            if self.is_drained(m) or time.time() > deadline:
                return m
            time.sleep(poll)

    def is_drained(self, m):
        """Whether metrics `m` show every proxied call recorded (see `wait_drained`)."""
        return m.get("llm_tracer_in_flight_requests", 0) == 0 and (
            not self.capture
            or m.get("llm_tracer_queue_length", 0) == 0
            and m.get("llm_tracer_spool_bytes", 0) == 0
            and m.get("llm_tracer_spans_captured_total", 0) + self.dropped(m)
            >= m.get("llm_tracer_requests_total", 0)
        )

    def stats_calls(self):
        with urllib.request.urlopen(self.admin + "/api/stats", timeout=120) as r:
            return json.loads(r.read()).get("calls")

    def stop(self):
        PROCS.stop(self.proc, grace=60)


# --------------------------------------------------------------------------------------------
# load generators


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%.1f,\\"p90_us\\":%.1f,\\"p99_us\\":%.1f,\\"max_us\\":%.1f,\\"errors\\":%d,\\"non_2xx\\":%d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_wrk(url, lua, connections, duration, threads=1, cpu="loadgen"):
    """wrk against `url`, pinned to `cpu`: LOADGEN_CPU by default, None = wherever the kernel
    puts it."""
    argv = pin(
        LOADGEN_CPU if cpu == "loadgen" else cpu,
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", lua, url],
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not m:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def run_loadgen(loadgen, args, timeout):
    out = subprocess.run(
        pin(LOADGEN_CPU, [loadgen] + args), capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(args)} failed: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# the suite


def rate_args(base, rate, connections, seconds, body_file):
    """The loadgen arguments of a fixed-rate run: `rate` chat completions a second (open loop)
    over `connections` to `base`, for `seconds` after a 1 s warm-up, each with `body_file`."""
    return [
        "rate", "--url", base + "/v1/chat/completions", "--rate", str(rate),
        "--connections", str(connections), "--duration", str(seconds), "--warmup", "1",
        "--body", body_file,
    ]


def ab_rate_setup(doc, prefix):
    """What the fixed-rate comparison tools (rate_ab.py, thread_cpu.py) share: `ROUNDS SECONDS
    BINARY...` from argv (else `doc` and exit), a work dir removed at exit, an nginx mock.
    Returns (rounds, seconds, binaries, work, upstream URL, request body file, loadgen path)."""
    if len(sys.argv) < 4:
        raise SystemExit(doc)
    rounds, seconds, binaries = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    work = tempfile.mkdtemp(prefix=prefix)
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    port = free_port()
    start_mock_nginx(work, port)
    body = os.path.join(ROOT, "bench/fixtures/chat_request.json")
    loadgen = os.path.join(ROOT, "target/release/examples/loadgen")
    return rounds, seconds, binaries, work, f"http://127.0.0.1:{port}", body, loadgen


def mem_streams_args(proxy, streams, words, gap_ms):
    """The loadgen arguments of the memory phase: `streams` concurrent streams through the
    proxy's `/slow` route, `words` + 6 chunks each, `gap_ms` apart."""
    return [
        "streams", "--url", proxy + "/slow/v1/chat/completions", "--streams", str(streams),
        "--concurrency", str(streams), "--words", str(words), "--gap-ms", str(gap_ms),
        "--timeout", "240",
    ]


def fixture(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def compact_json(text):
    return json.dumps(json.loads(text), separators=(",", ":"))


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = vm_kib("self", "VmRSS")  # touch /proc to fail early if absent
    del mem
    return f"{platform.node()}: {os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Suite:
    def __init__(self, args):
        self.args = args
        self.started = time.time()
        # Re-runs of noisy rounds stop once this much of the time budget is spent, so the whole
        # run stays within --max-minutes even on a busy machine.
        self.retry_until = self.started + 60 * args.max_minutes * 0.75

    def measured(self, label, subject_pid, run, after=None):
        """Runs `run` until a round is quiet (other processes' CPU ≤ --noise-max), at most
        --max-tries times; a noisy round is re-run, not averaged in. `after` (e.g. waiting for
        the capture queue to drain) is part of the CPU window."""
        best = None
        for attempt in range(1, self.args.max_tries + 1):
            win = Window(subject_pid)
            result = run()
            extra = after() if after else None
            acct = win.close()
            result.update(acct)
            if extra:
                result.update(extra)
            result["attempt"] = attempt
            noisy = acct["other_cpu_pct"] > self.args.noise_max
            result["noisy"] = noisy
            log(
                f"  {label:<28} attempt {attempt}: other CPU {acct['other_cpu_pct']:5.1f}% "
                + ("(noisy, re-run)" if noisy and attempt < self.args.max_tries else "")
                + short(result)
            )
            if best is None or acct["other_cpu_pct"] < best["other_cpu_pct"]:
                best = result
            if not noisy or time.time() > self.retry_until:
                break
        return best


def short(r):
    bits = []
    if "rps" in r:
        bits.append(f"{r['rps']:9.0f} req/s")
    if "p50_us" in r:
        bits.append(f"p50 {r['p50_us'] / 1e3:.3f} ms p99 {r['p99_us'] / 1e3:.3f} ms")
    if "ttfb_p50_ms" in r:
        bits.append(f"ttfb p50 {r['ttfb_p50_ms']:.2f} ms")
    if "captured" in r:
        bits.append(
            f"stored {r['captured']:.0f} (spooled {r.get('spooled', 0):.0f}, caught up in "
            f"{r.get('catch_up_s', 0):.1f} s), dropped {r['dropped']:.0f}"
        )
    return "  " + ", ".join(bits)


def fmt(v, spec=".2f", unit=""):
    if v is None:
        return "n/a"
    return format(v, spec) + unit


def run_suite(args):
    quick = args.quick
    duration = args.duration or (2 if quick else 10)
    rounds = args.rounds or (1 if quick else 3)
    conns = 32
    binary = args.bin or os.path.join(ROOT, "target/release/llm-tracer")
    loadgen = args.loadgen or os.path.join(ROOT, "target/release/examples/loadgen")
    for exe in (binary, loadgen):
        if not os.path.exists(exe):
            raise SystemExit(f"missing {exe}: run bench/run.sh (it builds release first)")
    if shutil.which("wrk") is None or (shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx")):
        raise SystemExit("nginx and wrk are needed: bench/run.sh installs them")

    work = tempfile.mkdtemp(prefix="llm-tracer-bench-")
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    started = time.time()
    suite = Suite(args)

    chat_json = compact_json(fixture("tests/fixtures/openai_chat.json"))
    chat_sse = fixture("tests/fixtures/openai_chat_stream.sse")
    request = fixture("bench/fixtures/chat_request.json").strip()
    stream_request = compact_json(request)[:-1] + ',"stream":true}'
    lua_json = os.path.join(work, "chat.lua")
    lua_sse = os.path.join(work, "chat_stream.lua")
    with open(lua_json, "w") as f:
        f.write(WRK_LUA.format(body=request))
    with open(lua_sse, "w") as f:
        f.write(WRK_LUA.format(body=stream_request))
    body_file = os.path.join(work, "chat_request.json")
    with open(body_file, "w") as f:
        f.write(request)

    log(f"bench: work dir {work}; {rounds} round(s) of {duration}s, {conns} connections")
    mock_port, nginx_port = free_port(), free_port()
    mock = start_mock_nginx(work, mock_port, chat_json, chat_sse)
    nginx = start_proxy_nginx(work, nginx_port, mock_port)
    rust_mock, rust_mock_url = start_rust_mock(loadgen)
    upstream = f"http://127.0.0.1:{mock_port}"
    on = Tracer(binary, work, "tracer-on", True, upstream, rust_mock_url)
    off = Tracer(binary, work, "tracer-off", False, upstream, rust_mock_url)

    # Capture off runs right after nginx: the capture-on round ends with a catch-up of minutes,
    # and a baseline taken before it drifted with the machine (session 6: off/nginx per round
    # 0.81-0.98 with the on round in between).
    targets = {
        "a": ("direct", f"http://127.0.0.1:{mock_port}", mock.pid, None),
        "b": ("nginx proxy", f"http://127.0.0.1:{nginx_port}", nginx.pid, None),
        "d": ("llm-tracer capture off", off.proxy, off.pid, off),
        "c": ("llm-tracer capture on", on.proxy, on.pid, on),
    }
    results = {}  # (workload, cfg) -> [rows]

    last = {"dropped": 0.0, "captured": 0.0, "spooled": 0.0}

    def drain(tracer):
        """Waits until the capture-on proxy has recorded every call of the round; returns the
        round's dropped and stored captures."""
        if tracer is None or tracer is not on:
            return None
        t0 = time.time()
        m = tracer.wait_drained()
        dropped, captured = tracer.dropped(m), m.get("llm_tracer_spans_captured_total", 0)
        spooled = m.get("llm_tracer_spooled_calls_total", 0)
        out = {
            "dropped": dropped - last["dropped"],
            "captured": captured - last["captured"],
            "spooled": spooled - last["spooled"],
            "catch_up_s": time.time() - t0,
        }
        last.update(dropped=dropped, captured=captured, spooled=spooled)
        return out

    def warm_drain():
        drain(on)

    # --- throughput (closed loop, wrk) and fixed-rate latency (loadgen) ---
    workloads = [
        ("json", "/v1/chat/completions", lua_json),
        ("sse", "/stream/v1/chat/completions", lua_sse),
    ]
    phases = set(args.only.split(",")) if args.only else {"throughput", "rate", "streams", "memory"}
    for wl, path, lua in workloads if "throughput" in phases else []:
        log(f"bench: throughput, {wl}, wrk -t1 -c{conns} -d{duration}s")
        for cfg, (_label, base, _pid, tracer) in targets.items():
            run_wrk(base + path, lua, conns, 1)  # warm-up: connections, pools, caches
            if tracer is on:
                warm_drain()
        for rnd in range(rounds):
            for cfg, (label, base, pid, tracer) in targets.items():
                r = suite.measured(
                    f"{wl} {cfg} {label} r{rnd + 1}",
                    pid,
                    lambda base=base, lua=lua: run_wrk(base + path, lua, conns, duration),
                    after=(lambda t=tracer: drain(t)),
                )
                r["cpu_us_per_req"] = 1e6 * r["subject_cpu_s"] / max(r["requests"], 1)
                results.setdefault((wl, cfg), []).append(r)

    rate = args.rate
    log(f"bench: fixed rate {rate:.0f} req/s, {conns} connections, {duration}s (loadgen, open loop)")
    for rnd in range(rounds if "rate" in phases else 0):
        for cfg, (label, base, pid, tracer) in targets.items():
            lg = rate_args(base, rate, conns, duration, body_file)
            r = suite.measured(
                f"rate {cfg} {label} r{rnd + 1}",
                pid,
                lambda lg=lg: run_loadgen(loadgen, lg, duration + 60),
                after=(lambda t=tracer: drain(t)),
            )
            results.setdefault(("rate", cfg), []).append(r)

    # --- streams: TTFT and no coalescing (the Rust mock spaces chunks apart) ---
    gap = args.gap_ms
    words = 20
    stream_targets = {
        "a": ("direct", rust_mock_url + "/v1/chat/completions", None),
        "c": ("llm-tracer capture on", on.proxy + "/slow/v1/chat/completions", on),
        "d": ("llm-tracer capture off", off.proxy + "/slow/v1/chat/completions", off),
    }
    n_streams = 16 if quick else 48
    log(f"bench: streams, {n_streams} streams x {words + 6} chunks {gap} ms apart, 8 at a time")
    for rnd in range(rounds if "streams" in phases else 0):
        for cfg, (label, url, tracer) in stream_targets.items():
            lg = [
                "streams", "--url", url, "--streams", str(n_streams), "--concurrency", "8",
                "--words", str(words), "--gap-ms", str(gap), "--timeout", "120",
            ]
            pid = tracer.pid if tracer else rust_mock.pid
            r = suite.measured(
                f"stream {cfg} {label} r{rnd + 1}",
                pid,
                lambda lg=lg: run_loadgen(loadgen, lg, 180),
                after=(lambda t=tracer: drain(t)),
            )
            results.setdefault(("stream", cfg), []).append(r)

    # --- the capture check on the throughput proxy ---
    m = on.wait_drained()
    requests_total = m.get("llm_tracer_requests_total", 0)
    captured = m.get("llm_tracer_spans_captured_total", 0)
    dropped = on.dropped(m)
    stored_calls = on.stats_calls()
    on_rss_peak = vm_kib(on.pid, "VmHWM")
    off_rss_peak = vm_kib(off.pid, "VmHWM")
    nginx_rss_peak = vm_kib(nginx.pid, "VmHWM")
    overhead = overhead_quantiles(m)

    # --- memory: 256 concurrent streams of 1,000 chunks, on a fresh capture-on proxy ---
    on.stop()
    off.stop()
    mem = Tracer(binary, work, "tracer-mem", True, upstream, rust_mock_url)
    # The mock answers "Mock reply to: <words>" one word per chunk, plus role, finish and
    # [DONE]: words + 6 chunks, so 994 words make 1,000 chunks.
    n_mem, mem_words = args.mem_streams, 994
    log(f"bench: memory, {n_mem} concurrent streams x {mem_words + 6} chunks ({args.mem_gap_ms} ms apart), twice")
    rss_before = vm_kib(mem.pid, "VmRSS")
    mem_runs = []
    for i in range(2 if "memory" in phases else 0):
        r = run_loadgen(loadgen, mem_streams_args(mem.proxy, n_mem, mem_words, args.mem_gap_ms), 300)
        mm = mem.wait_drained(timeout=120)
        time.sleep(2)
        r["rss_after_kib"] = vm_kib(mem.pid, "VmRSS")
        r["hwm_kib"] = vm_kib(mem.pid, "VmHWM")
        r["dropped"] = mem.dropped(mm)
        r["refused_frames"] = mm.get("llm_tracer_capture_budget_refused_frames_total", 0)
        r["spooled"] = mm.get("llm_tracer_spooled_calls_total", 0)
        r["truncated_note"] = "see capture.truncated on these spans when over the capture budget"
        mem_runs.append(r)
        log(
            f"  memory run {i + 1}: {r['streams']} streams, {r['frames']} frames, "
            f"{r['multi_event_frames']} multi-event, peak RSS {r['hwm_kib'] / 1024:.1f} MiB, "
            f"RSS after {r['rss_after_kib'] / 1024:.1f} MiB, frames not captured (budget) "
            f"{r['refused_frames']:.0f} (cumulative), spooled calls {r['spooled']:.0f}"
        )
    mem_stored = mem.stats_calls()
    mem.stop()

    elapsed = time.time() - started
    report = summarize(args, results, duration, rounds, conns, {
        "requests_total": requests_total,
        "captured": captured,
        "dropped": dropped,
        "stored_calls": stored_calls,
        "on_rss_peak": on_rss_peak,
        "off_rss_peak": off_rss_peak,
        "nginx_rss_peak": nginx_rss_peak,
        "overhead": overhead,
        "mem_before": rss_before,
        "mem_runs": mem_runs,
        "mem_stored": mem_stored,
        "n_mem": n_mem,
        "elapsed": elapsed,
    })
    print(report)
    if not args.no_write:
        write_results(args, report)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, f, indent=1)


def overhead_quantiles(m):
    """p50/p99 (bucket upper bounds) of llm_tracer_proxy_overhead_seconds, if exposed."""
    buckets = []
    for k, v in m.items():
        mm = re.match(r'llm_tracer_proxy_overhead_seconds_bucket\{le="([^"]+)"\}', k)
        if mm:
            le = float("inf") if mm.group(1) == "+Inf" else float(mm.group(1))
            buckets.append((le, v))
    if not buckets:
        return None
    buckets.sort()
    total = buckets[-1][1]
    if total == 0:
        return None

    def q(p):
        for le, c in buckets:
            if c >= p * total:
                return le
        return None

    return {"count": total, "p50_le_s": q(0.5), "p99_le_s": q(0.99)}


def summarize(args, results, duration, rounds, conns, x):
    def med(wl, cfg, key):
        return median([r.get(key) for r in results.get((wl, cfg), [])])

    def noise(wl, cfg):
        rs = results.get((wl, cfg), [])
        if not rs:
            return "n/a"
        worst = max(r["other_cpu_pct"] for r in rs)
        flag = "!" if any(r["noisy"] for r in rs) else ""
        return f"{worst:.0f}%{flag}"

    def captures(wl, cfg):
        rs = results.get((wl, cfg), [])
        if cfg != "c" or not rs:
            return "–"
        stored = sum(r.get("captured", 0) for r in rs)
        dropped = sum(r.get("dropped", 0) for r in rs)
        spooled = sum(r.get("spooled", 0) for r in rs)
        catch_up = median([r.get("catch_up_s") for r in rs])
        return f"{stored:.0f} / {dropped:.0f} (spooled {spooled:.0f}, catch-up median {fmt(catch_up, '.1f', ' s')})"

    lines = []
    cmd = "bench/run.sh " + " ".join(args.argv)
    lines.append(f"### {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
                 f" — `{cmd.strip()}`")
    lines.append("")
    lines.append(f"- machine: {machine()}")
    lines.append(f"- commit: {git_head()}; {rounds} round(s) × {duration} s, {conns} connections, "
                 f"medians; load generator on CPU {LOADGEN_CPU}, mocks and proxies on CPU {SERVER_CPU}")
    lines.append("- 'other CPU' = the busiest round's CPU used by processes not started by the bench, "
                 "in % of one CPU (a round above "
                 f"{args.noise_max:.0f}% is re-run up to {args.max_tries}×; `!` = still noisy, kept the quietest)")
    lines.append("")
    names = {"a": "(a) direct", "b": "(b) nginx proxy", "c": "(c) llm-tracer capture on",
             "d": "(d) llm-tracer capture off"}
    ran = {k[0] for k in results}
    for wl, title in (("json", "chat completion JSON"), ("sse", "SSE stream (static, from nginx)")):
        if wl not in ran:
            continue
        lines.append(f"**Throughput, {title}, wrk -c{conns}**")
        lines.append("")
        lines.append("| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | captures stored / dropped | other CPU |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for cfg in "abcd":
            cpu = med(wl, cfg, "cpu_us_per_req")
            lines.append(
                f"| {names[cfg]} | {fmt(med(wl, cfg, 'rps'), '.0f')} | "
                f"{fmt(ms(med(wl, cfg, 'p50_us')), '.3f')} | {fmt(ms(med(wl, cfg, 'p99_us')), '.3f')} | "
                f"{fmt(cpu, '.1f') if cfg != 'a' else fmt(cpu, '.1f') + ' (mock)'} | "
                f"{captures(wl, cfg)} | {noise(wl, cfg)} |"
            )
        b = med(wl, "b", "rps")
        c = med(wl, "c", "rps")
        d = med(wl, "d", "rps")
        lines.append("")
        lines.append(f"ratios: c/b = **{fmt(ratio(c, b), '.2f')}** (target ≥ 0.6), "
                     f"d/b = **{fmt(ratio(d, b), '.2f')}** (target ≥ 0.9)")
        lines.append("")
    if "rate" in ran:
        rate_section(lines, args, conns, names, med, noise, captures)
    if "stream" in ran:
        stream_section(lines, args, results, names, med, noise)
    capture_section(lines, x)
    lines.append(f"(run took {x['elapsed']:.0f} s)")
    lines.append("")
    return "\n".join(lines)


def rate_section(lines, args, conns, names, med, noise, captures):
    lines.append(f"**Fixed rate {args.rate:.0f} req/s, {conns} connections, open loop (loadgen)**")
    lines.append("")
    lines.append("| target | achieved req/s | p50 ms | p99 ms | p99.9 ms | late sends | captures stored / dropped | other CPU |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cfg in "abcd":
        lines.append(
            f"| {names[cfg]} | {fmt(med('rate', cfg, 'rps'), '.0f')} | "
            f"{fmt(ms(med('rate', cfg, 'p50_us')), '.3f')} | {fmt(ms(med('rate', cfg, 'p99_us')), '.3f')} | "
            f"{fmt(ms(med('rate', cfg, 'p999_us')), '.3f')} | {fmt(med('rate', cfg, 'late'), '.0f')} | "
            f"{captures('rate', cfg)} | {noise('rate', cfg)} |"
        )
    a50, a99 = med("rate", "a", "p50_us"), med("rate", "a", "p99_us")
    c50, c99 = med("rate", "c", "p50_us"), med("rate", "c", "p99_us")
    b50, b99 = med("rate", "b", "p50_us"), med("rate", "b", "p99_us")
    lines.append("")
    lines.append(
        f"added latency c−a: p50 **+{fmt(ms(diff(c50, a50)), '.3f')} ms** (target ≤ 0.15), "
        f"p99 **+{fmt(ms(diff(c99, a99)), '.3f')} ms** (target ≤ 0.5); "
        f"nginx b−a: p50 +{fmt(ms(diff(b50, a50)), '.3f')} ms, p99 +{fmt(ms(diff(b99, a99)), '.3f')} ms"
    )
    lines.append("")


def stream_section(lines, args, results, names, med, noise):
    lines.append(f"**Streams through the delayed mock ({args.gap_ms} ms between chunks)**")
    lines.append("")
    lines.append("| target | TTFB p50 ms | TTFB p99 ms | frames | SSE events | multi-event frames | gap p50 ms | gap p1 ms | other CPU |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for cfg in "acd":
        lines.append(
            f"| {names[cfg]} | {fmt(med('stream', cfg, 'ttfb_p50_ms'), '.3f')} | "
            f"{fmt(med('stream', cfg, 'ttfb_p99_ms'), '.3f')} | {fmt(med('stream', cfg, 'frames'), '.0f')} | "
            f"{fmt(med('stream', cfg, 'events'), '.0f')} | {fmt(med('stream', cfg, 'multi_event_frames'), '.0f')} | "
            f"{fmt(med('stream', cfg, 'gap_p50_ms'), '.2f')} | {fmt(med('stream', cfg, 'gap_p01_ms'), '.2f')} | "
            f"{noise('stream', cfg)} |"
        )
    ta = med("stream", "a", "ttfb_p50_ms")
    tc = med("stream", "c", "ttfb_p50_ms")
    coalesced = sum(r.get("multi_event_frames", 0) for k, rs in results.items() if k[0] == "stream" for r in rs)
    # Every chunk the mock sent arrived as its own SSE event (a frame may carry part of one when a
    # read splits it, never two), and none is missing.
    frames_ok = all(
        r.get("events") == r.get("streams", 0) * r.get("expected_frames_per_stream", 0)
        and r.get("failed", 0) == 0
        for k, rs in results.items() if k[0] == "stream" for r in rs
    )
    lines.append("")
    lines.append(
        f"TTFT added c−a: p50 **+{fmt(diff(tc, ta), '.3f')} ms** (target ≤ 0.5); "
        f"no coalescing: **{'yes' if coalesced == 0 and frames_ok else 'NO'}** "
        f"(frames carrying two or more events: {coalesced}; every chunk arrived: {frames_ok})"
    )
    lines.append("")


def capture_section(lines, x):
    lines.append("**Capture (proxy c, the whole run)**")
    lines.append("")
    complete = x["stored_calls"] == x["requests_total"] and x["dropped"] == 0
    lines.append(
        f"requests {x['requests_total']:.0f}, spans captured {x['captured']:.0f}, "
        f"captures dropped **{x['dropped']:.0f}** (target 0), calls in the store (/api/stats) "
        f"{x['stored_calls']}: every request's span stored: **{'yes' if complete else 'NO'}**"
    )
    if x["overhead"]:
        o = x["overhead"]
        lines.append("")
        lines.append(
            f"`llm_tracer_proxy_overhead_seconds` (the handler's own share) over {o['count']:.0f} calls: "
            f"p50 ≤ {o['p50_le_s'] * 1e6:g} µs, p99 ≤ {o['p99_le_s'] * 1e6:g} µs (bucket bounds)"
        )
    lines.append("")
    lines.append(
        f"peak RSS (VmHWM) after the throughput runs: capture on {x['on_rss_peak'] / 1024:.1f} MiB, "
        f"capture off {x['off_rss_peak'] / 1024:.1f} MiB, nginx proxy {x['nginx_rss_peak'] / 1024:.1f} MiB"
    )
    lines.append("")
    runs = x["mem_runs"]
    if runs:
        r1, r2 = runs[0], runs[-1]
        flat = r2["rss_after_kib"] <= r1["rss_after_kib"] * 1.10 + 4096
        lines.append(
            f"**Memory: {x['n_mem']} concurrent streams × 1,000 chunks**, fresh capture-on proxy, run twice: "
            f"RSS before {x['mem_before'] / 1024:.1f} MiB, peak **{max(r['hwm_kib'] for r in runs) / 1024:.1f} MiB** "
            f"(target ≤ 100), after run 1 {r1['rss_after_kib'] / 1024:.1f} MiB, after run 2 "
            f"{r2['rss_after_kib'] / 1024:.1f} MiB: flat **{'yes' if flat else 'NO'}**; "
            f"SSE events {r1['events']}/{r1['streams'] * r1['expected_frames_per_stream']}, "
            f"failed {r1['failed'] + r2['failed']}, dropped {r2['dropped']:.0f}, stored calls {x['mem_stored']}"
        )
    lines.append("")


def ms(us):
    return None if us is None else us / 1e3


def ratio(a, b):
    return None if a is None or not b else a / b


def diff(a, b):
    return None if a is None or b is None else a - b


def git_head():
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_results(args, report):
    path = os.path.join(ROOT, "bench/RESULTS.md")
    marker = "<!-- bench/run.sh appends below -->"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        text = "# Benchmark results\n\n" + marker + "\n"
    if marker not in text:
        text += "\n" + marker + "\n"
    tag = "(quick smoke run: not a measurement)\n\n" if args.quick else ""
    text = text.replace(marker, marker + "\n\n" + report.replace("\n\n", "\n\n" + tag, 1) if tag else marker + "\n\n" + report, 1)
    with open(path, "w") as f:
        f.write(text)
    log(f"bench: appended to {path}")


# --------------------------------------------------------------------------------------------
# callgrind: instructions per request, stable on a noisy machine


def callgrind(args):
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    binary = args.bin or os.path.join(ROOT, "target/release/llm-tracer")
    loadgen = args.loadgen or os.path.join(ROOT, "target/release/examples/loadgen")
    work = tempfile.mkdtemp(prefix="llm-tracer-callgrind-")
    atexit.register(lambda: shutil.rmtree(work, ignore_errors=True))
    body_file = os.path.join(ROOT, "bench/fixtures/chat_request.json")
    stream_body = os.path.join(work, "stream.json")
    with open(stream_body, "w") as f:
        f.write(compact_json(fixture("bench/fixtures/chat_request.json"))[:-1] + ',"stream":true}')
    mock_port = free_port()
    start_mock_nginx(work, mock_port)
    upstream = f"http://127.0.0.1:{mock_port}"
    out = {}
    for capture in args.capture:
        for workload, path, body in (("json", "/v1/chat/completions", body_file),
                                     ("sse", "/stream/v1/chat/completions", stream_body)):
            key = f"{workload}, capture {'on' if capture == 'on' else 'off'}"
            cg_out = os.path.join(work, f"cg-{workload}-{capture}.out")
            tracer = Tracer(
                binary, work, f"cg-{workload}-{capture}", capture == "on", upstream, upstream,
                wrapper=["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}",
                         "--dump-instr=no", "--separate-threads=no"],
                cpu=None, timeout=300,
            )
            lg = ["closed", "--url", tracer.proxy + path, "--connections", str(args.connections),
                  "--duration", "1200", "--body", body]
            run_loadgen(loadgen, lg + ["--requests", str(args.warmup)], 1300)
            tracer.wait_drained(timeout=300, first_sleep=1.0, poll=1.0)
            subprocess.run(["callgrind_control", "-z", str(tracer.pid)], capture_output=True, timeout=120)
            run_loadgen(loadgen, lg + ["--requests", str(args.requests)], 1300)
            tracer.wait_drained(timeout=300, first_sleep=1.0, poll=1.0)
            subprocess.run(["callgrind_control", "-d", str(tracer.pid)], capture_output=True, timeout=120)
            dumps = sorted(f for f in os.listdir(work) if f.startswith(os.path.basename(cg_out) + "."))
            if not dumps:
                raise RuntimeError("callgrind wrote no dump")
            dump = os.path.join(work, dumps[-1])
            tracer.stop()
            out[key] = annotate(dump, args.requests)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(dump, os.path.join(args.keep, f"callgrind-{workload}-{capture}.out"))
            log(f"callgrind {key}: {out[key]['total_per_req']:.0f} instructions/request")
    print(json.dumps(out, indent=1))


# Inclusive instructions by function name. With the release profile's LTO (Cargo.toml) a function
# inlined into its caller has no entry of its own and reads 0 here (the tap's `poll_frame` and the
# queue's `offer`, for instance): compare `total_per_req` across builds, not these.
SYMBOLS = {
    "proxy_handle": r"llm_tracer::forward::Proxy::handle",
    "tap_poll_frame": r"<llm_tracer::tap::TapBody<B> as http_body::Body>::poll_frame",
    "span_assemble": r"llm_tracer::span::assemble::assemble",
    "store_put_spans": r"llm_tracer::store::Store>::put_spans",
    # The tokio worker threads: accept, route, forward, tap, record, hyper and the upstream client.
    "request_path": r"tokio::runtime::scheduler::multi_thread::worker::run [",
    "queue_offer": r"llm_tracer::queue::SpanQueue::offer",
}


def annotate(dump, requests):
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
        capture_output=True, text=True, timeout=300,
    ).stdout
    total = 0
    m = re.search(r"^\s*([\d,]+).*PROGRAM TOTALS", text, re.M)
    if m:
        total = int(m.group(1).replace(",", ""))
    res = {"total_per_req": total / requests}
    for name, pat in SYMBOLS.items():
        best = 0
        for line in text.splitlines():
            mm = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(?:\S+:)?(.*)$", line)
            if not mm:
                continue
            fn = mm.group(2)
            if pat in fn:
                best = max(best, int(mm.group(1).replace(",", "")))
        res[name + "_per_req"] = best / requests
    calls = malloc_calls(dump)
    res["malloc_calls_per_req"] = None if calls is None else calls / requests
    return res


def malloc_calls(dump):
    """Calls into glibc's `malloc`: the sum of the `(Nx)` call counts of its callers. glibc's only:
    not `realloc`/`calloc`, nor mimalloc (store writes allocate from it, src/malloc.rs). `None`
    when the call graph has no such function."""
    run = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--tree=caller", dump],
        capture_output=True, text=True, timeout=300,
    )
    if run.returncode != 0:
        log(f"callgrind_annotate --tree=caller failed ({run.returncode}): no malloc count")
        return None
    lines = run.stdout.splitlines()
    target = re.compile(
        r"^\s*[\d,]+ \([^)]*\)\s+\*\s+\S*:(?:malloc|__libc_malloc) \[[^\]]*libc\.so[^\]]*\]\s*$")
    caller = re.compile(r"^\s*[\d,]+ \([^)]*\)\s+<\s")
    count = re.compile(r"\(([\d,]+)x\)")
    found, calls = 0, 0
    for i, line in enumerate(lines):
        if not target.match(line):
            continue
        found += 1
        j = i - 1
        while j >= 0 and caller.match(lines[j]):
            m = count.search(lines[j])
            if m:
                calls += int(m.group(1).replace(",", ""))
            j -= 1
    if found == 0:
        log("no glibc malloc in the call graph: no malloc count")
        return None
    if found > 1:
        log(f"glibc malloc appears {found} times in the call graph: its calls are summed")
    return calls


# --------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the full comparison")
    r.add_argument("--quick", action="store_true", help="a < 3 min smoke run: 1 round of 2 s")
    r.add_argument("--duration", type=float, help="seconds per round (default 10, quick 2)")
    r.add_argument("--rounds", type=int, help="rounds per target (default 3, quick 1)")
    r.add_argument("--rate", type=float, default=5000.0, help="fixed-rate test, req/s")
    r.add_argument("--gap-ms", type=int, default=20, help="chunk spacing of the delayed stream mock")
    r.add_argument("--mem-streams", type=int, default=256)
    r.add_argument("--mem-gap-ms", type=int, default=1)
    r.add_argument("--noise-max", type=float, default=10.0,
                   help="a round where other processes used more than this %% of one CPU is re-run")
    r.add_argument("--max-tries", type=int, default=3)
    r.add_argument("--max-minutes", type=float, default=14.0,
                   help="time budget: noisy rounds are no longer re-run after 3/4 of it")
    r.add_argument("--no-write", action="store_true", help="don't append to bench/RESULTS.md")
    r.add_argument("--json-out", help="also write every kept round as JSON here")
    r.add_argument("--only", help="comma-separated phases: throughput,rate,streams,memory (default all)")
    r.add_argument("--bin", help="the llm-tracer binary to measure (default target/release/llm-tracer)")
    r.add_argument("--loadgen", help="the load generator (default target/release/examples/loadgen)")
    c = sub.add_parser("callgrind", help="instructions per request under valgrind --tool=callgrind")
    c.add_argument("--requests", type=int, default=2000)
    c.add_argument("--warmup", type=int, default=300)
    c.add_argument("--connections", type=int, default=4)
    c.add_argument("--capture", nargs="+", default=["on", "off"], choices=["on", "off"])
    c.add_argument("--bin")
    c.add_argument("--loadgen")
    c.add_argument("--keep", help="copy the callgrind dumps into this directory")
    argv = sys.argv[1:]
    args = p.parse_args(argv)
    args.argv = [a for a in argv if a != "run"]
    if args.cmd == "run":
        run_suite(args)
    else:
        callgrind(args)


if __name__ == "__main__":
    main()
