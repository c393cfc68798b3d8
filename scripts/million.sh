#!/usr/bin/env bash
# scripts/million.sh: hold a million WebSockets on one box, the way a real deployment does it
# when one process may hold only ~19,000: many engine processes (`starling serve --app hub`,
# few shards each) joined by a Redis bus, a load generator spread over processes and source
# addresses, and one message published on one node that reaches every subscriber on every
# node through Redis.
#
# Steps, each bounded in time:
#   1. limits: sysctl/check for the target (kernel knobs for all sockets on this box; the
#      open-file limit per process); sysctl/tune raises what is short (root), else refuse
#   2. binaries: cargo build --release when starling or starling-loadgen is missing or older
#      than the sources
#   3. redis-server on a spare port, no persistence (apt-get install when absent)
#   4. K engines on ports BASE+1..BASE+K, admin APIs on BASE+K+1..BASE+2K, each
#      --bus redis://127.0.0.1:BASE --node-id million-<i>, each holding <= the per-process cap
#   5. starling-loadgen connect --subscribe CHANNEL --count 1 over --procs P and M source
#      addresses at a bounded --rate; the ramp is watched through every engine's /stats,
#      aborted if MemAvailable falls under the guard
#   6. once everyone is subscribed: a snapshot (per-engine counts, RSS, /proc/net/sockstat,
#      slab, CPU per group, drops and retransmissions); the bus is let settle (a probe publish
#      on every node until each answers within 250 ms: whatever the ramp left queued on a
#      node's bus thread is worked off, so the publish times delivery alone); then one POST /publish on node
#      million-0 carrying its CLOCK_MONOTONIC send time; the load generator times each
#      delivery from it and ends its hold once all have it
#   7. teardown of exactly what was started (by PID), summary block + --json
#
# Nothing is restored at the end except what this script started: sysctl/tune's changes stay
# (they are recorded; `sysctl/tune --revert` undoes them).
#
# Exit: 0 every subscriber got the message, 1 the run failed or was aborted, 2 refused
# (usage, limits, memory, ports), 130 interrupted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/scripts/million-helper.py"
STARLING="$ROOT/target/release/starling"
LOADGEN="$ROOT/target/release/starling-loadgen"

# Descriptors a process keeps besides its connections (sysctl/lib.sh FD_HEADROOM): the
# per-process cap is the hard open-file limit minus this.
FD_HEADROOM=1024
# Connections per source address by default: well inside one ephemeral range.
PER_SOURCE=20000
# Kernel bytes per connection (both ends on this box) when sysctl/check cannot say.
KMEM_PER_CONN_FALLBACK=9800
# User-space bytes per connection assumed for the memory estimate: engine (~200 B measured)
# plus load generator (its Conn, slab slot and timer entries).
USER_PER_CONN=1200

usage() {
    cat <<EOF
usage: scripts/million.sh [--target N] [--engines K] [--procs P] [--sources M] [--rate R]
                          [--shards S] [--settle SECS] [--hold SECS] [--channel NAME]
                          [--base-port PORT]
                          [--mem-guard MIB] [--ping-interval T] [--profile density|throughput]
                          [--no-tune]
                          [--run-dir DIR] [--json FILE]

  --target N       connections (subscribers) to hold (default 1000000)
  --engines K      engine processes (default: N over the per-process cap, rounded up)
  --procs P        load-generator processes (default: as for --engines)
  --sources M      source addresses 127.0.0.1.. (default: one per $PER_SOURCE connections)
  --rate R         new connections per second, all processes together (default 10000)
  --shards S       shards per engine (default 1: the box has few cores, K engines already)
  --settle SECS    most to wait, after the ramp, for the bus to work off what the ramp
                   queued (default 180); the publish goes out then, settled or not
  --hold SECS      most to wait for the deliveries after the publish (default 60); the load
                   generator stops as soon as every subscriber has the message
  --channel NAME   the channel every connection subscribes to (default million)
  --base-port P    redis on P, engines on P+1..P+K, admin APIs on P+K+1..P+2K (default 9400;
                   must lie below the ephemeral port range)
  --mem-guard MIB  abort the ramp when MemAvailable falls below this (default 1536)
  --ping-interval T  passed to the engines (default: theirs, 30s); every idle connection is
                   pinged once per T, which at a million is 1M/T pings a second
  --profile P      sysctl/tune profile when a knob is short (default density)
  --no-tune        refuse instead of running sysctl/tune
  --run-dir DIR    logs, snapshots and the load generator's JSON (default: a new /tmp dir)
  --json FILE      write the summary as JSON here too (always also RUN_DIR/summary.json)
EOF
}

say() { printf '[million %5ss] %s\n' "$SECONDS" "$*"; }
refuse() {
    printf 'million: refused: %s\n' "$1" >&2
    exit 2
}

TARGET=1000000 ENGINES="" PROCS="" SOURCES="" RATE=10000 SHARDS=1 HOLD=60 CHANNEL=million
SETTLE_SECS=180 PING_INTERVAL="" PROBE_PID=""
BASE_PORT=9400 MEM_GUARD_MIB=1536 PROFILE=density TUNE=1 RUN_DIR="" JSON_OUT=""
COMMAND="scripts/million.sh $*"
while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --no-tune) TUNE=0 ;;
        --target | --engines | --procs | --sources | --rate | --shards | --hold | --settle | --base-port | --mem-guard)
            (($# >= 2)) || refuse "$1 needs a value"
            [[ "$2" =~ ^[1-9][0-9]*$ ]] || refuse "$1 wants a positive whole number, got '$2'"
            case "$1" in
                --target) TARGET=$2 ;;
                --engines) ENGINES=$2 ;;
                --procs) PROCS=$2 ;;
                --sources) SOURCES=$2 ;;
                --rate) RATE=$2 ;;
                --shards) SHARDS=$2 ;;
                --hold) HOLD=$2 ;;
                --settle) SETTLE_SECS=$2 ;;
                --base-port) BASE_PORT=$2 ;;
                --mem-guard) MEM_GUARD_MIB=$2 ;;
            esac
            shift
            ;;
        --channel | --profile | --run-dir | --json | --ping-interval)
            (($# >= 2)) || refuse "$1 needs a value"
            case "$1" in
                --channel) CHANNEL=$2 ;;
                --profile) PROFILE=$2 ;;
                --run-dir) RUN_DIR=$2 ;;
                --json) JSON_OUT=$2 ;;
                --ping-interval) PING_INTERVAL=$2 ;;
            esac
            shift
            ;;
        *) refuse "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ "$PROFILE" =~ ^(density|throughput)$ ]] || refuse "--profile wants density or throughput"
[[ "$CHANNEL" =~ ^[A-Za-z0-9_.:/@-]{1,128}$ ]] || refuse "--channel '$CHANNEL' is not a channel name"

# ---- the plan --------------------------------------------------------------------------------

HARD_NOFILE="$(ulimit -Hn)"
[[ "$HARD_NOFILE" == unlimited ]] && HARD_NOFILE=1048576
PER_PROCESS_MAX=$((HARD_NOFILE - FD_HEADROOM))
((PER_PROCESS_MAX > 0)) || refuse "the hard open-file limit ($HARD_NOFILE) leaves no room for connections"
ceil_div() { printf '%s' $((($1 + $2 - 1) / $2)); }
ENGINES="${ENGINES:-$(ceil_div "$TARGET" "$PER_PROCESS_MAX")}"
PROCS="${PROCS:-$(ceil_div "$TARGET" "$PER_PROCESS_MAX")}"
SOURCES="${SOURCES:-$(ceil_div "$TARGET" "$PER_SOURCE")}"
PER_ENGINE="$(ceil_div "$TARGET" "$ENGINES")"
PER_PROC="$(ceil_div "$TARGET" "$PROCS")"
((PER_ENGINE <= PER_PROCESS_MAX)) ||
    refuse "$TARGET connections over $ENGINES engines is $PER_ENGINE each, over the per-process cap $PER_PROCESS_MAX (hard RLIMIT_NOFILE $HARD_NOFILE - $FD_HEADROOM): use --engines $(ceil_div "$TARGET" "$PER_PROCESS_MAX") or more"
((PER_PROC <= PER_PROCESS_MAX)) ||
    refuse "$PER_PROC connections per load-generator process is over the cap $PER_PROCESS_MAX: use --procs $(ceil_div "$TARGET" "$PER_PROCESS_MAX") or more"
((SOURCES <= 65000)) || refuse "--sources $SOURCES: at most 65000 loopback addresses here"
REDIS_PORT=$BASE_PORT
WS_FIRST=$((BASE_PORT + 1))
WS_LAST=$((BASE_PORT + ENGINES))
API_FIRST=$((WS_LAST + 1))
LAST_PORT=$((BASE_PORT + 2 * ENGINES))
((LAST_PORT <= 65535)) || refuse "ports $BASE_PORT..$LAST_PORT do not fit under 65535"
API_PORTS=()
for ((i = 0; i < ENGINES; i++)); do API_PORTS+=($((API_FIRST + i))); done
# 127.0.0.1 .. the M-th address after 127.0.0.0, as one range.
last_source=$((0x7f000000 + SOURCES))
SOURCE_SPEC="127.0.0.1-127.$(((last_source >> 16) & 255)).$(((last_source >> 8) & 255)).$((last_source & 255))"

RUN_DIR="${RUN_DIR:-$(mktemp -d /tmp/million.XXXXXX)}"
mkdir -p "$RUN_DIR/logs"
say "plan: $TARGET connections = $ENGINES engines x <= $PER_ENGINE (cap $PER_PROCESS_MAX per process), $PROCS load-generator processes, sources $SOURCE_SPEC, $RATE/s; run dir $RUN_DIR"

# ---- cleanup: exactly what we started, by PID ----------------------------------------------

REDIS_PID=""
ENGINE_PIDS=()
LOADGEN_PID=""
LOADGEN_CHILDREN=()

# alive PID: the process exists and is not a zombie.
alive() {
    local state
    [[ -r "/proc/$1/stat" ]] || return 1
    state="$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# stop SIGNAL SECONDS PID...: signal each (that is still ours and alive), wait up to SECONDS
# for all to go, then SIGKILL the rest; reap our own children.
stop() {
    local sig="$1" secs="$2" pid deadline
    shift 2
    for pid in "$@"; do
        if alive "$pid"; then kill "-$sig" "$pid" 2>/dev/null || true; fi
    done
    deadline=$((SECONDS + secs))
    for pid in "$@"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
        if alive "$pid"; then
            say "pid $pid still running after ${secs}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

# The load generator's children, recorded while it runs so that they can be stopped by PID
# even if the parent is gone (they are starling-loadgen processes started by it).
record_loadgen_children() {
    local kids pid
    [[ -n "$LOADGEN_PID" && -r "/proc/$LOADGEN_PID/task/$LOADGEN_PID/children" ]] || return 0
    kids="$(<"/proc/$LOADGEN_PID/task/$LOADGEN_PID/children")" || return 0
    for pid in $kids; do
        [[ " ${LOADGEN_CHILDREN[*]} " == *" $pid "* ]] || LOADGEN_CHILDREN+=("$pid")
    done
}

loadgen_children_alive() {
    local pid out=()
    for pid in "${LOADGEN_CHILDREN[@]}"; do
        alive "$pid" && grep -q starling-loadgen "/proc/$pid/cmdline" 2>/dev/null && out+=("$pid")
    done
    ((${#out[@]} == 0)) || printf '%s\n' "${out[@]}"
}

cleanup() {
    local rc=$? kids
    trap - EXIT INT TERM
    if [[ -n "$LOADGEN_PID" ]]; then
        record_loadgen_children
        # SIGTERM: the load generator closes its connections and reports (bounded by itself).
        stop TERM 20 "$LOADGEN_PID"
        mapfile -t kids < <(loadgen_children_alive)
        ((${#kids[@]} == 0)) || stop TERM 5 "${kids[@]}"
    fi
    [[ -z "$PROBE_PID" ]] || stop TERM 5 "$PROBE_PID"
    if ((${#ENGINE_PIDS[@]})); then
        stop TERM 40 "${ENGINE_PIDS[@]}"
    fi
    [[ -z "$REDIS_PID" ]] || stop TERM 10 "$REDIS_PID"
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted: tearing down"; exit 130' INT TERM

# ---- 1. limits -------------------------------------------------------------------------------

check_limits() {
    "$ROOT/sysctl/check" --connections "$TARGET" --sources "$SOURCES" --role both \
        --profile density --json >"$RUN_DIR/check-system.json" || true
    "$ROOT/sysctl/check" --connections "$PER_PROCESS_MAX" --sources "$SOURCES" --role both \
        --json >"$RUN_DIR/check-process.json" || true
    SYSTEM_LOW="$(python3 "$HELPER" checkrows "$RUN_DIR/check-system.json" system)"
    PROCESS_LOW="$(python3 "$HELPER" checkrows "$RUN_DIR/check-process.json" process)"
}

say "1. limits: sysctl/check --connections $TARGET --sources $SOURCES --role both"
check_limits
[[ -z "$PROCESS_LOW" ]] || refuse "per-process limit: $PROCESS_LOW"
if [[ -n "$SYSTEM_LOW" ]]; then
    printf '%s\n' "$SYSTEM_LOW" | sed 's/^/    LOW /'
    ((TUNE)) || refuse "kernel limits are short (above); run sysctl/tune or drop --no-tune"
    ((EUID == 0)) || refuse "kernel limits are short (above) and sysctl/tune needs root: sudo sysctl/tune --connections $TARGET --sources $SOURCES --role both"
    say "   sysctl/tune --connections $TARGET --sources $SOURCES --role both --profile $PROFILE"
    "$ROOT/sysctl/tune" --connections "$TARGET" --sources "$SOURCES" --role both \
        --profile "$PROFILE" 2>&1 | sed 's/^/    /' || true
    check_limits
    [[ -z "$SYSTEM_LOW" ]] || refuse "still short after sysctl/tune: $SYSTEM_LOW"
fi
read -r PORT_LO PORT_HI <"/proc/sys/net/ipv4/ip_local_port_range"
if ((LAST_PORT >= PORT_LO && BASE_PORT <= PORT_HI)); then
    refuse "ports $BASE_PORT-$LAST_PORT overlap the ephemeral range $PORT_LO-$PORT_HI: choose --base-port so that the ports end below $PORT_LO"
fi
while read -r port; do
    ((port >= BASE_PORT && port <= LAST_PORT)) && refuse "port $port (in $BASE_PORT-$LAST_PORT) is already in use: choose another --base-port"
done < <(ss -Htln | awk '{ n = split($4, a, ":"); print a[n] }')
KMEM_PER_SOCKET="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kernel_bytes_per_socket"])' "$RUN_DIR/check-system.json" 2>/dev/null)" ||
    KMEM_PER_SOCKET=$((KMEM_PER_CONN_FALLBACK / 2))
mem_available() { printf '%s' $(($(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) * 1024)); }
# Per connection: two idle kernel sockets, user space, and one page of socket buffer while the
# broadcast is queued on its receiving end (measured at 40,000: ~1.05 pages per connection).
PER_CONN_BYTES=$((2 * KMEM_PER_SOCKET + USER_PER_CONN + $(getconf PAGESIZE)))
NEED_BYTES=$((TARGET * PER_CONN_BYTES))
GUARD_BYTES=$((MEM_GUARD_MIB * 1024 * 1024))
AVAIL="$(mem_available)"
((AVAIL - NEED_BYTES >= GUARD_BYTES)) ||
    refuse "memory: $TARGET connections need ~$((NEED_BYTES >> 20)) MiB ($PER_CONN_BYTES B each: two kernel sockets, user space, a buffer page during the broadcast), MemAvailable is $((AVAIL >> 20)) MiB and the guard keeps $MEM_GUARD_MIB MiB"
say "   limits OK; memory estimate $((NEED_BYTES >> 20)) MiB of $((AVAIL >> 20)) MiB available"

# ---- 2. binaries -----------------------------------------------------------------------------

stale() {
    local bin="$1"
    [[ -x "$bin" ]] || return 0
    [[ -n "$(find "$ROOT/src" "$ROOT/loadgen/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
        "$ROOT/loadgen/Cargo.toml" -newer "$bin" -print -quit 2>/dev/null)" ]]
}
if stale "$STARLING" || stale "$LOADGEN"; then
    say "2. cargo build --release (starling, starling-loadgen)"
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet -p starling -p starling-loadgen --bins) ||
        refuse "cargo build --release failed"
else
    say "2. binaries up to date"
fi

# ---- 3. redis ----------------------------------------------------------------------------------

if "$STARLING" serve --help | grep -q -- '--bus'; then
    BUS="redis://127.0.0.1:$REDIS_PORT"
else
    BUS=""
fi
if [[ -n "$BUS" ]]; then
    if ! command -v redis-server >/dev/null; then
        ((EUID == 0)) || refuse "redis-server is not installed (apt-get install -y redis-server)"
        say "   apt-get install -y redis-server"
        export DEBIAN_FRONTEND=noninteractive
        if ! timeout 600 apt-get update -qq ||
            ! timeout 600 apt-get install -y -qq redis-server >/dev/null; then
            refuse "apt-get install redis-server failed"
        fi
    fi
    say "3. redis-server on 127.0.0.1:$REDIS_PORT (no persistence)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$RUN_DIR" --logfile "$RUN_DIR/logs/redis.log" --daemonize no </dev/null &
    REDIS_PID=$!
    deadline=$((SECONDS + 10))
    until [[ "$(timeout 2 redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; do
        alive "$REDIS_PID" || refuse "redis-server exited: $(tail -3 "$RUN_DIR/logs/redis.log")"
        ((SECONDS < deadline)) || refuse "redis-server did not answer PING within 10 s"
        sleep 0.2
    done
    PUBLISH_PORTS=("${API_PORTS[0]}")
    PUBLISH_VIA="one POST /publish on node million-0 (api :${API_PORTS[0]}), the rest through Redis"
else
    say "3. this starling has no --bus yet: no redis; FALLBACK publishes to every node's admin API"
    PUBLISH_PORTS=("${API_PORTS[@]}")
    PUBLISH_VIA="FALLBACK (no --bus in this build): one POST /publish to each of the $ENGINES nodes in turn"
fi

# ---- 4. engines ------------------------------------------------------------------------------

say "4. $ENGINES engines: starling serve --app hub --shards $SHARDS on :$WS_FIRST-$WS_LAST${BUS:+ --bus $BUS}"
for ((i = 0; i < ENGINES; i++)); do
    args=(serve --listen "127.0.0.1:$((WS_FIRST + i))" --app hub --shards "$SHARDS"
        --api-listen "127.0.0.1:${API_PORTS[$i]}" --drain-timeout 5s)
    [[ -z "$PING_INTERVAL" ]] || args+=(--ping-interval "$PING_INTERVAL")
    [[ -z "$BUS" ]] || args+=(--bus "$BUS" --node-id "million-$i")
    "$STARLING" "${args[@]}" </dev/null >"$RUN_DIR/logs/engine-$i.log" 2>&1 &
    ENGINE_PIDS+=($!)
done
# /readyz is 200 once the node serves (with the bus: once a canary went through Redis and back).
deadline=$((SECONDS + 30))
for ((i = 0; i < ENGINES; i++)); do
    until curl -sf --max-time 1 "http://127.0.0.1:${API_PORTS[$i]}/readyz" >/dev/null; do
        alive "${ENGINE_PIDS[$i]}" || refuse "engine $i exited: $(tail -3 "$RUN_DIR/logs/engine-$i.log")"
        ((SECONDS < deadline)) || refuse "engine $i not ready within 30 s: $(curl -s --max-time 1 "http://127.0.0.1:${API_PORTS[$i]}/readyz")"
        sleep 0.2
    done
done
say "   all $ENGINES engines ready"

# ---- 5. ramp ---------------------------------------------------------------------------------

join() {
    local IFS=,
    printf '%s' "$*"
}
snapshot() {
    record_loadgen_children
    local lg=()
    [[ -z "$LOADGEN_PID" ]] || lg=("$LOADGEN_PID" "${LOADGEN_CHILDREN[@]}")
    python3 "$HELPER" snapshot "$1" "$(join "${ENGINE_PIDS[@]}")" "$(join "${lg[@]}")" "$REDIS_PID" \
        "${REDIS_PID:+$REDIS_PORT}"
}
engines_alive() {
    local i
    for ((i = 0; i < ENGINES; i++)); do
        alive "${ENGINE_PIDS[$i]}" || {
            say "engine $i (pid ${ENGINE_PIDS[$i]}) died: $(tail -2 "$RUN_DIR/logs/engine-$i.log")"
            return 1
        }
    done
}
snapshot "$RUN_DIR/before.json"

LG_ARGS=(connect "ws://127.0.0.1:$WS_FIRST-$WS_LAST/" --connections "$TARGET" --procs "$PROCS"
    --threads 1 --source "$SOURCE_SPEC" --rate "$RATE" --subscribe "$CHANNEL" --count 1
    --duration "$((SETTLE_SECS + HOLD + 30))s" --timeout 30s --json "$RUN_DIR/loadgen.json" --no-progress)
say "5. ramp: starling-loadgen ${LG_ARGS[*]}"
RAMP_START=$SECONDS
"$LOADGEN" "${LG_ARGS[@]}" </dev/null >"$RUN_DIR/loadgen.txt" 2>"$RUN_DIR/loadgen.err" &
LOADGEN_PID=$!

# Bounded: the paced ramp, the connect timeout, a minute of slack. The engines' counters are
# read by a probe in the background (53 HTTP requests take seconds on a saturated box), the
# memory guard every second regardless.
RAMP_BUDGET=$((TARGET / RATE + 90))
STALL_SECS=20
MEM_MIN="$(mem_available)"
open=0 subs=0 answered=0 probed=0 PROBE_PID=""
last_subs=-1 last_change=$SECONDS last_print=-10 STOPPED_BECAUSE=""
printf 'elapsed_s,open,subscribed,mem_available_mib\n' >"$RUN_DIR/ramp.csv"
while :; do
    probed=0
    if [[ -n "$PROBE_PID" ]] && ! alive "$PROBE_PID"; then
        wait "$PROBE_PID" 2>/dev/null || true
        PROBE_PID=""
        read -r open subs answered <"$RUN_DIR/ramp-probe.out" || true
        probed=1
        if ((subs != last_subs)); then last_subs=$subs last_change=$SECONDS; fi
    fi
    if [[ -z "$PROBE_PID" ]]; then
        python3 "$HELPER" stats "$RUN_DIR/ramp-stats.json" "${API_PORTS[@]}" >"$RUN_DIR/ramp-probe.out" &
        PROBE_PID=$!
    fi
    avail="$(mem_available)"
    ((avail < MEM_MIN)) && MEM_MIN=$avail
    elapsed=$((SECONDS - RAMP_START))
    printf '%s,%s,%s,%s\n' "$elapsed" "$open" "$subs" "$((avail >> 20))" >>"$RUN_DIR/ramp.csv"
    if ((SECONDS - last_print >= 5)); then
        say "   ramp ${elapsed}s: open $open, subscribed $subs of $TARGET (engines answering $answered/$ENGINES); MemAvailable $((avail >> 20)) MiB"
        last_print=$SECONDS
    fi
    record_loadgen_children
    if ((avail < GUARD_BYTES)); then
        STOPPED_BECAUSE="ABORTED: MemAvailable $((avail >> 20)) MiB under the guard $MEM_GUARD_MIB MiB at $subs subscribed"
        break
    fi
    engines_alive || {
        STOPPED_BECAUSE="ABORTED: an engine died at $subs subscribed"
        break
    }
    if ((subs >= TARGET)); then
        STOPPED_BECAUSE="all subscribed"
        break
    fi
    if ! alive "$LOADGEN_PID"; then
        STOPPED_BECAUSE="ABORTED: the load generator exited during the ramp: $(tail -2 "$RUN_DIR/loadgen.err" 2>/dev/null)"
        break
    fi
    # Judged on a fresh reading only: a slow probe is no stall.
    if ((probed && subs > 0 && SECONDS - last_change >= STALL_SECS)); then
        STOPPED_BECAUSE="stalled at $subs for ${STALL_SECS}s: publishing to those"
        break
    fi
    if ((elapsed >= RAMP_BUDGET)); then
        STOPPED_BECAUSE="ramp budget ${RAMP_BUDGET}s used up at $subs: publishing to those"
        break
    fi
    sleep 1
done
if [[ -n "$PROBE_PID" ]]; then
    stop TERM 10 "$PROBE_PID"
    PROBE_PID=""
fi
RAMP_S=$((SECONDS - RAMP_START))
say "   ramp over after ${RAMP_S}s: $STOPPED_BECAUSE"

write_params() {
    # Values travel as arguments, not as code: a message may hold any character.
    python3 - "$RUN_DIR/params.json" \
        command="$COMMAND" target="$TARGET" engines="$ENGINES" shards="$SHARDS" procs="$PROCS" \
        sources="$SOURCES" source_spec="$SOURCE_SPEC" rate="$RATE" per_engine_max="$PER_ENGINE" \
        per_process_cap="$PER_PROCESS_MAX" bus="${BUS:-none}" publish_via="$PUBLISH_VIA" \
        channel="$CHANNEL" ramp_s="$RAMP_S" stopped_because="$STOPPED_BECAUSE" \
        ping_interval="${PING_INTERVAL:-engine default (30s)}" \
        run_dir="$RUN_DIR" <<'EOF'
import json, os, sys
p = dict(a.split("=", 1) for a in sys.argv[2:])
for k, v in p.items():
    if v.isdigit():
        p[k] = int(v)
u = os.uname()
mem = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) * 1024
p["machine"] = f"{os.cpu_count()} cores, {mem / 2**30:.1f} GiB, {u.sysname} {u.release}"
json.dump(p, open(sys.argv[1], "w"), indent=2)
EOF
}

finish() {
    write_params
    local json="${JSON_OUT:-$RUN_DIR/summary.json}"
    python3 "$HELPER" summary "$RUN_DIR" "$json" | tee "$RUN_DIR/summary.txt"
    [[ -z "$JSON_OUT" ]] || cp "$JSON_OUT" "$RUN_DIR/summary.json"
}

if [[ "$STOPPED_BECAUSE" == ABORTED* ]]; then
    python3 "$HELPER" stats "$RUN_DIR/held-stats.json" "${API_PORTS[@]}" >/dev/null || true
    snapshot "$RUN_DIR/held.json"
    stop TERM 20 "$LOADGEN_PID"
    printf '{"mem_available_min_bytes": %s}\n' "$MEM_MIN" >"$RUN_DIR/peaks.json"
    finish || true
    exit 1
fi

# ---- 6. hold, publish, wait for every delivery -------------------------------------------------

sleep 1 # the shards publish their counters every 250 ms
python3 "$HELPER" stats "$RUN_DIR/held-stats.json" "${API_PORTS[@]}" >/dev/null
snapshot "$RUN_DIR/held.json"
# What the ramp queued on the bus (presence writes, served one batch after each batch of
# publishes) is worked off first, so that the publish below times the
# delivery and not that queue; how long it took is a figure of its own.
if [[ -n "$BUS" ]]; then
    read -r SETTLE_S SETTLED _ < <(python3 "$HELPER" settle "$RUN_DIR/settle.json" \
        "$CHANNEL.probe" "$SETTLE_SECS" "${API_PORTS[@]}") || SETTLE_S="?" SETTLED=0
    say "   bus settled on $SETTLED of $ENGINES nodes after ${SETTLE_S}s (a publish answered within 250 ms)"
    snapshot "$RUN_DIR/settled.json"
fi
say "6. publish on ${#PUBLISH_PORTS[@]} node(s): $PUBLISH_VIA"
read -r PUB_T PUB_OK < <(python3 "$HELPER" publish "$RUN_DIR/publish.json" "$CHANNEL" "${PUBLISH_PORTS[@]}")
say "   publish t=$PUB_T ns (CLOCK_MONOTONIC): $PUB_OK"

# The load generator ends its hold once every subscriber has the message (or after --hold),
# then closes its connections (at most a few seconds).
TCP_PEAK=0
deadline=$((SECONDS + HOLD + 60))
while alive "$LOADGEN_PID" && ((SECONDS < deadline)); do
    mem_pages="$(awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat)"
    ((mem_pages > TCP_PEAK)) && TCP_PEAK=$mem_pages
    avail="$(mem_available)"
    ((avail < MEM_MIN)) && MEM_MIN=$avail
    if ((avail < GUARD_BYTES)); then
        say "ABORT: MemAvailable $((avail >> 20)) MiB under the guard while delivering"
        break
    fi
    sleep 0.2
done
snapshot "$RUN_DIR/delivered.json"
printf '{"mem_available_min_bytes": %s, "tcp_mem_pages_max": %s}\n' "$MEM_MIN" "$TCP_PEAK" >"$RUN_DIR/peaks.json"
if alive "$LOADGEN_PID"; then
    say "   the load generator is still running: SIGTERM"
    stop TERM 20 "$LOADGEN_PID"
fi
LOADGEN_RC=0
wait "$LOADGEN_PID" 2>/dev/null || LOADGEN_RC=$?
LOADGEN_PID_DONE=$LOADGEN_PID
LOADGEN_PID=""
say "   load generator exited ($LOADGEN_RC); its report:"
sed 's/^/    /' "$RUN_DIR/loadgen.txt"
mapfile -t kids < <(loadgen_children_alive)
((${#kids[@]} == 0)) || stop TERM 5 "${kids[@]}"

# ---- 7. teardown and summary -------------------------------------------------------------------

say "7. teardown: $ENGINES engines${REDIS_PID:+, redis} (pid $LOADGEN_PID_DONE and its children are gone)"
# An engine drains in 5 s (--drain-timeout); with the bus it then sends what it still owes
# Redis (presence writes for the connections that left, coalesced per channel).
stop TERM 40 "${ENGINE_PIDS[@]}"
ENGINE_PIDS=()
if [[ -n "$REDIS_PID" ]]; then
    stop TERM 10 "$REDIS_PID"
    REDIS_PID=""
fi
finish
OK="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "${JSON_OUT:-$RUN_DIR/summary.json}")"
[[ "$OK" == True ]]
