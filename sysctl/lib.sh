# shellcheck shell=bash
# shellcheck disable=SC2034 # the settings below are read by the scripts that source this
# Shared by sysctl/check and sysctl/tune: where the kernel's and the system's files are, how
# to read them, and what a target of N connections needs from each limit. Both scripts take
# every "needed" value from the functions here, so what `check` asks for is exactly what
# `tune` sets.
#
# Roots, so tests can use a fake tree and never touch the machine:
#   STARLING_SYSROOT  prefix for /proc, /sys and /run (default: empty = the real ones)
#   STARLING_ROOT     prefix for /etc (default: empty)
#   STARLING_SYSTEMCTL  the systemctl command (default: systemctl)
#   STARLING_PAGE_SIZE  page size in bytes (default: getconf PAGESIZE)

SYSROOT="${STARLING_SYSROOT:-}"
ETCROOT="${STARLING_ROOT:-}"
SYSTEMCTL="${STARLING_SYSTEMCTL:-systemctl}"

# Descriptors a process needs besides its connections: listeners, epoll, eventfds, stdio,
# log files, the admin API. 1024 is generous; the engine itself uses a few dozen.
FD_HEADROOM=1024
# The limit the shipped unit and limits.d file set when N connections fit under it: the
# usual kernel default of fs.nr_open, so nothing else has to move for up to ~1M connections.
NOFILE_FLOOR=1048576
# Descriptors the rest of the system uses, on top of the sockets, when sizing fs.file-max.
SYSTEM_FILES=65536
# Widest ephemeral range that leaves the well-known ports (< 1024) alone.
PORT_LOW_MIN=1024
PORT_HIGH=65535
# The engine's default listen backlog per shard (src/config.rs `backlog`).
DEFAULT_BACKLOG=4096
# Kernel bytes per idle socket that /proc/slabinfo's core caches do not show: LSM blobs,
# small kmallocs, slab slack, and a proc inode + dentry per descriptor once anything lists
# /proc/PID/fd (lsof, ss -p, monitoring agents). Measured with sysctl/measure-kmem; see
# sysctl/README.md.
KMEM_OTHER_BYTES=1100
# Whole per-socket estimate when /proc/slabinfo is unreadable (measured on Linux 6.18:
# 3.9 KB steady, 4.8 KB with the per-descriptor proc inode).
KMEM_FALLBACK_BYTES=4900
# Slab caches every socket holds one object of (epoll's item included: the engine
# registers every socket).
KMEM_CORE_CACHES="TCP sock_inode_cache filp dentry eventpoll_epi"

# die MESSAGE: usage or environment error; exit 2 so it is told apart from "limits LOW" (1).
die() {
    printf '%s: %s\n' "${0##*/}" "$1" >&2
    exit 2
}

# knob_path KEY: the /proc/sys file of a dotted sysctl key.
knob_path() {
    printf '%s/proc/sys/%s' "$SYSROOT" "${1//.//}"
}

# read_knob KEY: prints the value with runs of tabs/spaces squeezed to one space; fails when
# the knob does not exist (module not loaded, other kernel) or cannot be read.
read_knob() {
    local path raw
    path="$(knob_path "$1")"
    [[ -f "$path" && -r "$path" ]] || return 1
    raw="$(<"$path")" || return 1
    printf '%s' "$raw" | tr -s ' \t' '  '
}

# read_knob_raw KEY: the value exactly as the file holds it, without the final newline
# (tune records this form so --revert can put back the very same bytes).
read_knob_raw() {
    local path
    path="$(knob_path "$1")"
    [[ -f "$path" && -r "$path" ]] || return 1
    printf '%s' "$(<"$path")"
}

# squeeze VALUE: whitespace-normalised form used for comparisons.
squeeze() {
    printf '%s' "$1" | tr -s ' \t' '  '
}

# field VALUE INDEX: the INDEX-th (1-based) whitespace-separated field.
field() {
    local -a parts
    read -r -a parts <<<"$1"
    printf '%s' "${parts[$(($2 - 1))]:-}"
}

# Reads "Max open files" from <sysroot>/proc/self/limits into NOFILE_SOFT / NOFILE_HARD.
# /proc/self is the process reading it, i.e. this shell's limits, inherited from the caller.
# "unlimited" becomes the largest 64-bit value.
read_nofile() {
    local path="$SYSROOT/proc/self/limits" line
    local -a f
    NOFILE_SOFT=""
    NOFILE_HARD=""
    [[ -r "$path" ]] || return 1
    while IFS= read -r line; do
        [[ "$line" == "Max open files"* ]] || continue
        read -r -a f <<<"${line#Max open files}"
        NOFILE_SOFT="${f[0]}"
        NOFILE_HARD="${f[1]}"
    done <"$path"
    [[ "$NOFILE_SOFT" == unlimited ]] && NOFILE_SOFT=9223372036854775807
    [[ "$NOFILE_HARD" == unlimited ]] && NOFILE_HARD=9223372036854775807
    [[ -n "$NOFILE_SOFT" && -n "$NOFILE_HARD" ]]
}

# has_cap BIT: whether this process holds capability BIT in its effective set
# (CAP_SYS_ADMIN = 21, CAP_SYS_RESOURCE = 24; see capabilities(7)).
has_cap() {
    local path="$SYSROOT/proc/self/status" hex=""
    [[ -r "$path" ]] || return 1
    hex="$(sed -n 's/^CapEff:[[:space:]]*//p' "$path")"
    [[ "$hex" =~ ^[0-9a-fA-F]+$ ]] || return 1
    (((16#$hex >> $1) & 1))
}

# mem_total_bytes: MemTotal from <sysroot>/proc/meminfo.
mem_total_bytes() {
    local kib
    kib="$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB$/\1/p' "$SYSROOT/proc/meminfo" 2>/dev/null)"
    [[ -n "$kib" ]] || return 1
    printf '%s' "$((kib * 1024))"
}

page_size() {
    printf '%s' "${STARLING_PAGE_SIZE:-$(getconf PAGESIZE)}"
}

# systemd_present: systemd is PID 1 (the test its own tools use: sd_booted(3)).
systemd_present() {
    [[ -d "$SYSROOT/run/systemd/system" ]]
}

# conntrack_loaded: nf_conntrack is loaded, so every connection also needs a table entry.
conntrack_loaded() {
    [[ -e "$(knob_path net.netfilter.nf_conntrack_max)" ]]
}

# slab_objsize NAME: object size of one slab cache, from <sysroot>/proc/slabinfo.
slab_objsize() {
    awk -v n="$1" '$1 == n { print $4; found = 1; exit } END { if (!found) exit 1 }' \
        "$SYSROOT/proc/slabinfo" 2>/dev/null
}

# kmem_per_socket: estimate of kernel bytes an idle socket costs. Sets KMEM_BYTES and
# KMEM_SOURCE (a one-line account of where the number came from).
kmem_per_socket() {
    local cache size sum=0 account=""
    if [[ -r "$SYSROOT/proc/slabinfo" ]]; then
        for cache in $KMEM_CORE_CACHES; do
            if ! size="$(slab_objsize "$cache")"; then
                sum=""
                break
            fi
            sum=$((sum + size))
            account+="${account:+ + }$cache $size"
        done
        if [[ -n "$sum" ]]; then
            KMEM_BYTES=$((sum + KMEM_OTHER_BYTES))
            KMEM_SOURCE="/proc/slabinfo: $account + $KMEM_OTHER_BYTES other (sysctl/measure-kmem)"
            return
        fi
    fi
    KMEM_BYTES=$KMEM_FALLBACK_BYTES
    KMEM_SOURCE="/proc/slabinfo unreadable: $KMEM_FALLBACK_BYTES B measured on Linux 6.18 (sysctl/measure-kmem)"
}

# human BYTES: 1.5 GiB style.
human() {
    awk -v b="$1" 'BEGIN {
        split("B KiB MiB GiB TiB PiB", u, " "); i = 1
        while (b >= 1024 && i < 6) { b /= 1024; i++ }
        if (i == 1) printf "%d B", b; else printf "%.1f %s", b, u[i]
    }'
}

# explain_write_error MESSAGE: why a /proc/sys write failed, in terms of what to do about it.
explain_write_error() {
    case "$1" in
        *"Read-only file system"*)
            printf 'read-only: /proc/sys is mounted read-only here (a container); set it on the host or through the runtime (docker run --sysctl, Kubernetes sysctls)' ;;
        *"Permission denied"* | *"Operation not permitted"*)
            if has_cap 21; then
                printf 'refused in this namespace: only the host (initial namespace) may set it'
            else
                printf 'missing capability: writing /proc/sys needs CAP_SYS_ADMIN'
            fi
            ;;
        *"Invalid argument"*)
            printf 'the kernel rejected the value (above its maximum or out of order)' ;;
        *"No such file"*)
            printf 'not present in this kernel or network namespace' ;;
        *) printf 'could not write: %s' "${1##*: }" ;;
    esac
}

# write_knob KEY VALUE: sets WRITE_ERROR and fails when the kernel does not take it.
write_knob() {
    local err
    WRITE_ERROR=""
    if err="$({ printf '%s\n' "$2" >"$(knob_path "$1")"; } 2>&1)"; then
        return 0
    fi
    WRITE_ERROR="$(explain_write_error "$err")"
    return 1
}

# ---- what N connections need -------------------------------------------------------------

# Both scripts parse the same target options into these.
N=1000000
SOURCES=1
ROLE=both
PROFILE=density
BACKLOG=$DEFAULT_BACKLOG

# parse_target_option NAME VALUE: handles the options check and tune share; returns 1 for
# an option it does not know. Validates as it goes.
parse_target_option() {
    case "$1" in
        --connections)
            [[ "$2" =~ ^[1-9][0-9]{0,8}$ ]] || die "--connections wants 1..999999999, got '$2'"
            N="$2"
            ;;
        --sources)
            [[ "$2" =~ ^[1-9][0-9]{0,5}$ ]] || die "--sources wants a positive number, got '$2'"
            SOURCES="$2"
            ;;
        --role)
            [[ "$2" =~ ^(server|client|both)$ ]] || die "--role wants server, client or both"
            ROLE="$2"
            ;;
        --profile)
            [[ "$2" =~ ^(density|throughput)$ ]] || die "--profile wants density or throughput"
            PROFILE="$2"
            ;;
        --backlog)
            [[ "$2" =~ ^[1-9][0-9]{0,6}$ ]] || die "--backlog wants a positive number, got '$2'"
            BACKLOG="$2"
            ;;
        *) return 1 ;;
    esac
}

# Roles: the server holds N sockets, the load side N more; on one host (both) the kernel
# holds 2N.
serves() { [[ "$ROLE" != client ]]; }
loads() { [[ "$ROLE" != server ]]; }
sockets_total() {
    if [[ "$ROLE" == both ]]; then printf '%s' $((2 * N)); else printf '%s' "$N"; fi
}

# Each process (the engine, or the load generator) holds N sockets plus its own few.
need_nofile() { printf '%s' $((N + FD_HEADROOM)); }
# What the limits.d file and the unit set: the floor, or more when N needs it.
nofile_target() {
    local need
    need="$(need_nofile)"
    printf '%s' $((need > NOFILE_FLOOR ? need : NOFILE_FLOOR))
}
# fs.nr_open caps any RLIMIT_NOFILE; it must admit the per-process need.
need_nr_open() { need_nofile; }
need_file_max() { printf '%s' $(($(sockets_total) + SYSTEM_FILES)); }
# A connect() takes one ephemeral port per (source address, destination) pair.
need_ports() { printf '%s' $(((N + SOURCES - 1) / SOURCES)); }
# The accept (somaxconn) and SYN (tcp_max_syn_backlog) queues must admit the listen backlog
# the engine asks for, or the kernel silently caps it.
need_somaxconn() { printf '%s' "$BACKLOG"; }
need_syn_backlog() { printf '%s' "$BACKLOG"; }
# Per-CPU input queue. Past 100k connections, bursts (a broadcast's ACKs, a reconnect storm)
# overflow the default 1000 and every drop costs a retransmission timeout. A policy value.
need_netdev_backlog() {
    if ((N >= 100000)); then printf '16384'; else printf '1000'; fi
}
# tcp_mem counts socket buffer pages. An idle socket holds none; one with anything queued
# holds at least one page (the accounting quantum; measured: 100 unread bytes on 8000 sockets
# = 7936 pages). density: every socket may hold a page at once (a broadcast to all);
# throughput: 16 pages (64 KiB) each.
pages_per_socket() {
    if [[ "$PROFILE" == throughput ]]; then printf '16'; else printf '1'; fi
}
need_tcp_mem_pages() { printf '%s' $(($(sockets_total) * $(pages_per_socket))); }
# One conntrack entry per connection (both directions share it); churn adds TIME_WAIT
# entries, hence a quarter more.
need_conntrack() { printf '%s' $((N + N / 4)); }

# Socket buffer defaults per profile, "min default max" in bytes. density: small defaults so a
# burst to a million sockets cannot queue much each; throughput: room for autotuning.
profile_rmem() {
    if [[ "$PROFILE" == throughput ]]; then printf '4096 131072 33554432'; else printf '4096 16384 1048576'; fi
}
profile_wmem() {
    if [[ "$PROFILE" == throughput ]]; then printf '4096 65536 16777216'; else printf '4096 16384 1048576'; fi
}

# Linux's connect() tries ports of one parity first (the other half is left for bind()), so
# once half of the range is in use towards one destination every further connect() scans the
# used half before it finds a port: measured on loopback, 19,000 connections from one address
# opened at 3.2k/s with 28232 ports and at 49k/s with 64512.
fast_ports() { printf '%s' $((2 * $(need_ports))); }

# ports_target RANGE: the ip_local_port_range for N connections: twice need_ports when that
# fits (connect stays fast), else need_ports; widening only downward from 65535 and never
# below 1024; RANGE if it already suffices.
ports_target() {
    local lo hi need fast width low
    lo="$(field "$1" 1)"
    hi="$(field "$1" 2)"
    need="$(need_ports)"
    fast="$(fast_ports)"
    width=$((hi - lo + 1))
    if ((fast <= PORT_HIGH - PORT_LOW_MIN + 1)); then
        need=$fast
    fi
    if ((width >= need)); then
        printf '%s' "$1"
        return
    fi
    low=$((PORT_HIGH + 1 - need))
    ((low < PORT_LOW_MIN)) && low=$PORT_LOW_MIN
    printf '%s %s' "$low" "$PORT_HIGH"
}

# min_sources: source addresses needed when one address can hold at most the widest range.
min_sources() {
    local max=$((PORT_HIGH - PORT_LOW_MIN + 1))
    printf '%s' $(((N + max - 1) / max))
}
