#!/usr/bin/env bash
# echo-ab.sh: one echo run of one server binary driven by one load-generator binary, for
# before/after comparisons of either side. The server is pinned to CPU 1 (--shards 1), the
# load generator to CPU 0; 64 connections x 64 in flight x 32 B for DURATION (default 8s).
# Prints one line: messages/s, p99 round trip (µs), the load generator's CPU seconds
# (user/sys) over the run, and the server's.
#
# usage: benches/scripts/echo-ab.sh SERVER_BIN LOADGEN_BIN PORT [DURATION]
#   e.g. benches/scripts/echo-ab.sh /tmp/before/starling target/release/starling-loadgen 9401
# Environment: OUT [/tmp], LOADGEN_ARGS (extra load-generator flags, e.g. "--coalesce off")
set -euo pipefail
bin=$1 loadgen=$2 port=$3 duration=${4:-8s}
out=${OUT:-/tmp}
taskset -c 1 "$bin" serve --listen "127.0.0.1:$port" --app echo --shards 1 --no-api \
    >"$out/echo-ab-$port.server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
sleep 0.5
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
before=$(cpu "$server")
/usr/bin/time -f '%U %S' -o "$out/echo-ab-$port.time" taskset -c 0 "$loadgen" echo \
    "ws://127.0.0.1:$port/" --connections 64 --depth 64 --size 32 --duration "$duration" \
    --no-progress --json "$out/echo-ab-$port.json" ${LOADGEN_ARGS:-} >"$out/echo-ab-$port.txt" 2>&1
after=$(cpu "$server")
python3 - "$out/echo-ab-$port.json" "$out/echo-ab-$port.time" "$before" "$after" "$bin" "$loadgen" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
lu, ls = open(sys.argv[2]).read().split()[-2:]
hz = os.sysconf("SC_CLK_TCK")
b, a = [list(map(int, x.split())) for x in sys.argv[3:5]]
su, ss = (a[0] - b[0]) / hz, (a[1] - b[1]) / hz
print("server=%s loadgen=%s msg/s=%.0f p99=%sus loadgen_cpu=%s+%s server_cpu=%.2f+%.2f" % (
    sys.argv[5], sys.argv[6], r["messages_per_sec"], r["latency_us"]["p99"], lu, ls, su, ss))
PY
