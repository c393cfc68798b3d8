#!/usr/bin/env bash
# bus-fanout.sh: what the Redis bus costs. One hub fan-out run (loadgen fanout --mode hub)
# against either one node on the in-process bus, or NODES nodes joined by a redis-server
# started here (no persistence), with the subscribers and publishers spread over the nodes'
# ports, so most deliveries cross nodes. Every process started here is stopped by its PID.
# Prints one line: nodes, publish rate, deliveries/s, p50/p99/max latency (µs), gaps, dups.
#
# usage: benches/scripts/bus-fanout.sh local|redis NODES RATE [SUBSCRIBERS] [CHANNELS]
#   e.g. benches/scripts/bus-fanout.sh redis 2 2000/s 2000 4
# Environment: STARLING_BIN [target/release/starling], LOADGEN_BIN
# [target/release/starling-loadgen], PORT [9600], OUT [/tmp], DURATION [8s]
set -euo pipefail
bus=$1 nodes=$2 rate=$3 subs=${4:-2000} channels=${5:-4}
bin=${STARLING_BIN:-target/release/starling}
loadgen=${LOADGEN_BIN:-target/release/starling-loadgen}
port=${PORT:-9600} out=${OUT:-/tmp} duration=${DURATION:-8s}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
flags=()
if [[ $bus == redis ]]; then
    rport=$((port + 99))
    rdir=$(mktemp -d)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$rdir" \
        >"$out/bus-fanout-redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    flags=(--bus "redis://127.0.0.1:$rport")
else
    nodes=1
fi
for i in $(seq 0 $((nodes - 1))); do
    "$bin" serve --app hub --shards 1 --listen "127.0.0.1:$((port + i))" \
        --api-listen "127.0.0.1:$((port + 50 + i))" --node-id "n$i" "${flags[@]}" \
        >"$out/bus-fanout-n$i.log" 2>&1 &
    pids+=($!)
done
for i in $(seq 0 $((nodes - 1))); do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$((port + 50 + i))/readyz" >/dev/null && break
        sleep 0.1
    done
done
target="ws://127.0.0.1:$port/"
((nodes > 1)) && target="ws://127.0.0.1:$port-$((port + nodes - 1))/"
"$loadgen" fanout "$target" --mode hub --channels "$channels" --connections "$subs" \
    --publishers "$nodes" --rate "$rate" --size 64 --duration "$duration" --drain 10s \
    --no-progress --json "$out/bus-fanout.json" >"$out/bus-fanout.txt" 2>&1 || true
python3 - "$out/bus-fanout.json" "$bus nodes=$nodes rate=$rate subs=$subs channels=$channels" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"]
print(sys.argv[2], "deliveries/s=%.0f" % r["deliveries_per_sec"],
      "p50=%s p99=%s max=%s" % (lat["p50"], lat["p99"], lat["max"]),
      "gaps", r["gaps"], "dups", r.get("duplicates"), "ok", r["ok"])
PY
