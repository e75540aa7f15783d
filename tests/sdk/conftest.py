"""Starts the real llm-tracer binary in demo mode (built-in mock upstream, no network) on port 0."""
import os
import re
import subprocess
import tempfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("TRACER_TEST_BIN", os.path.join(ROOT, "target", "debug", "llm-tracer"))


@pytest.fixture(scope="session")
def tracer():
    assert os.path.exists(BIN), f"build the binary first (cargo build): {BIN}"
    data = tempfile.mkdtemp(prefix="llm-tracer-sdk-")
    proc = subprocess.Popen(
        [BIN, "demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", data,
         # Short, so the idle-timeout tests are quick; far above any gap the mock leaves.
         "--idle-stream-timeout-ms", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    addrs = {}
    while len(addrs) < 2:
        line = proc.stdout.readline()
        assert line, "llm-tracer exited before printing its addresses"
        m = re.match(r"(proxy|admin) listening on (http://\S+)", line)
        if m:
            addrs[m.group(1)] = m.group(2)
    yield addrs
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "llm-tracer exits 0 on SIGTERM"
