#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests (real sockets), then the official OpenAI
# Python SDK against the real binary. Sets up tests/.venv on first use (PyPI).
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
