#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests (real sockets), then the official OpenAI
# Python SDK against the real binary (sets up tests/.venv on first use, PyPI), then the web UI in
# headless Debian chromium driven by playwright-core (tests/ui; `npm ci` there, no browser download).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

venv=tests/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
"$venv/bin/python" -m pytest -q tests/sdk

# Browser tests: the real binary (target/debug/llm-tracer demo) in headless chromium.
chromium_bin="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium_bin" ]; then
  echo "error: the browser tests need chromium at $chromium_bin: apt-get install -y chromium (.ci/run installs it)" >&2
  exit 1
fi
(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/ui && node --test --test-concurrency=1 ui.test.mjs clickhouse.test.mjs)
