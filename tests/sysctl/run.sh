#!/usr/bin/env bash
# Tests for sysctl/check and sysctl/tune, entirely against fake /proc, /sys, /run and /etc
# trees in a temporary directory: nothing on the machine is read for a verdict or written.
#
#   tests/sysctl/run.sh
#
# Installs shellcheck from apt when it is missing (needs root), lints every script, then
# checks: LOW/OK rows and exit codes of `check` (text and --json), `tune --dry-run` output,
# `tune` applied into a temporary root, its idempotence, `--revert` restoring the tree byte for
# byte, and a knob the kernel refuses. Exits non-zero on any failure and names each one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHECK="$REPO/sysctl/check"
TUNE="$REPO/sysctl/tune"

PASSED=0
FAILED=0
FAILURES=()

pass() { PASSED=$((PASSED + 1)); }
fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$1")
    printf 'FAIL: %s\n' "$1" >&2
}
# assert DESCRIPTION COMMAND...: passes when COMMAND succeeds.
assert() {
    local what="$1"
    shift
    if "$@"; then pass; else fail "$what"; fi
}
# assert_eq DESCRIPTION EXPECTED ACTUAL
assert_eq() {
    if [[ "$2" == "$3" ]]; then pass; else fail "$1: expected '$2', got '$3'"; fi
}
# assert_contains DESCRIPTION HAYSTACK NEEDLE
assert_contains() {
    if [[ "$2" == *"$3"* ]]; then pass; else fail "$1: output lacks '$3'"; fi
}

TMP="$(mktemp -d)"
IMMUTABLE=""
cleanup() {
    [[ -z "$IMMUTABLE" ]] || chattr -i "$IMMUTABLE" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
chmod 0755 "$TMP" # the non-root test reads it as nobody

# ---- lint ----------------------------------------------------------------------------------

if ! command -v shellcheck >/dev/null 2>&1; then
    printf 'installing shellcheck from apt\n'
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
for script in "$REPO/sysctl/check" "$REPO/sysctl/tune" "$REPO/sysctl/lib.sh" "$REPO/tests/sysctl/run.sh"; do
    if (cd "$REPO" && shellcheck -x "${script#"$REPO"/}"); then pass; else fail "shellcheck ${script#"$REPO"/}"; fi
done
assert "sysctl/measure-kmem compiles" python3 -c \
    'import ast, sys; ast.parse(open(sys.argv[1]).read())' "$REPO/sysctl/measure-kmem"
for script in "$CHECK" "$TUNE" "$REPO/sysctl/measure-kmem"; do
    assert "${script#"$REPO"/} is executable" test -x "$script"
done
for script in "$CHECK" "$TUNE" "$REPO/tests/sysctl/run.sh"; do
    assert "${script#"$REPO"/} uses set -euo pipefail" grep -q '^set -euo pipefail$' "$script"
done

# ---- fake trees ----------------------------------------------------------------------------

# knob ROOT KEY VALUE: a /proc/sys file as the kernel prints it (tabs between fields).
knob() {
    local path="$1/proc/sys/${2//.//}"
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "${3// /$'\t'}" >"$path"
}

# make_tree ROOT low|ok: a /proc, /sys and /run tree with every limit too low, or sufficient
# for 1,000,000 connections, role both, 20 source addresses.
make_tree() {
    local root="$1" kind="$2" soft hard cap systemd_limit
    mkdir -p "$root/proc/self" "$root/sys" "$root/run/systemd/system"
    if [[ "$kind" == low ]]; then
        soft=1024 hard=4096 cap=0000000000000000 systemd_limit=4096
        knob "$root" fs.file-max 100000
        knob "$root" fs.nr_open 1048576
        knob "$root" net.ipv4.ip_local_port_range "32768 60999"
        knob "$root" net.core.somaxconn 128
        knob "$root" net.ipv4.tcp_max_syn_backlog 512
        knob "$root" net.ipv4.tcp_syncookies 0
        knob "$root" net.core.netdev_max_backlog 1000
        knob "$root" net.ipv4.tcp_mem "1000 2000 3000"
        knob "$root" net.ipv4.tcp_rmem "4096 131072 6291456"
        knob "$root" net.ipv4.tcp_wmem "4096 16384 4194304"
        knob "$root" net.netfilter.nf_conntrack_max 65536
        printf 'MemTotal:        4194304 kB\nMemFree:         1000000 kB\n' >"$root/proc/meminfo"
    else
        soft=1048576 hard=1048576 cap=000001ffffffffff systemd_limit=1048576
        knob "$root" fs.file-max 9223372036854775807
        knob "$root" fs.nr_open 1048576
        knob "$root" net.ipv4.ip_local_port_range "1024 65535"
        knob "$root" net.core.somaxconn 4096
        knob "$root" net.ipv4.tcp_max_syn_backlog 4096
        knob "$root" net.core.netdev_max_backlog 16384
        knob "$root" net.ipv4.tcp_mem "3000000 4000000 6000000"
        knob "$root" net.ipv4.tcp_rmem "4096 16384 1048576"
        knob "$root" net.ipv4.tcp_wmem "4096 16384 1048576"
        knob "$root" net.netfilter.nf_conntrack_max 1250000
        printf 'MemTotal:       67108864 kB\nMemFree:        60000000 kB\n' >"$root/proc/meminfo"
    fi
    {
        printf '%-25s %-20s %-20s %-10s\n' Limit 'Soft Limit' 'Hard Limit' Units
        printf '%-25s %-20s %-20s %-10s\n' 'Max cpu time' unlimited unlimited seconds
        printf '%-25s %-20s %-20s %-10s\n' 'Max open files' "$soft" "$hard" files
        printf '%-25s %-20s %-20s %-10s\n' 'Max locked memory' 8388608 8388608 bytes
    } >"$root/proc/self/limits"
    printf 'Name:\tbash\nCapInh:\t0000000000000000\nCapEff:\t%s\n' "$cap" >"$root/proc/self/status"
    {
        printf 'slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\n'
        printf '%s 26 26 %s 13 8 : tunables 0 0 0 : slabdata 2 2 0\n' \
            TCP 2368 sock_inode_cache 832 filp 192 dentry 192 eventpoll_epi 128
    } >"$root/proc/slabinfo"
    # A systemctl that answers `show -p LimitNOFILE starling` and records daemon-reload.
    cat >"$root/systemctl" <<EOF
#!/usr/bin/env bash
case "\$1" in
    show) printf 'LimitNOFILE=%s\n' "$systemd_limit" ;;
    daemon-reload) printf 'reload\n' >>"$root/reloads" ;;
esac
EOF
    chmod +x "$root/systemctl"
}

# run_check ROOT ARGS...: sets OUT and RC.
run_check() {
    local root="$1"
    shift
    RC=0
    OUT="$(STARLING_SYSROOT="$root" STARLING_SYSTEMCTL="$root/systemctl" STARLING_PAGE_SIZE=4096 \
        "$CHECK" "$@" 2>&1)" || RC=$?
}

# run_tune SYSROOT ETCROOT ARGS...: sets OUT and RC.
run_tune() {
    local sys="$1" etc="$2"
    shift 2
    RC=0
    OUT="$(STARLING_SYSROOT="$sys" STARLING_ROOT="$etc" STARLING_SYSTEMCTL="$sys/systemctl" \
        STARLING_PAGE_SIZE=4096 "$TUNE" "$@" 2>&1)" || RC=$?
}

# text_status NAME: the STATUS column of the table row NAME in $OUT.
text_status() {
    local line
    line="$(grep -F -- "$1 " <<<"$OUT" | head -n 1)" || true
    line="${line#"$1"}"
    grep -oE ' (OK|LOW|INFO|N/A|UNKNOWN) ' <<<"$line" | head -n 1 | tr -d ' ' || true
}

# json_statuses: "name=status" per line from --json output in $OUT.
json_statuses() {
    python3 -c 'import json, sys
doc = json.load(sys.stdin)
for row in doc["limits"]:
    print(row["name"] + "=" + row["status"])
print("ok=" + str(doc["ok"]).lower())' <<<"$OUT"
}

# ---- check: every limit low ------------------------------------------------------------------

LOW="$TMP/low"
OKT="$TMP/ok"
make_tree "$LOW" low
make_tree "$OKT" ok

run_check "$LOW" --connections 1000000 --sources 20
assert_eq "check on the low tree exits 1" 1 "$RC"
for name in "nofile.soft (this shell)" "nofile.hard (this shell)" "systemd starling LimitNOFILE" \
    CAP_SYS_RESOURCE fs.file-max net.ipv4.ip_local_port_range net.core.somaxconn \
    net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog net.netfilter.nf_conntrack_max \
    net.ipv4.tcp_mem "memory (kernel, 2000000 sockets)"; do
    assert_eq "low tree: $name" LOW "$(text_status "$name")"
done
assert_eq "low tree: fs.nr_open 1048576 admits 1001024" OK "$(text_status fs.nr_open)"
assert_eq "low tree: tcp_rmem is informational" INFO "$(text_status net.ipv4.tcp_rmem)"
assert_contains "low tree: somaxconn fix" "$OUT" "sysctl -w net.core.somaxconn=4096"
assert_contains "low tree: port range fix for 50000 ports" "$OUT" 'net.ipv4.ip_local_port_range="15536 65535"'
assert_contains "low tree: tcp_mem need in pages" "$OUT" "max >= 2000000 pages (7.6 GiB)"
assert_contains "low tree: per-socket estimate from slabinfo" "$OUT" \
    "~4812 B (/proc/slabinfo: TCP 2368 + sock_inode_cache 832 + filp 192 + dentry 192 + eventpoll_epi 128 + 1100 other"
assert_contains "low tree: user-space line" "$OUT" "engine user-space bytes/connection: ~165 B measured"
assert_contains "low tree: verdict" "$OUT" "result: LOW"

run_check "$LOW" --connections 1000000 --sources 20 --json
assert_eq "check --json on the low tree exits 1" 1 "$RC"
assert "check --json on the low tree is valid JSON" python3 -m json.tool <<<"$OUT" >/dev/null
STATUSES="$(json_statuses)"
for pair in "fs.file-max=LOW" "fs.nr_open=OK" "net.core.somaxconn=LOW" "net.ipv4.tcp_mem=LOW" \
    "net.ipv4.ip_local_port_range=LOW" "CAP_SYS_RESOURCE=LOW" "net.ipv4.tcp_wmem=INFO" "ok=false"; do
    assert_contains "low tree json" "$STATUSES" "$pair"
done

# ---- check: every limit sufficient -------------------------------------------------------------

run_check "$OKT" --connections 1000000 --sources 20
assert_eq "check on the sufficient tree exits 0" 0 "$RC"
assert "sufficient tree: no LOW row" test "$(grep -c ' LOW ' <<<"$OUT" || true)" -eq 0
for name in "nofile.soft (this shell)" "nofile.hard (this shell)" "systemd starling LimitNOFILE" \
    CAP_SYS_RESOURCE fs.file-max fs.nr_open net.ipv4.ip_local_port_range net.core.somaxconn \
    net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog net.netfilter.nf_conntrack_max \
    net.ipv4.tcp_mem "memory (kernel, 2000000 sockets)"; do
    assert_eq "sufficient tree: $name" OK "$(text_status "$name")"
done
assert_contains "sufficient tree: verdict" "$OUT" "result: OK"

run_check "$OKT" --connections 1000000 --sources 20 --json
assert_eq "check --json on the sufficient tree exits 0" 0 "$RC"
assert "check --json on the sufficient tree is valid JSON" python3 -m json.tool <<<"$OUT" >/dev/null
STATUSES="$(json_statuses)"
assert_contains "sufficient tree json: ok" "$STATUSES" "ok=true"
assert "sufficient tree json: no LOW" test "$(grep -c '=LOW$' <<<"$STATUSES" || true)" -eq 0

# One source address cannot hold a million ports however wide the range.
run_check "$OKT" --connections 1000000 --sources 1
assert_eq "one source for 1M connections exits 1" 1 "$RC"
assert_eq "one source: port range LOW" LOW "$(text_status net.ipv4.ip_local_port_range)"
assert_contains "one source: says how many sources" "$OUT" "use --sources 16 or more"

# 20,000 connections fit the default range (28232 ports) but pass its half, where connect()
# starts scanning used ports: OK, plus an INFO row naming the range that keeps it fast.
run_check "$LOW" --connections 20000 --role client
assert_eq "20k from one source: port range OK" OK "$(text_status net.ipv4.ip_local_port_range)"
assert_eq "20k from one source: connect-rate row" INFO "$(text_status "connect() rate (port range)")"
assert_contains "20k from one source: fast range named" "$OUT" 'ip_local_port_range="25536 65535"'
run_check "$LOW" --connections 14000 --role client
assert "14k from one source: no connect-rate row" test "$(grep -c 'connect() rate' <<<"$OUT" || true)" -eq 0

# Roles select rows: the server has no ephemeral ports to spend, the client no accept queue.
run_check "$OKT" --connections 1000000 --role server
assert_eq "role server exits 0 (no port row)" 0 "$RC"
assert "role server: no port-range row" test "$(grep -c ip_local_port_range <<<"$OUT" || true)" -eq 0
run_check "$OKT" --connections 1000000 --sources 20 --role client
assert "role client: no somaxconn row" test "$(grep -c somaxconn <<<"$OUT" || true)" -eq 0
assert "role client: no systemd row" test "$(grep -c 'systemd starling' <<<"$OUT" || true)" -eq 0

# Absent conntrack and systemd are N/A, not failures; an unreadable knob is a failure.
VAR="$TMP/variant"
make_tree "$VAR" ok
rm -r "$VAR/proc/sys/net/netfilter" "$VAR/run/systemd"
run_check "$VAR" --connections 1000000 --sources 20
assert_eq "no conntrack, no systemd: exit 0" 0 "$RC"
assert_eq "no conntrack: N/A" N/A "$(text_status net.netfilter.nf_conntrack_max)"
assert_eq "no systemd: N/A" N/A "$(text_status "systemd starling LimitNOFILE")"
rm "$VAR/proc/sys/net/core/somaxconn"
run_check "$VAR" --connections 1000000 --sources 20
assert_eq "unreadable somaxconn: exit 1" 1 "$RC"
assert_eq "unreadable somaxconn: UNKNOWN" UNKNOWN "$(text_status net.core.somaxconn)"

# With syncookies on, the SYN queue limit is not consulted, so a small one is fine.
knob "$VAR" net.ipv4.tcp_max_syn_backlog 512
knob "$VAR" net.ipv4.tcp_syncookies 1
knob "$VAR" net.core.somaxconn 4096
run_check "$VAR" --connections 1000000 --sources 20
assert_eq "syncookies on: small syn backlog OK" OK "$(text_status net.ipv4.tcp_max_syn_backlog)"
assert_contains "syncookies on: says why" "$OUT" "(tcp_syncookies=1: not consulted)"
knob "$VAR" net.ipv4.tcp_syncookies 0
run_check "$VAR" --connections 1000000 --sources 20
assert_eq "syncookies off: small syn backlog LOW" LOW "$(text_status net.ipv4.tcp_max_syn_backlog)"

# Without CAP_SYS_RESOURCE a sufficient hard limit is still fine; an insufficient one is not.
sed -i 's/^CapEff:.*/CapEff:\t0000000000000000/' "$VAR/proc/self/status"
run_check "$VAR" --connections 1000000
assert_eq "no CAP_SYS_RESOURCE, hard limit enough: OK" OK "$(text_status CAP_SYS_RESOURCE)"
run_check "$VAR" --connections 2000000
assert_eq "no CAP_SYS_RESOURCE, hard limit short: LOW" LOW "$(text_status CAP_SYS_RESOURCE)"

run_check "$OKT" --connections nope
assert_eq "bad --connections exits 2" 2 "$RC"
run_check "$OKT" --bogus 1
assert_eq "unknown option exits 2" 2 "$RC"

# ---- tune: dry run ---------------------------------------------------------------------------

TUNE_ARGS=(--connections 1000000 --sources 20)
SYS="$TMP/tune-sys"
ETC="$TMP/tune-etc"
make_tree "$SYS" low
mkdir -p "$ETC/etc/sysctl.d" "$ETC/etc/security/limits.d"
printf 'root soft nofile 65536\n' >"$ETC/etc/security/limits.d/60-starling.conf" # not ours
printf 'kernel.panic = 10\n' >"$ETC/etc/sysctl.d/10-local.conf"
SNAP_BEFORE="$TMP/snap-before"
cp -a "$TMP/tune-sys" "$SNAP_BEFORE-sys"
cp -a "$TMP/tune-etc" "$SNAP_BEFORE-etc"

run_tune "$SYS" "$ETC" "${TUNE_ARGS[@]}" --dry-run
assert_eq "tune --dry-run exits 0" 0 "$RC"
assert_contains "dry run: sysctl.d file" "$OUT" "would write $ETC/etc/sysctl.d/60-starling.conf:"
assert_contains "dry run: limits.d file" "$OUT" "would write $ETC/etc/security/limits.d/60-starling.conf:"
assert_contains "dry run: systemd drop-in" "$OUT" \
    "would write $ETC/etc/systemd/system/starling.service.d/limits.conf:"
assert_contains "dry run: drop-in content" "$OUT" "LimitNOFILE=1048576"
assert_contains "dry run: sysctl.d content" "$OUT" "net.core.somaxconn = 4096"
assert_contains "dry run: limits.d content" "$OUT" "*      hard  nofile 1048576"
assert_contains "dry run: before -> after" "$OUT" "fs.file-max                      100000 -> 2065536"
assert "dry run writes nothing (/etc)" diff -r "$SNAP_BEFORE-etc" "$ETC"
assert "dry run writes nothing (/proc)" diff -r "$SNAP_BEFORE-sys" "$SYS"

# Without root: --dry-run works, a real run is refused.
if command -v setpriv >/dev/null 2>&1 && ((EUID == 0)); then
    AS_NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups env
        STARLING_SYSROOT="$SYS" STARLING_ROOT="$ETC" STARLING_SYSTEMCTL="$SYS/systemctl")
    RC=0
    OUT="$("${AS_NOBODY[@]}" "$TUNE" "${TUNE_ARGS[@]}" 2>&1)" || RC=$?
    assert_eq "tune without root is refused with exit 2" 2 "$RC"
    assert_contains "refusal names root" "$OUT" "needs root"
    RC=0
    OUT="$("${AS_NOBODY[@]}" "$TUNE" "${TUNE_ARGS[@]}" --dry-run 2>&1)" || RC=$?
    assert_eq "tune --dry-run without root exits 0" 0 "$RC"
else
    printf 'note: not root or no setpriv; the non-root refusal test is skipped\n'
fi

# ---- tune: apply, idempotence, revert ------------------------------------------------------

run_tune "$SYS" "$ETC" "${TUNE_ARGS[@]}"
assert_eq "tune exits 0" 0 "$RC"
SYSCTL_FILE="$ETC/etc/sysctl.d/60-starling.conf"
LIMITS_FILE="$ETC/etc/security/limits.d/60-starling.conf"
DROPIN_FILE="$ETC/etc/systemd/system/starling.service.d/limits.conf"
for f in "$SYSCTL_FILE" "$LIMITS_FILE" "$DROPIN_FILE" "$ETC/etc/starling/tune.state"; do
    assert "tune wrote ${f#"$ETC"}" test -s "$f"
done
EXPECTED_SYSCTL="fs.file-max = 2065536
net.ipv4.ip_local_port_range = 15536 65535
net.core.somaxconn = 4096
net.ipv4.tcp_max_syn_backlog = 4096
net.core.netdev_max_backlog = 16384
net.ipv4.tcp_mem = 1000 524288 786432
net.ipv4.tcp_rmem = 4096 16384 1048576
net.ipv4.tcp_wmem = 4096 16384 1048576
net.netfilter.nf_conntrack_max = 1250000"
assert_eq "sysctl.d file settings" "$EXPECTED_SYSCTL" "$(grep -v '^#' "$SYSCTL_FILE")"
assert_eq "limits.d file settings" "*      soft  nofile 1048576
*      hard  nofile 1048576
root   soft  nofile 1048576
root   hard  nofile 1048576" "$(grep -v '^#' "$LIMITS_FILE")"
assert_eq "drop-in settings" "[Service]
LimitNOFILE=1048576" "$(grep -v '^#' "$DROPIN_FILE")"
assert_eq "somaxconn applied" 4096 "$(cat "$SYS/proc/sys/net/core/somaxconn")"
assert_eq "tcp_mem applied, capped at 3/4 of 4 GiB" "1000 524288 786432" "$(cat "$SYS/proc/sys/net/ipv4/tcp_mem")"
assert_contains "tcp_mem cap is explained" "$OUT" "tcp_mem capped at 3/4 of RAM (786432 pages)"
assert_eq "nr_open untouched (already enough)" 1048576 "$(cat "$SYS/proc/sys/fs/nr_open")"
assert_contains "tune prints before -> after" "$OUT" "net.core.somaxconn               128 -> 4096"
assert "systemd reloaded after the drop-in changed" test -s "$SYS/reloads"
assert "no temporary files left" test -z "$(find "$ETC" -name '.*.tmp.*')"
assert_eq "the foreign limits.d file was saved" "root soft nofile 65536" \
    "$(cat "$ETC/etc/starling/backup/etc_security_limits.d_60-starling.conf")"

# What tune set satisfies check (nofile comes from the fake process, which tune cannot change).
run_check "$SYS" "${TUNE_ARGS[@]}" --json
STATUSES="$(json_statuses)"
for key in fs.file-max fs.nr_open net.ipv4.ip_local_port_range net.core.somaxconn \
    net.ipv4.tcp_max_syn_backlog net.core.netdev_max_backlog net.netfilter.nf_conntrack_max; do
    assert_contains "check after tune: $key" "$STATUSES" "$key=OK"
done

SNAP_AFTER="$TMP/snap-after"
cp -a "$SYS" "$SNAP_AFTER-sys"
cp -a "$ETC" "$SNAP_AFTER-etc"
run_tune "$SYS" "$ETC" "${TUNE_ARGS[@]}"
assert_eq "second tune exits 0" 0 "$RC"
assert_contains "second tune says unchanged" "$OUT" "unchanged: every file and value is already in place"
assert "second tune changes no file" diff -r "$SNAP_AFTER-etc" "$ETC"
assert "second tune changes no knob" diff -r --exclude=reloads "$SNAP_AFTER-sys" "$SYS"

run_tune "$SYS" "$ETC" "${TUNE_ARGS[@]}" --dry-run
assert_contains "dry run after tune: files unchanged" "$OUT" "would keep $SYSCTL_FILE (unchanged)"

run_tune "$SYS" "$ETC" --revert
assert_eq "tune --revert exits 0" 0 "$RC"
assert_contains "revert prints before -> after" "$OUT" "net.core.somaxconn               4096 -> 128"
assert "revert restores /etc exactly" diff -r "$SNAP_BEFORE-etc" "$ETC"
assert "revert restores /proc/sys exactly" diff -r --exclude=reloads "$SNAP_BEFORE-sys" "$SYS"
run_tune "$SYS" "$ETC" --revert
assert_contains "second revert has nothing to do" "$OUT" "nothing to revert"

# Changing the target between runs re-plans from the recorded originals; revert still restores.
run_tune "$SYS" "$ETC" --connections 1000000 --sources 20 --profile throughput
assert_eq "throughput profile exits 0" 0 "$RC"
assert_eq "throughput rmem raises fields" "4096 131072 33554432" \
    "$(tr '\t' ' ' <"$SYS/proc/sys/net/ipv4/tcp_rmem")"
assert_contains "throughput: tcp_mem capped at 3/4 of RAM" "$OUT" "tcp_mem capped at 3/4 of RAM"
run_tune "$SYS" "$ETC" --connections 5000 --role server
assert_eq "smaller server-only target exits 0" 0 "$RC"
assert_eq "port range no longer wanted: back to original" "$(cat "$SNAP_BEFORE-sys/proc/sys/net/ipv4/ip_local_port_range")" \
    "$(cat "$SYS/proc/sys/net/ipv4/ip_local_port_range")"
run_tune "$SYS" "$ETC" --revert
assert "revert after re-planning restores /etc" diff -r "$SNAP_BEFORE-etc" "$ETC"
assert "revert after re-planning restores /proc/sys" diff -r --exclude=reloads "$SNAP_BEFORE-sys" "$SYS"

# With RAM to spare, tcp_mem gets pressure at the need and max half again above it.
BIG_SYS="$TMP/big-sys"
make_tree "$BIG_SYS" low
sed -i 's/^MemTotal:.*/MemTotal:       67108864 kB/' "$BIG_SYS/proc/meminfo"
mkdir -p "$TMP/big-etc"
run_tune "$BIG_SYS" "$TMP/big-etc" "${TUNE_ARGS[@]}" --dry-run
assert_contains "uncapped tcp_mem" "$OUT" "net.ipv4.tcp_mem = 1000 2000000 3000000"

# ---- tune: a knob the kernel refuses -------------------------------------------------------

RO_SYS="$TMP/ro-sys"
RO_ETC="$TMP/ro-etc"
make_tree "$RO_SYS" low
mkdir -p "$RO_ETC"
sed -i 's/^CapEff:.*/CapEff:\t0000000000000000/' "$RO_SYS/proc/self/status"
RO_KNOB="$RO_SYS/proc/sys/net/core/somaxconn"
if chattr +i "$RO_KNOB" 2>/dev/null; then
    IMMUTABLE="$RO_KNOB"
    run_tune "$RO_SYS" "$RO_ETC" "${TUNE_ARGS[@]}"
    assert_eq "a refused knob makes tune exit 1" 1 "$RC"
    assert_contains "refused knob reported with the reason" "$OUT" \
        "net.core.somaxconn               NOT APPLIED (128 -> 4096): missing capability: writing /proc/sys needs CAP_SYS_ADMIN"
    assert_eq "the other knobs are still applied" 16384 "$(cat "$RO_SYS/proc/sys/net/core/netdev_max_backlog")"
    assert_contains "the file still lists the refused knob" "$(cat "$RO_ETC/etc/sysctl.d/60-starling.conf")" \
        "net.core.somaxconn = 4096"
    chattr -i "$RO_KNOB"
    IMMUTABLE=""
else
    printf 'note: chattr +i unsupported on %s; the refused-knob test is skipped\n' "$TMP"
fi

# The reasons tune gives, by the error the write got.
# shellcheck source=sysctl/lib.sh
source "$REPO/sysctl/lib.sh"
assert_contains "EROFS reason" "$(explain_write_error 'line 1: /proc/sys/net/core/somaxconn: Read-only file system')" \
    "read-only: /proc/sys is mounted read-only here (a container)"
assert_contains "EINVAL reason" "$(explain_write_error 'printf: write error: Invalid argument')" \
    "the kernel rejected the value"
assert_contains "absent knob reason" "$(explain_write_error 'x: No such file or directory')" \
    "not present in this kernel"

# ---- the shipped unit ------------------------------------------------------------------------

UNIT="$REPO/deploy/starling.service"
unit_value() { sed -n "s/^$1=//p" "$UNIT"; }
assert_eq "unit runs starling serve" "/usr/local/bin/starling serve" "$(unit_value ExecStart)"
assert_eq "unit LimitNOFILE" 1048576 "$(unit_value LimitNOFILE)"
assert_eq "unit restarts on failure" on-failure "$(unit_value Restart)"
assert_eq "unit stops with SIGTERM (the drain)" SIGTERM "$(unit_value KillSignal)"
assert "unit TimeoutStopSec outlasts the 30 s drain" test "$(unit_value TimeoutStopSec)" -gt 30
if command -v systemd-analyze >/dev/null 2>&1; then
    # The binary is not installed here; every other complaint is a failure.
    VERIFY="$(systemd-analyze verify "$UNIT" 2>&1 | grep -v 'is not executable' || true)"
    assert_eq "systemd-analyze verify" "" "$VERIFY"
fi

# ---- summary -------------------------------------------------------------------------------

printf '\nsysctl tests: %s passed, %s failed\n' "$PASSED" "$FAILED"
if ((FAILED)); then
    printf 'failed:\n'
    printf '  %s\n' "${FAILURES[@]}"
    exit 1
fi
