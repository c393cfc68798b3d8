#!/usr/bin/env bash
# loadgen-floors.sh: the load generator's own figures, side by side with this box's ceiling
# for connection setup, in one run:
#   echo      64 connections x 64 in flight x 32 B, 10 s, against serve --app echo
#   connect   19,000 connections from one process, one engine process
#   procs     60,000 connections with --procs 4 over four engine processes (ports P+1..P+4)
#   ceiling   benches/ceiling/tcp_connect.c: 14,000 bare TCP connections, then 14,000 that
#             also carry a fixed request and answer (no parsing, no hashing), next to
#             starling-loadgen connect with 14,000 against the engine
# Servers are pinned to CPU 1 (--shards 1), clients to CPU 0. Every process is started here
# and stopped by its PID. Raw outputs go to OUT; the last lines printed are the summary.
#
# usage: benches/scripts/loadgen-floors.sh OUT [PORT]
#   e.g. benches/scripts/loadgen-floors.sh benches/results/2026-12-07-vm/floors-1 9500
# Environment: STARLING_BIN, LOADGEN_BIN [target/release/...]; CC [gcc]
set -euo pipefail
out=$1 port=${2:-9500}
bin=${STARLING_BIN:-target/release/starling}
loadgen=${LOADGEN_BIN:-target/release/starling-loadgen}
mkdir -p "$out"
servers=()
cleanup() {
    for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${servers[@]}"; do wait "$p" 2>/dev/null || true; done
    servers=()
}
trap cleanup EXIT
serve() { # serve APP PORT LOG
    taskset -c 1 "$bin" serve --listen "127.0.0.1:$2" --app "$1" --shards 1 --no-api >"$3" 2>&1 &
    servers+=("$!")
}
lg() { taskset -c 0 "$loadgen" "$@" --no-progress; }

cat /proc/sys/net/ipv4/ip_local_port_range >"$out/port_range.txt"

serve echo "$port" "$out/echo.server.log"
sleep 0.5
lg echo "ws://127.0.0.1:$port/" --connections 64 --depth 64 --size 32 --duration 10s \
    --server-pid "${servers[0]}" --json "$out/echo.json" >"$out/echo.txt" 2>&1
cleanup

serve echo "$((port + 10))" "$out/connect19k.server.log"
sleep 0.5
lg connect "ws://127.0.0.1:$((port + 10))/" --connections 19000 --duration 1s \
    --server-pid "${servers[0]}" --json "$out/connect19k.json" >"$out/connect19k.txt" 2>&1
cleanup

for i in 1 2 3 4; do serve echo "$((port + 20 + i))" "$out/connect60k.server-$i.log"; done
sleep 0.5
lg connect "ws://127.0.0.1:$((port + 21))-$((port + 24))/" --connections 60000 --procs 4 \
    --duration 2s --json "$out/connect60k.json" >"$out/connect60k.txt" 2>&1
cleanup

ceiling=$(mktemp -d)/tcp_connect
"${CC:-gcc}" -O2 -o "$ceiling" benches/ceiling/tcp_connect.c
"$ceiling" "$((port + 30))" 14000 >"$out/ceiling-tcp.txt"
sleep 1
"$ceiling" "$((port + 31))" 14000 exchange >"$out/ceiling-exchange.txt"
sleep 1
serve echo "$((port + 32))" "$out/connect14k.server.log"
sleep 0.5
lg connect "ws://127.0.0.1:$((port + 32))/" --connections 14000 --duration 500ms \
    --json "$out/connect14k.json" >"$out/connect14k.txt" 2>&1
cleanup

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def j(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)
def first(name):
    with open(os.path.join(out, name)) as f:
        return f.readline().strip()
e = j("echo.json")
cpu = e.get("cpu", {}).get("measure", {})
core = next((c for c in cpu.get("cores", []) if c.get("ours")), {})
print("echo       %.2fM msg/s, p99 %.0f µs, load generator %.0f %% of a core (its core %.0f %% "
      "busy), server %.0f %%, errors %d" % (
          e["messages_per_sec"] / 1e6, e["latency_us"]["p99"], 100 * cpu.get("busy_cores", 0),
          100 * core.get("busy", 0), 100 * cpu.get("server_busy_cores", 0), e["errors"]))
for name, label in (("connect19k.json", "connect"), ("connect60k.json", "procs"),
                    ("connect14k.json", "connect14k")):
    r = j(name)
    c = r["connections"]
    print("%-10s %d of %d open, %.1fk handshakes/s, failed %d" % (
        label, c["handshakes"], c["attempted"], r["handshakes_per_sec"] / 1e3, c["failed"]))
print("ceiling    " + first("ceiling-tcp.txt"))
print("ceiling    " + first("ceiling-exchange.txt"))
PY
