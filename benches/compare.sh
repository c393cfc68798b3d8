#!/usr/bin/env bash
# compare.sh — Starling against its reference servers, one core each, same load.
#
# Each server in turn is started pinned to CPU $SERVER_CPU, the load generator
# runs pinned to CPU $LOAD_CPU, and the server is stopped by its PID before the
# next one starts. Two scenarios:
#   echo    the server runs --app echo; starling-loadgen echo keeps --depth
#           messages in flight on each of --connections connections.
#   fanout  the server runs --app broadcast; starling-loadgen fanout holds
#           --connections subscribers while --publishers send at --rate.
# Servers: starling (--shards 1), tokio-tungstenite, fastwebsockets (--writes
# direct: one write per frame, as the crate's examples do), fastwebsockets-buffered
# (--writes buffered: frames batched behind a BufWriter), node-ws, uws (uWebSockets.js,
# the C++ uWebSockets core under Node, from the npm repack uws-pack). See
# benches/peers/README.md for what each is and why fastwebsockets appears twice.
# The summary gives each server's figures and the ratio starling/peer: Starling's
# figure divided by that server's (throughput: above 1 = Starling higher;
# latency: above 1 = Starling slower, below 1 = Starling faster).
# Raw JSON, logs, a summary and a README (machine, kernel, commands) go to
# benches/results/<date>-<hostname>/.
#
# usage: benches/compare.sh           full comparison (needs starling-loadgen)
#        benches/compare.sh --smoke   start, pin, check (peers/check.py) and stop
#                                     every server; no load generator needed
#
# Environment (defaults in brackets):
#   DURATION [10s]  ECHO_DURATION, FANOUT_DURATION [$DURATION]
#   ECHO_CONNS [64]  ECHO_DEPTH [64]  ECHO_SIZE [32]
#   FANOUT_CONNS [10000]  FANOUT_PUBLISHERS [1]  FANOUT_RATE [1000/s]  FANOUT_SIZE [64]
#   SERVERS ["starling tokio-tungstenite fastwebsockets fastwebsockets-buffered node-ws uws"]
#   SCENARIOS ["echo fanout"]
#   SERVER_CPU [1]  LOAD_CPU [0]  PORT_BASE [9101]  COOLDOWN [2] seconds between runs
#   LOAD_GRACE [120] seconds a load run may take beyond its duration (ramp-up, drain)
#   SKIP_BUILD [0]  RESULTS_DIR [benches/results/<date>-<hostname>]
#   STARLING_BIN, LOADGEN_BIN [target/release/starling, target/release/starling-loadgen]
# Quick run: DURATION=3s FANOUT_CONNS=2000 benches/compare.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS="$HERE/peers"

DURATION=${DURATION:-10s}
ECHO_DURATION=${ECHO_DURATION:-$DURATION}
FANOUT_DURATION=${FANOUT_DURATION:-$DURATION}
ECHO_CONNS=${ECHO_CONNS:-64}
ECHO_DEPTH=${ECHO_DEPTH:-64}
ECHO_SIZE=${ECHO_SIZE:-32}
FANOUT_CONNS=${FANOUT_CONNS:-10000}
FANOUT_PUBLISHERS=${FANOUT_PUBLISHERS:-1}
FANOUT_RATE=${FANOUT_RATE:-1000/s}
FANOUT_SIZE=${FANOUT_SIZE:-64}
KNOWN_SERVERS="starling tokio-tungstenite fastwebsockets fastwebsockets-buffered node-ws uws"
SERVERS=${SERVERS:-$KNOWN_SERVERS}
SCENARIOS=${SCENARIOS:-echo fanout}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PORT_BASE=${PORT_BASE:-9101}
COOLDOWN=${COOLDOWN:-2}
LOAD_GRACE=${LOAD_GRACE:-120}
SKIP_BUILD=${SKIP_BUILD:-0}
READY_TIMEOUT=15 # seconds a server may take to accept its first connection
STOP_GRACE=5     # seconds between SIGTERM and SIGKILL when a server is stopped

STARLING=${STARLING_BIN:-$ROOT/target/release/starling}
LOADGEN=${LOADGEN_BIN:-$ROOT/target/release/starling-loadgen}

SERVER_PID="" # the timeout(1) wrapping the running server; its child is the server
LOAD_PID=""
FAILED=0

die() {
	echo "compare.sh: $*" >&2
	exit 1
}
note() { echo "== $*" >&2; }
# Records a failed run (printed, and listed in the results README) and goes on.
fail() {
	echo "$*" >&2
	echo "$*" >>"$OUT/failures.txt"
	FAILED=1
}

# Kills only what this script started, by PID, whatever way the script ends.
cleanup() {
	local pid
	for pid in $LOAD_PID $SERVER_PID; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in $LOAD_PID $SERVER_PID; do
		wait "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Whole seconds in a duration written the loadgen's way: 10s, 500ms, 2m, or 10.
seconds() {
	local d=$1
	case $d in
	*ms) echo $(((${d%ms} + 999) / 1000)) ;;
	*s) echo "${d%s}" ;;
	*m) echo $((${d%m} * 60)) ;;
	*) echo "$d" ;;
	esac
}

# The command line that starts server $1 running app $2 on port $3, one word a line.
server_cmd() {
	local name=$1 app=$2 port=$3
	case $name in
	starling) printf '%s\n' "$STARLING" serve --listen "127.0.0.1:$port" --app "$app" --shards 1 ;;
	tokio-tungstenite)
		printf '%s\n' "$PEERS/target/release/peer-tokio-tungstenite" --listen "127.0.0.1:$port" --app "$app"
		;;
	fastwebsockets | fastwebsockets-buffered)
		# One binary, two write modes; the mode is always spelled out so the
		# commands in the results README say which one ran.
		local writes=direct
		if [[ $name == fastwebsockets-buffered ]]; then writes=buffered; fi
		printf '%s\n' "$PEERS/target/release/peer-fastwebsockets" --listen "127.0.0.1:$port" --app "$app" \
			--writes "$writes"
		;;
	node-ws) printf '%s\n' node "$PEERS/node/server.js" --port "$port" --app "$app" ;;
	uws) printf '%s\n' node "$PEERS/node/uws-server.mjs" --port "$port" --app "$app" ;;
	esac
}

# The load generator's command line for scenario $1 against port $2, writing JSON to $3.
load_cmd() {
	local scenario=$1 port=$2 json=$3
	case $scenario in
	echo)
		printf '%s\n' "$LOADGEN" echo "ws://127.0.0.1:$port/" --connections "$ECHO_CONNS" \
			--depth "$ECHO_DEPTH" --size "$ECHO_SIZE" --duration "$ECHO_DURATION" --json "$json"
		;;
	fanout)
		printf '%s\n' "$LOADGEN" fanout "ws://127.0.0.1:$port/" --connections "$FANOUT_CONNS" \
			--publishers "$FANOUT_PUBLISHERS" --rate "$FANOUT_RATE" --size "$FANOUT_SIZE" \
			--duration "$FANOUT_DURATION" --json "$json"
		;;
	esac
}

app_for() { if [[ $1 == fanout ]]; then echo broadcast; else echo echo; fi; }

# Starts server $1 (app $2, port $3, log $4) pinned to SERVER_CPU and waits until
# its port accepts. The timeout(1) around it bounds its life even if this script
# is killed outright; TERM to the timeout is passed on to the server.
start_server() {
	local name=$1 app=$2 port=$3 log=$4 life=$5
	local -a cmd
	mapfile -t cmd < <(server_cmd "$name" "$app" "$port")
	if [[ ! -x ${cmd[0]} ]] && ! command -v "${cmd[0]}" >/dev/null; then
		fail "$name: ${cmd[0]} not found (was the build skipped?)"
		return 1
	fi
	echo "taskset -c $SERVER_CPU ${cmd[*]}" >>"$OUT/commands.txt"
	timeout --kill-after="$STOP_GRACE" "$life" taskset -c "$SERVER_CPU" "${cmd[@]}" >"$log" 2>&1 &
	SERVER_PID=$!
	local deadline=$((SECONDS + READY_TIMEOUT))
	until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			wait "$SERVER_PID" 2>/dev/null || true
			SERVER_PID=""
			fail "$name --app $app: exited before accepting on port $port (log: ${log##*/})"
			tail -n 5 "$log" >&2
			return 1
		fi
		if ((SECONDS >= deadline)); then
			fail "$name --app $app: port $port not accepting after ${READY_TIMEOUT}s"
			stop_server
			return 1
		fi
		sleep 0.1
	done
}

# The server itself: the one child of the timeout(1) wrapper.
server_child() { pgrep -P "$SERVER_PID" | head -n 1; }

# CPU affinity of every thread of the running server, as "tid:list" words.
server_affinity() {
	local child t
	child=$(server_child)
	[[ -n $child ]] || return 0
	for t in /proc/"$child"/task/*; do
		printf '%s:%s ' "${t##*/}" "$(taskset -cp "${t##*/}" 2>/dev/null | awk '{print $NF}')"
	done
}

# Stops the running server: SIGTERM by PID, and timeout(1) sends SIGKILL if it
# has not exited STOP_GRACE seconds later.
stop_server() {
	[[ -n $SERVER_PID ]] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
}

build() {
	# The node peers are installed either way: SKIP_BUILD only skips compiling.
	if [[ ! -d $PEERS/node/node_modules/ws || ! -d $PEERS/node/node_modules/uws-pack ]]; then
		note "installing node ws and uws-pack (npm ci)"
		(cd "$PEERS/node" && timeout 600 npm ci --no-audit --no-fund)
	fi
	if [[ $SKIP_BUILD == 1 ]]; then
		note "SKIP_BUILD=1: using existing binaries"
		return
	fi
	note "building starling and starling-loadgen (release)"
	(cd "$ROOT" && timeout 3600 cargo build --release -p starling -p starling-loadgen)
	note "building the peers (release, own workspace and target dir)"
	(cd "$PEERS" && timeout 3600 cargo build --release --target-dir "$PEERS/target")
}

preflight() {
	local c
	for c in taskset timeout python3 node pgrep sysctl; do
		command -v "$c" >/dev/null || die "$c not found"
	done
	for c in $SERVERS; do
		[[ " $KNOWN_SERVERS " == *" $c "* ]] || die "unknown server '$c' (known: $KNOWN_SERVERS)"
	done
	for c in $SCENARIOS; do
		[[ $c == echo || $c == fanout ]] || die "unknown scenario '$c' (known: echo fanout)"
	done
	local cpus
	cpus=$(nproc --all)
	((SERVER_CPU < cpus && LOAD_CPU < cpus)) || die "needs CPUs $SERVER_CPU and $LOAD_CPU; this machine has $cpus"
	[[ $SERVER_CPU != "$LOAD_CPU" ]] || die "SERVER_CPU and LOAD_CPU must differ"

	# The fan-out loader holds FANOUT_CONNS sockets and so does the server.
	local need=$((FANOUT_CONNS + 1024)) hard
	hard=$(ulimit -Hn)
	if [[ $hard != unlimited ]] && ((hard < need)); then
		die "open-file hard limit $hard < $need needed for FANOUT_CONNS=$FANOUT_CONNS (see sysctl/apply.sh)"
	fi
	if [[ $(ulimit -Sn) != unlimited ]] && (($(ulimit -Sn) < need)); then
		ulimit -Sn "$hard"
		note "raised open-file soft limit to $(ulimit -Sn)"
	fi

	# Each run leaves its client sockets in TIME_WAIT; the next server needs fresh
	# ephemeral ports. Widen the range if it cannot hold a few runs' worth.
	local lo hi
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
	if ((hi - lo + 1 < 3 * FANOUT_CONNS)); then
		# The floor stays above PORT_BASE's range so no listener port is handed out.
		if sysctl -q -w net.ipv4.ip_local_port_range="10000 65535"; then
			note "net.ipv4.ip_local_port_range: $lo $hi -> $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)"
		else
			note "warning: could not widen net.ipv4.ip_local_port_range ($lo $hi); needs root"
		fi
	fi
}

# Fails clearly when the load generator is absent or does not know the scenarios.
check_loadgen() {
	[[ -x $LOADGEN ]] || die "load generator not found at $LOADGEN
  build it: (cd $ROOT && cargo build --release -p starling-loadgen)"
	local help
	help=$("$LOADGEN" --help 2>&1 || true)
	local s
	for s in $SCENARIOS; do
		grep -qw -- "$s" <<<"$help" ||
			die "$LOADGEN does not list the '$s' scenario in --help; is it built from a current checkout?"
	done
}

# One load run of scenario $1 against server $2.
run_one() {
	local scenario=$1 name=$2 port=$3
	local app json dur life
	app=$(app_for "$scenario")
	json="$OUT/$scenario-$name.json"
	rm -f "$json"
	dur=$(seconds "$(if [[ $scenario == echo ]]; then echo "$ECHO_DURATION"; else echo "$FANOUT_DURATION"; fi)")
	life=$((dur + LOAD_GRACE + 60))
	note "$scenario / $name: server on CPU $SERVER_CPU port $port, load on CPU $LOAD_CPU"
	if ! start_server "$name" "$app" "$port" "$OUT/$scenario-$name.server.log" "$life"; then
		return
	fi
	echo "  server threads (tid:cpus): $(server_affinity)" >&2
	local -a cmd
	mapfile -t cmd < <(load_cmd "$scenario" "$port" "$json")
	echo "taskset -c $LOAD_CPU ${cmd[*]}" >>"$OUT/commands.txt"
	local rc=0
	timeout --kill-after=10 $((dur + LOAD_GRACE)) taskset -c "$LOAD_CPU" "${cmd[@]}" \
		>"$OUT/$scenario-$name.loadgen.log" 2>&1 &
	LOAD_PID=$!
	wait "$LOAD_PID" || rc=$?
	LOAD_PID=""
	if ! kill -0 "$SERVER_PID" 2>/dev/null; then
		fail "$scenario / $name: server died during the run (log: $scenario-$name.server.log)"
	fi
	stop_server
	if ((rc != 0)) || [[ ! -s $json ]]; then
		fail "$scenario / $name: load generator failed (status $rc, json $([[ -s $json ]] && echo present || echo missing); log: $scenario-$name.loadgen.log)"
		tail -n 5 "$OUT/$scenario-$name.loadgen.log" >&2
	fi
	sleep "$COOLDOWN"
}

# Starts each server in each app, checks it with three clients, and stops it.
smoke() {
	local name app port i=0 check_rc
	for name in $SERVERS; do
		for app in echo broadcast; do
			port=$((PORT_BASE + i))
			i=$((i + 1))
			if ! start_server "$name" "$app" "$port" "$OUT/smoke-$app-$name.server.log" 120; then
				continue
			fi
			check_rc=0
			timeout 60 python3 "$PEERS/check.py" --url "ws://127.0.0.1:$port/" --app "$app" \
				>"$OUT/smoke-$app-$name.check.log" 2>&1 || check_rc=$?
			local aff
			aff=$(server_affinity)
			stop_server
			if ((check_rc == 0)); then
				printf 'PASS %-23s %-9s pid-threads:cpus %s\n' "$name" "$app" "$aff"
			else
				fail "$(printf 'FAIL %-23s %-9s (check status %s, see %s)' "$name" "$app" "$check_rc" \
					"$OUT/smoke-$app-$name.check.log")"
			fi
		done
	done
}

machine_readme() {
	{
		echo "# Comparison run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo
		echo "Starling against its reference peers (benches/peers/README.md), produced by"
		echo "\`benches/compare.sh\`. Every server runs on one core (CPU $SERVER_CPU, \`taskset\`),"
		echo "the load generator on another (CPU $LOAD_CPU); one server runs at a time."
		echo
		echo "## Machine"
		echo
		echo '```'
		echo "uname -a:  $(uname -a)"
		echo "kernel:    $(uname -r)"
		echo "cpu:       $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)"
		echo "cpus:      $(nproc --all)"
		echo "memory:    $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
		echo "nofile:    $(ulimit -Sn) (soft) / $(ulimit -Hn) (hard)"
		echo "ports:     $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)"
		echo "somaxconn: $(cat /proc/sys/net/core/somaxconn)"
		echo "rustc:     $(rustc --version 2>/dev/null || echo '?')"
		echo "node:      $(node --version)"
		echo "git:       $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
		echo '```'
		echo
		echo "## Peer versions"
		echo
		echo '```'
		awk '/^name = / {n=$3} /^version = / && n ~ /"(tokio|tokio-tungstenite|tungstenite|fastwebsockets|hyper)"/ {print n, $3; n=""}' \
			"$PEERS/Cargo.lock" | tr -d '"'
		echo "ws $(node -p "require('$PEERS/node/node_modules/ws/package.json').version" 2>/dev/null || echo '?')"
		echo '```'
		echo
		echo "## Settings"
		echo
		echo '```'
		echo "ECHO:   connections=$ECHO_CONNS depth=$ECHO_DEPTH size=$ECHO_SIZE duration=$ECHO_DURATION"
		echo "FANOUT: connections=$FANOUT_CONNS publishers=$FANOUT_PUBLISHERS rate=$FANOUT_RATE size=$FANOUT_SIZE duration=$FANOUT_DURATION"
		echo '```'
		echo
		echo "## Commands, in the order run"
		echo
		echo '```'
		sed "s|$ROOT/||g" "$OUT/commands.txt"
		echo '```'
		echo
		echo "## Results"
		echo
		echo "Raw load-generator output: \`<scenario>-<server>.json\`; logs beside it."
		echo "\`fastwebsockets\` is that crate used as its examples use it (\`--writes direct\`:"
		echo "one write per frame); \`fastwebsockets-buffered\` is the same crate with its frames"
		echo "batched behind a \`BufWriter\` and flushed when nothing more is ready (\`--writes"
		echo "buffered\`). See benches/peers/README.md."
		echo
		cat "$OUT/summary.md"
		if [[ -s $OUT/failures.txt ]]; then
			echo
			echo "## Failed runs"
			echo
			sed 's/^/- /' "$OUT/failures.txt"
		fi
	} >"$OUT/README.md"
}

# Reads the JSON files and writes summary.md (printed too) and summary.json.
summarize() {
	python3 - "$OUT" "$SERVERS" "$SCENARIOS" <<'PY'
import json, os, sys

out, servers, scenarios = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def load(scenario, server):
    try:
        with open(os.path.join(out, f"{scenario}-{server}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(doc, path):
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc

COLUMNS = {
    "echo": [("messages_per_sec", "msg/s", True), ("latency_us.p50", "p50 µs", False),
             ("latency_us.p99", "p99 µs", True)],
    "fanout": [("deliveries_per_sec", "deliveries/s", True), ("latency_us.p99", "p99 µs", True),
               ("gaps", "gaps", False), ("duplicates", "dup", False), ("reordered", "reord", False)],
}

def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)

# The direction of every ratio, stated once above the tables (they are printed too).
RATIO_NOTE = ("Ratios are starling/peer: Starling's figure divided by that server's. "
              "Throughput (msg/s, deliveries/s): above 1 means Starling moved more. "
              "Latency (µs): above 1 means Starling was slower, below 1 faster.")

summary, lines = {"ratio": RATIO_NOTE}, [RATIO_NOTE, ""]
for scenario in scenarios:
    cols = COLUMNS[scenario]
    base = load(scenario, "starling")
    head = ["server"]
    for path, label, ratio in cols:
        head.append(label)
        if ratio:
            head.append(f"{label} starling/peer")
    lines += [f"### {scenario}", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    summary[scenario] = {}
    for server in servers:
        doc = load(scenario, server)
        row, figures = [server], {}
        for path, label, ratio in cols:
            v = get(doc, path)
            figures[path] = v
            row.append(fmt(v))
            if ratio:
                b = get(base, path)
                r = b / v if isinstance(v, (int, float)) and isinstance(b, (int, float)) and v else None
                figures[path + ".starling_over_peer"] = r
                row.append("—" if r is None else f"{r:.2f}×")
        if doc is None:
            row[1] = "failed"
        summary[scenario][server] = figures
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

with open(os.path.join(out, "summary.md"), "w") as f:
    f.write("\n".join(lines))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print("\n".join(lines))
PY
}

main() {
	local mode=full
	case ${1:-} in
	"") ;;
	--smoke) mode=smoke ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		return 0
		;;
	*) die "unknown argument '$1' (try --help)" ;;
	esac

	preflight
	build
	if [[ $mode == smoke ]]; then
		OUT=${RESULTS_DIR:-$(mktemp -d /tmp/compare-smoke.XXXXXX)}
		mkdir -p "$OUT"
		: >"$OUT/commands.txt"
		rm -f "$OUT/failures.txt"
		note "smoke: logs in $OUT"
		smoke
		return "$FAILED"
	fi

	check_loadgen
	OUT=${RESULTS_DIR:-$HERE/results/$(date +%F)-$(hostname -s)}
	mkdir -p "$OUT"
	: >"$OUT/commands.txt"
	rm -f "$OUT/failures.txt"
	note "results in $OUT"
	local scenario name i=0
	for scenario in $SCENARIOS; do
		for name in $SERVERS; do
			# A port per run, so one run's TIME_WAIT sockets never meet the next one's.
			run_one "$scenario" "$name" $((PORT_BASE + i))
			i=$((i + 1))
		done
	done
	summarize
	machine_readme
	note "wrote $OUT/README.md"
	return "$FAILED"
}

main "$@"
