"""Two llm-tracer instances sharing one ClickHouse, driven by the official OpenAI SDK: one trace
whose calls go through both instances, and the API of EITHER instance shows the whole trace.

Starts a private clickhouse-server (Debian's package; `.ci/run` installs it) on free loopback
ports with a temp data dir, like tests/common/clickhouse.rs does for the Rust tests."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

import openai
import pytest

from conftest import BIN
from helpers import get_trace

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clickhouse_binary():
    for path in ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        if os.path.exists(path):
            return path
    found = shutil.which("clickhouse-server")
    assert found, ("clickhouse-server is not installed (Debian: apt-get install -y "
                   "clickhouse-server; .ci/run does this)")
    return found


@pytest.fixture(scope="module")
def clickhouse():
    d = tempfile.mkdtemp(prefix="llm-tracer-sdk-ch-")
    for sub in ("data", "tmp", "user_files"):
        os.makedirs(os.path.join(d, sub))
    http = free_port()
    with open(os.path.join(d, "config.xml"), "w") as f:
        f.write(CONFIG.format(d=d, http=http, tcp=free_port()))
    with open(os.path.join(d, "users.xml"), "w") as f:
        f.write(USERS)
    proc = subprocess.Popen([clickhouse_binary(), f"--config-file={d}/config.xml"], cwd=d,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    end = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/?query=SELECT%201", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, "clickhouse-server exited before answering"
        assert time.time() < end, "clickhouse-server did not answer within 120 s"
        time.sleep(0.1)
    yield url
    proc.kill()
    proc.wait()
    shutil.rmtree(d, ignore_errors=True)


def start_instance(clickhouse_url):
    """`llm-tracer demo` (built-in mock upstream) on the shared ClickHouse."""
    data = tempfile.mkdtemp(prefix="llm-tracer-sdk-")
    proc = subprocess.Popen(
        [BIN, "demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
         "--data-dir", data, "--store-backend", "clickhouse",
         "--clickhouse-url", clickhouse_url, "--clickhouse-database", "sdk_shared"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addrs = {}
    while len(addrs) < 2:
        line = proc.stdout.readline()
        assert line, "llm-tracer exited before printing its addresses"
        m = re.match(r"(proxy|admin) listening on (http://\S+)", line)
        if m:
            addrs[m.group(1)] = m.group(2)
    return proc, addrs


def test_one_trace_through_two_instances_is_whole_on_either(clickhouse):
    a_proc, a = start_instance(clickhouse)
    b_proc, b = start_instance(clickhouse)
    try:
        trace_id = f"sdk-shared-{uuid.uuid4().hex[:12]}"

        def client(inst, **headers):
            return openai.OpenAI(base_url=inst["proxy"] + "/v1", api_key="sk-sdk-test-key",
                                 max_retries=0,
                                 default_headers={"x-tracer-trace-id": trace_id,
                                                  "x-tracer-session-id": "sdk-shared",
                                                  **headers})

        raw = client(a).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "plan the steps"}])
        first_span = raw.headers["x-tracer-span-id"]
        assert raw.parse().choices[0].message.content, "the SDK got a normal answer through A"
        stream = client(b, **{"x-tracer-parent-span-id": first_span}).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "do the steps"}], stream=True,
            stream_options={"include_usage": True})
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices), \
            "the SDK consumed the stream through B"

        via_a = get_trace(a["admin"], trace_id, 2, deadline_s=60)
        via_b = get_trace(b["admin"], trace_id, 2, deadline_s=60)
        assert via_a == via_b, "both instances answer the same for the shared trace"
        spans = via_a["spans"]
        assert spans[0]["span_id"] == first_span
        assert spans[1]["parent_span_id"] == first_span, "B's call nests under A's"
        summary = via_a["trace"]
        assert summary["span_count"] == 2 and summary["llm_calls"] == 2
        assert summary["input_tokens"] == sum(s["llm"]["input_tokens"] for s in spans)
        assert summary["output_tokens"] == sum(s["llm"]["output_tokens"] for s in spans)
        assert summary["session_id"] == "sdk-shared"
        for inst in (a, b):
            with urllib.request.urlopen(inst["admin"] + "/healthz") as r:
                health = json.load(r)
            assert health["store"]["backend"] == "clickhouse", health
    finally:
        for proc in (a_proc, b_proc):
            proc.terminate()
            assert proc.wait(timeout=60) == 0, "llm-tracer exits 0 on SIGTERM"
