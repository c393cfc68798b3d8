#!/usr/bin/env bash
# The load generator's own figures (issue 3): echo throughput, handshake rate, connections
# held from one process and over --procs 4, fanout at 10,000 subscribers, churn.
#
#   loadgen/bench.sh [OUT_DIR]        (default: target/loadgen-bench/<date>)
#
# Release builds; the load generator is pinned to core 0 and each Starling server to core 1
# (`taskset`), as on the 2-core reference box. Every server is started fresh (so memory per
# connection starts from an idle process) and stopped by its own pid. Each run is bounded by
# its --duration and a `timeout`. Writes one JSON per run plus commands.txt into OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/loadgen-bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
cargo build --release --quiet --bin starling -p starling
cargo build --release --quiet --bin starling-loadgen -p starling-loadgen
LG=target/release/starling-loadgen
SERVERS=()

serve() { # serve PORT APP -> starts a server on core 1, records its pid in SERVER_PID
    taskset -c 1 target/release/starling serve --listen "127.0.0.1:$1" --app "$2" --shards 1 \
        >"$OUT/server-$1.log" 2>&1 &
    SERVER_PID=$!
    SERVERS+=("$SERVER_PID")
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "server on $1 did not start" >&2
    return 1
}
stop_servers() {
    for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${SERVERS[@]}"; do wait "$pid" 2>/dev/null || true; done
    SERVERS=()
}
trap stop_servers EXIT

run() { # run NAME ARGS... -> runs the load generator on core 0, JSON into OUT/NAME.json
    local name=$1
    shift
    echo "taskset -c 0 $LG $* --json $OUT/$name.json" | tee -a "$OUT/commands.txt"
    timeout 300 taskset -c 0 "$LG" "$@" --no-progress --json "$OUT/$name.json" \
        | tee "$OUT/$name.txt" || true
}

serve 19301 echo
run echo-64x64x32 echo ws://127.0.0.1:19301/ --connections 64 --depth 64 --size 32 \
    --duration 10s --server-pid "$SERVER_PID"
stop_servers

serve 19302 echo
run connect-19000 connect ws://127.0.0.1:19302/ --connections 19000 --duration 5s \
    --server-pid "$SERVER_PID"
stop_servers

serve 19303 echo
run connect-19000-rate5000 connect ws://127.0.0.1:19303/ --connections 19000 --rate 5000/s \
    --duration 5s --server-pid "$SERVER_PID"
stop_servers

for p in 19311 19312 19313 19314; do serve "$p" echo; done
run connect-60000-procs4 connect ws://127.0.0.1:19311-19314/ --connections 60000 --procs 4 \
    --duration 5s
stop_servers

serve 19321 broadcast
run fanout-10000x1000 fanout ws://127.0.0.1:19321/ --connections 10000 --publishers 1 \
    --rate 1000/s --size 64 --duration 10s --server-pid "$SERVER_PID"
sleep 11 # the server logs its counters every 10 s: keep the line that covers the run
grep stats "$OUT/server-19321.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' >"$OUT/fanout-server-counters.txt"
stop_servers

serve 19331 echo
run churn churn ws://127.0.0.1:19331/ --connections 64 --duration 5s --server-pid "$SERVER_PID"
stop_servers

{
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
    echo "memory: $(grep MemTotal /proc/meminfo | awk '{print $2 " kB"}')"
    echo "git: $(git rev-parse --short HEAD)"
} >"$OUT/machine.txt"
echo "results in $OUT"
