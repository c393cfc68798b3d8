#!/usr/bin/env bash
# The load generator's CI test: builds starling and starling-loadgen (debug: this checks
# correctness, not speed), installs the independent servers it is checked against (Python
# `websockets`, Node `ws`) when they are missing, then runs check.py, which runs every
# scenario briefly and asserts on the JSON. Prints "N passed, M failed"; exits non-zero on
# any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --quiet --bin starling -p starling
cargo build --quiet --bin starling-loadgen -p starling-loadgen

if ! python3 -c "import websockets.asyncio.server" 2>/dev/null; then
    python3 -m pip install --quiet websockets \
        || python3 -m pip install --quiet --break-system-packages websockets
fi
if [ ! -d tests/interop/node_modules/ws ]; then
    (cd tests/interop && npm install --silent --no-audit --no-fund)
fi

exec python3 tests/loadgen/check.py "$@"
