#!/usr/bin/env bash
# fanout-ab.sh: one fan-out run against one server binary, for before/after comparisons.
# The server is pinned to CPU 1 (--shards 1), the load generator to CPU 0; 10,000
# subscribers, one publisher, 64-byte messages, 8 s measured plus a 10 s drain; the server is
# stopped by its PID afterwards. Prints one line: deliveries/s, p50/p99/max latency (µs,
# from the intended send time), gaps.
#
# usage: benches/scripts/fanout-ab.sh SERVER_BIN PORT RATE [broadcast|hub]
#   e.g. benches/scripts/fanout-ab.sh /tmp/before/starling 9301 100/s hub
# Environment: LOADGEN_BIN [target/release/starling-loadgen], OUT [/tmp], LOADGEN_ARGS (extra
# load-generator options), SERVER_ARGS (extra server options, e.g. "--sweep-interval 50ms")
set -euo pipefail
bin=$1 port=$2 rate=$3 app=${4:-broadcast}
mode=raw
[[ $app == hub ]] && mode=hub
loadgen=${LOADGEN_BIN:-target/release/starling-loadgen}
out=${OUT:-/tmp}
taskset -c 1 "$bin" serve --listen "127.0.0.1:$port" --app "$app" --shards 1 --no-api ${SERVER_ARGS:-} \
    >"$out/fanout-ab-$port.server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
sleep 0.5
taskset -c 0 "$loadgen" fanout "ws://127.0.0.1:$port/" --mode "$mode" --connections 10000 \
    --publishers 1 --rate "$rate" --size 64 --duration 8s --drain 10s --no-progress \
    --server-pid "$server" ${LOADGEN_ARGS:-} --json "$out/fanout-ab-$port.json" >"$out/fanout-ab-$port.txt" 2>&1
python3 - "$out/fanout-ab-$port.json" "$bin $app $rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"]
print(sys.argv[2], "deliveries/s=%.0f" % r["deliveries_per_sec"],
      "p50=%s p99=%s max=%s" % (lat["p50"], lat["p99"], lat["max"]),
      "gaps", r["gaps"], "ok", r["ok"])
PY
