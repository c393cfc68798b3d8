#!/usr/bin/env python3
"""The parts of scripts/million.sh that read JSON or many endpoints at once. Every call is
bounded (HTTP timeouts, no retries) and read-only except `publish`.

    million-helper.py stats OUT.json API_PORT...    GET /stats of every engine (in parallel);
                                                    prints "<open> <subscriptions> <answered>"
    million-helper.py publish OUT.json CHANNEL API_PORT...
                                                    reads CLOCK_MONOTONIC, then POST /publish
                                                    {"channel", "data": {"t": <ns>}} to each
                                                    port in turn (normally one: the bus does the
                                                    rest); prints "<t_ns> <ok>"
    million-helper.py settle OUT.json CHANNEL SECS API_PORT...
                                                    publishes to CHANNEL (nobody listens) on
                                                    every node, round after round, until each
                                                    has answered one within 250 ms or SECS have
                                                    passed: the bus has worked off what the ramp
                                                    queued; prints "<seconds> <settled> <nodes>"
    million-helper.py snapshot OUT.json ENGINE_PIDS LOADGEN_PIDS REDIS_PID [REDIS_PORT]
                                                    /proc/meminfo, /proc/net/sockstat, the
                                                    socket slab caches, RSS and CPU of each
                                                    group (PIDS comma-separated, may be empty),
                                                    drops and retransmissions, Redis's
                                                    commands so far
    million-helper.py checkrows CHECK.json SCOPE    rows of `sysctl/check --json` that are LOW
                                                    or UNKNOWN, one per line (SCOPE: process =
                                                    only the hard open-file limit; system =
                                                    every row but the per-process ones)
    million-helper.py summary RUN_DIR OUT.json      the final block (stdout) and its JSON
"""

import concurrent.futures
import json
import os
import socket
import sys
import time
import urllib.request

HTTP_TIMEOUT_S = 3
# Slab caches one idle socket holds an object of each (as sysctl/lib.sh counts them).
SOCKET_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")
PAGE = os.sysconf("SC_PAGE_SIZE")


def get_json(url):
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
        return json.load(r)


def cmd_stats(out, ports):
    def one(port):
        try:
            s = get_json(f"http://127.0.0.1:{port}/stats")
            t = s["total"]
            return {"api_port": int(port), "ok": True, "open": t["open"],
                    "subscriptions": t["hub_subscriptions"], "accepted": t["accepted"],
                    "upgraded": t["upgraded"], "accept_emfile": t["accept_emfile"],
                    "rss_bytes": s.get("rss_bytes"), "open_files_limit": s.get("open_files_limit")}
        except (OSError, ValueError, KeyError) as e:
            return {"api_port": int(port), "ok": False, "error": str(e)}

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        engines = list(pool.map(one, ports))
    good = [e for e in engines if e["ok"]]
    doc = {"engines": engines, "open": sum(e["open"] for e in good),
           "subscriptions": sum(e["subscriptions"] for e in good), "answered": len(good)}
    write(out, doc)
    print(doc["open"], doc["subscriptions"], doc["answered"])


def cmd_publish(out, channel, ports):
    t = time.monotonic_ns()  # the loadgen's clock (CLOCK_MONOTONIC): latency runs from here
    body = json.dumps({"channel": channel, "data": {"t": t, "from": "scripts/million.sh"}})
    results = []
    for port in ports:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/publish", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
                results.append({"api_port": int(port), "status": r.status, "reply": json.load(r)})
        except (OSError, ValueError) as e:
            results.append({"api_port": int(port), "error": str(e)})
    done = time.monotonic_ns()
    ok = all(r.get("status") == 200 and r["reply"].get("ok") for r in results)
    write(out, {"t_ns": t, "returned_ns": done, "ok": ok, "results": results})
    print(t, "ok" if ok else "failed")


SETTLED_MS = 250


def publish_once(port, channel):
    """One POST /publish; returns (answered ok, milliseconds)."""
    body = json.dumps({"channel": channel, "data": {"probe": True}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/publish", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            ok = r.status == 200 and json.load(r).get("ok") is True
    except (OSError, ValueError):
        ok = False
    return ok, (time.monotonic() - t0) * 1000


def cmd_settle(out, channel, secs, ports):
    start = time.monotonic()
    deadline = start + float(secs)
    settled = {}  # port -> seconds until its first quick answer
    rounds = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        while len(settled) < len(ports) and time.monotonic() < deadline:
            todo = [p for p in ports if p not in settled]
            answers = list(pool.map(lambda p: publish_once(p, channel), todo))
            now = time.monotonic() - start
            rounds.append({"at_s": round(now, 2),
                           "slowest_ms": round(max(ms for _, ms in answers), 1),
                           "waiting": len(todo)})
            for port, (ok, ms) in zip(todo, answers):
                if ok and ms <= SETTLED_MS:
                    settled[port] = round(now, 2)
            if len(settled) < len(ports):
                time.sleep(0.5)
    took = time.monotonic() - start
    write(out, {"seconds": round(took, 2), "settled": len(settled), "nodes": len(ports),
                "per_node_s": settled, "rounds": rounds})
    print(f"{took:.1f}", len(settled), len(ports))


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def sockstat():
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            proto, rest = line.split(":", 1)
            fields = rest.split()
            out[proto] = {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return out


def slab_caches():
    try:
        with open("/proc/slabinfo") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return None
    out = {}
    for line in lines:
        fields = line.split()
        if fields[0] in SOCKET_CACHES:
            out[fields[0]] = int(fields[1]) * int(fields[3])  # active objects x object size
    return out


def net_counters():
    """Drops and retransmissions, machine-wide (this network namespace): packets the
    per-CPU input queue dropped (softnet_stat column 2: net.core.netdev_max_backlog full),
    times the input softirq ran out of budget (column 3), TCP segments retransmitted, and the
    listen queue overflowing (SYNs or completed connections dropped)."""
    out = {"softnet_dropped": 0, "softnet_squeezed": 0}
    with open("/proc/net/softnet_stat") as f:
        for line in f:
            cols = line.split()
            out["softnet_dropped"] += int(cols[1], 16)
            out["softnet_squeezed"] += int(cols[2], 16)
    for path, proto, keys in (("/proc/net/snmp", "Tcp", ("RetransSegs",)),
                              ("/proc/net/netstat", "TcpExt",
                               ("ListenOverflows", "ListenDrops", "TCPTimeouts",
                                "TCPBacklogDrop", "TCPMemoryPressures"))):
        with open(path) as f:
            rows = [line.split() for line in f if line.startswith(proto + ":")]
        names, values = rows[0][1:], rows[1][1:]
        for k in keys:
            if k in names:
                out[k] = int(values[names.index(k)])
    return out


def redis_commands(port):
    """Calls and CPU per command from Redis's INFO commandstats (inline protocol, one
    request): how many presence writes (HSET/HDEL) and publishes (EVALSHA) it has served."""
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=HTTP_TIMEOUT_S) as s:
            s.sendall(b"INFO commandstats\r\n")
            buf = b""
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            head, rest = buf.split(b"\r\n", 1)
            need = int(head[1:]) + 2
            while len(rest) < need:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
    except (OSError, ValueError):
        return None
    out = {}
    for line in rest.decode(errors="replace").splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[8:].split(":", 1)
            f = dict(kv.split("=", 1) for kv in fields.split(","))
            out[name] = {"calls": int(f["calls"]), "usec": int(f["usec"])}
    return out


def rss(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass  # gone: it holds nothing any more
    return total


def cpu_ticks(pids):
    """utime + stime of each process (clock ticks), summed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
        except (OSError, IndexError, ValueError):
            pass
    return total


def box_ticks():
    """The machine's CPU time so far: busy and idle (iowait counted idle), clock ticks."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return {"busy": sum(v[:8]) - idle, "idle": idle}


def pid_list(s):
    return [p for p in s.split(",") if p]


def cmd_snapshot(out, engines, loadgens, redis, redis_port=""):
    write(out, {"at_unix_s": time.time(),
                "redis_commands": redis_commands(redis_port) if redis_port else None, "meminfo": meminfo(), "sockstat": sockstat(),
                "socket_slab_bytes": slab_caches(), "net": net_counters(),
                "rss": {"engines": rss(pid_list(engines)), "loadgens": rss(pid_list(loadgens)),
                        "redis": rss(pid_list(redis))},
                "cpu_ticks": {"engines": cpu_ticks(pid_list(engines)),
                              "loadgens": cpu_ticks(pid_list(loadgens)),
                              "redis": cpu_ticks(pid_list(redis)), "box": box_ticks()}})


def cmd_checkrows(path, scope):
    with open(path) as f:
        doc = json.load(f)
    per_process = ("nofile", "CAP_SYS_RESOURCE", "systemd")
    for row in doc["limits"]:
        if row["status"] not in ("LOW", "UNKNOWN"):
            continue
        mine = row["name"].startswith(per_process)
        if (scope == "process" and row["name"].startswith("nofile.hard")) or \
                (scope == "system" and not mine):
            print(f'{row["name"]}: {row["current"]} (needed {row["needed"]}); fix: {row["fix"]}')


def write(path, doc):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def delta_map(a, b):
    if not a or not b:
        return None
    return {k: b[k] - a[k] for k in b if k in a}


def gib(b):
    return f"{b / 2**30:.2f} GiB"


def mib(b):
    return f"{b / 2**20:.0f} MiB"


def ms(us):
    return "n/a" if us is None else f"{us / 1000:.1f} ms"


def cmd_summary(run, out):
    p = load(os.path.join(run, "params.json"), {})
    before = load(os.path.join(run, "before.json"), {})
    held = load(os.path.join(run, "held.json"), {})
    stats = load(os.path.join(run, "held-stats.json"), {"engines": []})
    pub = load(os.path.join(run, "publish.json"))
    settle = load(os.path.join(run, "settle.json"))
    settled = load(os.path.join(run, "settled.json"), {})

    def redis_calls(snap, *names):
        rc = (snap or {}).get("redis_commands")
        return None if rc is None else sum(rc.get(n, {}).get("calls", 0) for n in names)

    presence = {label: redis_calls(snap, "hset", "hdel")
                for label, snap in (("before", before), ("held", held), ("settled", settled))}
    lg = load(os.path.join(run, "loadgen.json"))
    peak = load(os.path.join(run, "peaks.json"), {})
    n = p.get("target", 0)
    held_open = stats.get("open", 0)
    held_subs = stats.get("subscriptions", 0)
    per_engine = [{"node": f"million-{i}", "api_port": e["api_port"], "open": e.get("open"),
                   "subscriptions": e.get("subscriptions"), "rss_bytes": e.get("rss_bytes")}
                  for i, e in enumerate(stats["engines"])]
    opens = [e["open"] for e in per_engine if e["open"] is not None]

    def delta(key):
        a, b = before.get("meminfo", {}).get(key), held.get("meminfo", {}).get(key)
        return None if a is None or b is None else b - a

    tcp_before = before.get("sockstat", {}).get("TCP", {})
    tcp_held = held.get("sockstat", {}).get("TCP", {})
    sockets_before = before.get("sockstat", {}).get("sockets", {}).get("used")
    sockets_held = held.get("sockstat", {}).get("sockets", {}).get("used")
    slab_delta = delta("Slab")
    caches_b, caches_h = before.get("socket_slab_bytes"), held.get("socket_slab_bytes")
    socket_slab_delta = (sum(caches_h.values()) - sum(caches_b.values())
                         if caches_b and caches_h else None)
    conns = max(held_open, 1)
    rss_h = held.get("rss", {})
    rss_b = before.get("rss", {})
    hz = os.sysconf("SC_CLK_TCK")
    cb, ch = before.get("cpu_ticks"), held.get("cpu_ticks")
    cpu = None
    if cb and ch:
        # Over the ramp (before -> held): CPU seconds of each group and of the whole box; what
        # is left is everybody else on the machine (it is shared).
        secs = {g: (ch[g] - cb[g]) / hz for g in ("engines", "loadgens", "redis")}
        busy = (ch["box"]["busy"] - cb["box"]["busy"]) / hz
        idle = (ch["box"]["idle"] - cb["box"]["idle"]) / hz
        wall = max(held.get("at_unix_s", 0) - before.get("at_unix_s", 0), 1e-9)
        cpu = {**{f"{g}_s": round(v, 2) for g, v in secs.items()},
               "box_busy_s": round(busy, 2), "box_idle_s": round(idle, 2),
               "others_s": round(busy - sum(secs.values()), 2), "wall_s": round(wall, 2),
               "box_busy_fraction": round(busy / max(busy + idle, 1e-9), 3)}
    sub = (lg or {}).get("subscribe") or {}
    lat = (lg or {}).get("latency_us") or {}
    reached = sub.get("reached")
    result = {
        "target": n,
        "command": p.get("command"),
        "machine": p.get("machine"),
        "engines": p.get("engines"),
        "shards_per_engine": p.get("shards"),
        "loadgen_procs": p.get("procs"),
        "sources": p.get("sources"),
        "rate_per_s": p.get("rate"),
        "bus": p.get("bus"),
        "publish_via": p.get("publish_via"),
        "ramp_s": p.get("ramp_s"),
        "stopped_because": p.get("stopped_because"),
        "held": {"open": held_open, "subscriptions": held_subs,
                 "per_engine_min": min(opens) if opens else None,
                 "per_engine_max": max(opens) if opens else None,
                 "per_engine": per_engine},
        "memory": {
            "engines_rss_bytes": rss_h.get("engines"),
            "engines_rss_growth_bytes_per_conn":
                (rss_h["engines"] - rss_b.get("engines", 0)) / conns if rss_h.get("engines") else None,
            "loadgens_rss_bytes": rss_h.get("loadgens"),
            "redis_rss_bytes": rss_h.get("redis"),
            "mem_available_before_bytes": before.get("meminfo", {}).get("MemAvailable"),
            "mem_available_held_bytes": held.get("meminfo", {}).get("MemAvailable"),
            "mem_available_lowest_bytes": peak.get("mem_available_min_bytes"),
        },
        "kernel": {
            "sockets_used_before": sockets_before, "sockets_used_held": sockets_held,
            "tcp_inuse_held": tcp_held.get("inuse"),
            "tcp_mem_pages_before": tcp_before.get("mem"), "tcp_mem_pages_held": tcp_held.get("mem"),
            "tcp_mem_bytes_held": tcp_held.get("mem", 0) * PAGE,
            "tcp_mem_pages_peak_during_broadcast": peak.get("tcp_mem_pages_max"),
            "slab_growth_bytes": slab_delta,
            "slab_growth_bytes_per_conn": slab_delta / conns if slab_delta is not None else None,
            "socket_slab_growth_bytes": socket_slab_delta,
            "socket_slab_growth_bytes_per_conn":
                socket_slab_delta / conns if socket_slab_delta is not None else None,
        },
        "cpu_until_held": cpu,
        "net_until_held": delta_map(before.get("net"), held.get("net")),
        "net_during_delivery": delta_map(held.get("net"), load(os.path.join(run, "delivered.json"), {}).get("net")),
        "bus_settle": settle,
        "redis_presence_writes": presence,
        "publish": pub,
        "delivery": {
            "subscribed": sub.get("subscribed"), "reached": reached,
            "deliveries": sub.get("deliveries"), "gaps": sub.get("gaps"),
            "duplicates": sub.get("duplicates"), "foreign": sub.get("foreign"),
            "latency_us": {k: lat.get(k) for k in ("p50", "p90", "p99", "p999", "max", "count")},
        },
        "loadgen": None if lg is None else {
            "handshakes": lg["connections"]["handshakes"], "failed": lg["connections"]["failed"],
            "failures": {k: v for k, v in lg["failures"].items() if v},
            "time_to_n_s": lg.get("time_to_n_s"), "handshakes_per_sec": lg.get("handshakes_per_sec"),
            "errors": lg.get("errors"), "ok": lg.get("ok"),
            "client_rss_bytes": lg.get("client_rss_bytes"),
            "cpu_ramp": {k: lg["cpu"]["ramp"].get(k) for k in ("busy_cores", "user_s", "system_s")},
            "cores_ramp": lg["cpu"]["ramp"].get("cores"),
        },
        "ok": bool(lg and lg.get("ok") and reached == n and held_subs == n),
    }
    write(out, result)

    m, k = result["memory"], result["kernel"]
    lines = [
        f"== scripts/million.sh: {held_open:,} of {n:,} connections held ==",
        f"machine      {p.get('machine')}",
        f"command      {p.get('command')}",
        f"layout       {p.get('engines')} engines x {p.get('shards')} shard(s), "
        f"{p.get('procs')} load-generator processes, {p.get('sources')} source addresses, "
        f"ramp {p.get('rate')}/s",
        f"bus          {p.get('bus')}; publish: {p.get('publish_via')}",
        f"ramp         {held_subs:,} subscribed after {p.get('ramp_s')} s ({p.get('stopped_because')})",
        f"held         total open {held_open:,}, subscribed {held_subs:,}; per engine "
        f"{min(opens) if opens else 'n/a'}-{max(opens) if opens else 'n/a'}",
        "             " + ", ".join(f"e{i} {e['open']}" for i, e in enumerate(per_engine)),
    ]
    if m["engines_rss_bytes"] is not None:
        lines.append(
            f"memory       engines RSS {mib(m['engines_rss_bytes'])} "
            f"({m['engines_rss_growth_bytes_per_conn'] or 0:.0f} B/conn growth), "
            f"load generators {mib(m['loadgens_rss_bytes'] or 0)}, redis {mib(m['redis_rss_bytes'] or 0)}; "
            f"MemAvailable {gib(m['mem_available_before_bytes'] or 0)} -> "
            f"{gib(m['mem_available_held_bytes'] or 0)} (lowest {gib(m['mem_available_lowest_bytes'] or 0)})")
    if sockets_held is not None:
        sl = k["slab_growth_bytes"]
        ss = k["socket_slab_growth_bytes"]
        lines.append(
            f"kernel       sockets used {sockets_before:,} -> {sockets_held:,}; TCP mem "
            f"{k['tcp_mem_pages_held']} pages ({k['tcp_mem_bytes_held']:,} B) held, peak "
            f"{k['tcp_mem_pages_peak_during_broadcast']} pages during the broadcast; Slab "
            f"+{gib(sl or 0)} ({(sl or 0) / conns:,.0f} B/conn, both ends)"
            + (f", socket caches +{gib(ss)} ({ss / conns:,.0f} B/conn)" if ss is not None else ""))
    if cpu:
        lines.append(
            f"cpu          until held ({cpu['wall_s']:.0f} s): box {cpu['box_busy_fraction'] * 100:.0f}% busy "
            f"({cpu['box_busy_s']:.0f} of {cpu['box_busy_s'] + cpu['box_idle_s']:.0f} core-s): engines "
            f"{cpu['engines_s']:.0f} s, load generators {cpu['loadgens_s']:.0f} s, redis "
            f"{cpu['redis_s']:.0f} s, everything else {cpu['others_s']:.0f} s")
    for label, key in (("net ramp", "net_until_held"), ("net publish+", "net_during_delivery")):
        if result[key]:
            lines.append(f"{label:<12} " + ", ".join(f"{k} {v:,}" for k, v in result[key].items()))
    if presence.get("held") is not None:
        lines.append(f"redis        presence commands (HSET/HDEL) served: {presence['before'] or 0:,} before, "
                     f"{presence['held']:,} when all were subscribed, {presence['settled'] or 0:,} "
                     f"after the settle (coalesced, many fields each)")
    if settle:
        lines.append(f"bus settle   {settle['settled']} of {settle['nodes']} nodes answered a publish "
                     f"within {SETTLED_MS} ms after {settle['seconds']} s (what the ramp left queued "
                     f"on the bus, worked off)")
    if pub:
        errors = sorted({r["error"] for x in pub["results"]
                         for r in x.get("reply", {}).get("results", []) if "error" in r})
        lines.append(f"publish      {len(pub['results'])} POST /publish, ok={pub['ok']}"
                     f"{' (' + ', '.join(errors) + ')' if errors else ''}, "
                     f"answered in {(pub['returned_ns'] - pub['t_ns']) / 1e6:.1f} ms")
    lines.append(
        f"delivery     reached {reached or 0:,} of "
        f"{sub.get('subscribed', 0):,} subscribed; publish -> receive p50 {ms(lat.get('p50'))}, "
        f"p99 {ms(lat.get('p99'))}, last {ms(lat.get('max'))} ({lat.get('count', 0):,} timed)"
        if reached is not None else "delivery     n/a (no load-generator report)")
    if lg:
        lines.append(f"loadgen      {lg['connections']['handshakes']:,} handshakes, "
                     f"{lg['connections']['failed']:,} failed "
                     f"{result['loadgen']['failures'] or ''}; time to N {lg.get('time_to_n_s') or 0:.1f} s; "
                     f"CPU in ramp {lg['cpu']['ramp'].get('busy_cores', 0):.2f} cores; ok={lg.get('ok')}")
    lines.append(f"result       {'ok' if result['ok'] else 'NOT OK'}  (JSON: {out})")
    print("\n".join(lines))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "stats":
        cmd_stats(args[0], args[1:])
    elif cmd == "publish":
        cmd_publish(args[0], args[1], args[2:])
    elif cmd == "settle":
        cmd_settle(args[0], args[1], args[2], args[3:])
    elif cmd == "snapshot":
        cmd_snapshot(*args)
    elif cmd == "checkrows":
        cmd_checkrows(*args)
    elif cmd == "summary":
        cmd_summary(*args)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
