#!/usr/bin/env python3
"""Runs every starling-loadgen scenario briefly and asserts on its JSON.

Targets: the Starling engine (target/debug/starling; fanout both against `--app broadcast`
and, in `--mode hub`, against `--app hub` with 2 shards, checked against the server's own
counters from its admin API), and two servers nobody here wrote:
Python `websockets` and Node `ws` (tests/interop/). Then the failures the load generator
must name: a port with nothing listening (refused), a server answering 403/404 instead of
101 (http_status:<code>), a server resetting every connection (reset), and a plan over the
open-file limit (refused up front, exit 2, naming sysctl/check).

    python3 tests/loadgen/check.py [--bin DIR] [-k SUBSTRING]

Every run is bounded: each scenario lasts 1-2 s and each process gets a timeout. Servers are
stopped through their own process handle. Prints `PASS`/`FAIL` per case and a final
`N passed, M failed` line; exits 1 if any case failed.
"""

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
INTEROP = os.path.join(ROOT, "tests", "interop")
RUN_TIMEOUT_S = 90
READY_TIMEOUT_S = 15


class Server:
    """A server process on a free port, stopped on exit."""

    def __init__(self, name, argv, port=None):
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = port if port is not None else self._announced_port()
        self._wait_connectable()

    def _announced_port(self):
        # py_server.py and node_server.js print "listening <port>" once bound.
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"{self.name}: no 'listening' line (got {line!r}): {self.stderr()}")
        return int(line.split()[1])

    def _wait_connectable(self, port=None):
        port = self.port if port is None else port
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.stderr()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name}: port {port} not accepting")

    def stderr(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-800:]

    def url(self, path="/"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def starling(bin_dir, app):
    port = free_port()
    argv = [os.path.join(bin_dir, "starling"), "serve", "--listen", f"127.0.0.1:{port}",
            "--app", app, "--shards", "1"]
    return Server(f"starling {app}", argv, port=port)


def tcp_ext(name):
    """A TcpExt counter from /proc/net/netstat."""
    with open("/proc/net/netstat") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1]))[name])


def starling_fastopen(bin_dir):
    """`starling serve --app echo` with TCP Fast Open on its listener."""
    port = free_port()
    argv = [os.path.join(bin_dir, "starling"), "serve", "--listen", f"127.0.0.1:{port}",
            "--app", "echo", "--shards", "1", "--no-api", "--tcp-fastopen", "64"]
    return Server("starling echo --tcp-fastopen", argv, port=port)


def starling_hub(bin_dir, shards):
    """`starling serve --app hub` with its admin API on a port of its own (for /stats)."""
    port, api = free_port(), free_port()
    argv = [os.path.join(bin_dir, "starling"), "serve", "--listen", f"127.0.0.1:{port}",
            "--app", "hub", "--shards", str(shards), "--api-listen", f"127.0.0.1:{api}"]
    s = Server(f"starling hub x{shards}", argv, port=port)
    # The admin API starts on its own thread, possibly after the shards accept.
    s._wait_connectable(api)
    s.api = api
    return s


def server_totals(s):
    """The server's counters summed over its shards (GET /stats)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{s.api}/stats", timeout=5) as r:
        return json.load(r)["total"]


def settled_totals(s, deadline_s=10):
    """/stats once every connection is gone and two reads in a row agree (the shards
    publish their counters a little after the fact)."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        t = server_totals(s)
        if t["open"] == 0 and t == last:
            return t
        last = t
        time.sleep(0.2)
    raise AssertionError(f"server counters did not settle: {last}")


def py_server(app):
    return Server(f"websockets {app}", [sys.executable, os.path.join(INTEROP, "py_server.py"),
                                        "--app", app])


def node_server(app):
    return Server(f"ws {app}", ["node", os.path.join(INTEROP, "node_server.js"), "--app", app])


class Check:
    def __init__(self, bin_dir, only):
        self.loadgen = os.path.join(bin_dir, "starling-loadgen")
        self.only = only
        self.passed = 0
        self.failed = 0
        self.tmp = tempfile.mkdtemp(prefix="loadgen-check-")

    def run(self, args, expect_exit=0):
        """Runs the load generator; returns (report dict or None, stderr)."""
        out = os.path.join(self.tmp, "out.json")
        if os.path.exists(out):
            os.remove(out)
        argv = [self.loadgen, *args, "--json", out, "--no-progress"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if p.returncode != expect_exit:
            raise AssertionError(f"exit {p.returncode}, expected {expect_exit}\n"
                                 f"stdout: {p.stdout[-1500:]}\nstderr: {p.stderr[-800:]}")
        report = None
        if os.path.exists(out):
            with open(out) as f:
                report = json.load(f)
        return report, p.stderr

    def case(self, name, fn):
        if self.only and self.only not in name:
            return
        try:
            fn()
            print(f"PASS {name}", flush=True)
            self.passed += 1
        except Exception as e:  # report every case, not only the first failure
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            self.failed += 1


def eq(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def at_least(what, got, low):
    if got is None or got < low:
        raise AssertionError(f"{what}: got {got!r}, want at least {low!r}")


def clean(r, handshakes):
    """The invariants of a clean run."""
    eq("errors", r["errors"], 0)
    eq("ok", r["ok"], True)
    eq("handshakes", r["connections"]["handshakes"], handshakes)
    eq("failures", sum(r["failures"].values()), 0)
    eq("closed clean at the end", r["connections"]["closed_clean"], handshakes)


def echo_counts_add_up(r):
    at_least("messages_received", r["messages_received"], 1)
    eq("received == sent", r["messages_received"], r["messages_sent"])
    eq("latency samples == received", r["latency_us"]["count"], r["messages_received"])
    for k in ("p50", "p90", "p99", "p999", "max"):
        at_least(f"latency_us.{k}", r["latency_us"][k], 0.1)
    at_least("messages_per_sec", r["messages_per_sec"], 1)


def fanout_counts_add_up(r, subscribers, per_channel=None):
    """per_channel: subscribers on each channel (hub mode; all of them otherwise)."""
    eq("subscribers", r["subscribers"], subscribers)
    at_least("published", r["published"], 1)
    eq("expected_deliveries", r["expected_deliveries"],
       r["published"] * (per_channel or subscribers))
    eq("deliveries", r["deliveries"], r["expected_deliveries"])
    for k in ("gaps", "duplicates", "reordered", "missing", "foreign"):
        eq(k, r[k], 0)
    eq("latency samples == deliveries", r["latency_us"]["count"], r["deliveries"])
    at_least("deliveries_per_sec", r["deliveries_per_sec"], 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "debug"),
                   help="directory holding starling and starling-loadgen")
    p.add_argument("-k", default="", help="run only cases whose name contains this")
    args = p.parse_args()
    c = Check(args.bin, args.k)

    with starling(args.bin, "echo") as s:
        def echo_closed_loop():
            r, _ = c.run(["echo", s.url(), "-c", "8", "--depth", "8", "--size", "32",
                          "--duration", "1s", "--server-pid", str(s.proc.pid)])
            clean(r, 8)
            echo_counts_add_up(r)
            eq("latency from intended time", r["latency_from_intended_time"], False)
        c.case("starling echo closed loop", echo_closed_loop)

        def echo_count():
            r, _ = c.run(["echo", s.url(), "-c", "4", "--depth", "4", "--count", "1000",
                          "--duration", "20s", "--text"])
            clean(r, 4)
            echo_counts_add_up(r)
            eq("messages_received", r["messages_received"], 1000)
        c.case("starling echo --count (text frames)", echo_count)

        def echo_open_loop():
            r, _ = c.run(["echo", s.url(), "-c", "4", "--rate", "2000/s", "--duration", "1s"])
            clean(r, 4)
            echo_counts_add_up(r)
            eq("latency from intended time", r["latency_from_intended_time"], True)
            if not 1500 <= r["messages_received"] <= 2500:
                raise AssertionError(f"~2000 messages expected, got {r['messages_received']}")
        c.case("starling echo open loop --rate", echo_open_loop)

        def echo_coalesce():
            # auto: on for 64 x 64 in flight on one thread, off for a shallow run.
            r, _ = c.run(["echo", s.url(), "-c", "64", "--depth", "64", "--threads", "1",
                          "--duration", "1s"])
            clean(r, 64)
            echo_counts_add_up(r)
            eq("coalesce_us (auto, deep)", r["coalesce_us"], 100)
            r, _ = c.run(["echo", s.url(), "-c", "2", "--depth", "2", "--duration", "1s"])
            eq("coalesce_us (auto, shallow)", r["coalesce_us"], 0)
            eq("coalesce_waits when off", r["syscalls"]["coalesce_waits"], 0)
            # Two connections: every poll brings fewer than 8 events, so every one is
            # preceded by a wait, and nothing is lost or miscounted.
            r, _ = c.run(["echo", s.url(), "-c", "2", "--depth", "2", "--duration", "1s",
                          "--coalesce", "200us"])
            clean(r, 2)
            echo_counts_add_up(r)
            eq("coalesce_us", r["coalesce_us"], 200)
            at_least("coalesce_waits", r["syscalls"]["coalesce_waits"], 100)
            c.run(["fanout", s.url(), "--coalesce", "50us"], expect_exit=2)
        c.case("starling echo --coalesce", echo_coalesce)

        def connect_density():
            r, _ = c.run(["connect", s.url(), "-c", "300", "--rate", "3000/s", "--duration",
                          "1s", "--server-pid", str(s.proc.pid)])
            clean(r, 300)
            eq("open_peak", r["connections"]["open_peak"], 300)
            at_least("time_to_n_s", r["time_to_n_s"], 0.05)
            at_least("handshakes_per_sec", r["handshakes_per_sec"], 1)
            eq("handshake samples", r["handshake_latency_us"]["count"], 300)
            eq("corrected handshake samples", r["handshake_latency_corrected_us"]["count"], 300)
            d = r["density"]
            eq("density connections", d["connections"], 300)
            at_least("server RSS before", d["before"]["server_rss_bytes"], 1)
            if d["server_rss_bytes_per_conn"] is None:
                raise AssertionError("no server RSS per connection")
            for key in ("kernel", "sysctls", "nofile_hard"):
                if key not in r["environment"]:
                    raise AssertionError(f"environment lacks {key}")
        c.case("starling connect --server-pid (density)", connect_density)

        def churn():
            r, _ = c.run(["churn", s.url(), "-c", "8", "--rate", "300/s", "--duration", "1s"])
            eq("errors", r["errors"], 0)
            at_least("cycles", r["cycles"], 50)
            eq("cycles == handshakes", r["cycles"], r["connections"]["handshakes"])
            eq("clean closes == cycles", r["connections"]["closed_clean"], r["cycles"])
            eq("teardown samples", r["teardown_latency_us"]["count"], r["cycles"])
        c.case("starling churn", churn)

        def capacity():
            r, _ = c.run(["capacity", s.url(), "-c", "30", "--step", "10", "--step-duration",
                          "500ms", "--per-conn-rate", "50/s", "--p99", "1s"])
            eq("errors", r["errors"], 0)
            steps = r["capacity"]["steps"]
            eq("steps", [st["connections"] for st in steps], [10, 20, 30])
            eq("all steps held", all(st["ok"] for st in steps), True)
            eq("largest ok", r["capacity"]["largest_ok"]["connections"], 30)
            eq("sent == received", r["messages_received"], r["messages_sent"])
        c.case("starling capacity", capacity)

        def capacity_bound():
            # A 1 µs p99 bound cannot hold: the ramp must stop at step 1 and say why.
            r, _ = c.run(["capacity", s.url(), "-c", "30", "--step", "10", "--step-duration",
                          "300ms", "--per-conn-rate", "50/s", "--p99", "1us"])
            eq("steps", len(r["capacity"]["steps"]), 1)
            eq("largest ok", r["capacity"]["largest_ok"], None)
            if "p99" not in r["capacity"]["stopped_because"]:
                raise AssertionError(r["capacity"]["stopped_because"])
        c.case("starling capacity stops at the p99 bound", capacity_bound)

        def echo_procs():
            r, _ = c.run(["echo", s.url(), "-c", "8", "--depth", "4", "--duration", "1s",
                          "--procs", "2", "--threads", "1"])
            clean(r, 8)
            echo_counts_add_up(r)
            eq("procs", r["procs"], 2)
        c.case("starling echo --procs 2", echo_procs)

        def report_dir():
            d = os.path.join(c.tmp, "report")
            r, _ = c.run(["echo", s.url(), "-c", "2", "--depth", "2", "--duration", "1s",
                          "--report", d])
            clean(r, 2)
            with open(os.path.join(d, "latency.hgrm")) as f:
                text = f.read()
            if "Total count" not in text:
                raise AssertionError("latency.hgrm lacks its footer")
            with open(os.path.join(d, "report.json")) as f:
                eq("report.json messages", json.load(f)["messages_received"], r["messages_received"])
            png = os.path.join(d, "latency.png")
            if os.path.exists("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
                with open(png, "rb") as f:
                    eq("PNG signature", f.read(8), b"\x89PNG\r\n\x1a\n")
        c.case("starling --report DIR", report_dir)

    with starling(args.bin, "broadcast") as s:
        def fanout():
            r, _ = c.run(["fanout", s.url(), "-c", "50", "--publishers", "2", "--rate", "500/s",
                          "--size", "64", "--duration", "1s"])
            clean(r, 52)
            fanout_counts_add_up(r, 50)
            eq("mode", r["mode"], "raw")
            eq("channels", r["channels"], 1)
            eq("no hub figures", "hub" in r, False)
            if not 400 <= r["published"] <= 600:
                raise AssertionError(f"~500 published expected, got {r['published']}")
        c.case("starling fanout", fanout)

        def fanout_procs():
            r, _ = c.run(["fanout", s.url(), "-c", "20", "--publishers", "2", "--rate", "200/s",
                          "--duration", "1s", "--procs", "2", "--threads", "1"])
            clean(r, 22)
            fanout_counts_add_up(r, 20)
        c.case("starling fanout --procs 2", fanout_procs)

    with starling_hub(args.bin, 2) as s:
        def fanout_hub():
            before = settled_totals(s)
            r, _ = c.run(["fanout", s.url(), "--mode", "hub", "--channels", "4", "-c", "200",
                          "--publishers", "2", "--rate", "1000/s", "--size", "64",
                          "--duration", "2s"])
            clean(r, 202)
            eq("mode", r["mode"], "hub")
            eq("channels", r["channels"], 4)
            # 200 subscribers round-robin over 4 channels: 50 each, and every message of a
            # channel reaches each of its 50.
            eq("subscribers per channel", r["hub"]["subscribers_per_channel"], [50, 50])
            fanout_counts_add_up(r, 200, per_channel=50)
            if not 1600 <= r["published"] <= 2400:
                raise AssertionError(f"~2000 published expected, got {r['published']}")
            h = r["hub"]
            eq("publish acks", h["publish_acks"], r["published"])
            for k in ("publish_errors", "subscribe_errors", "publisher_gaps",
                      "publisher_duplicates", "publisher_reordered"):
                eq(f"hub.{k}", h[k], 0)
            eq("error_kinds.hub_errors", r["error_kinds"]["hub_errors"], 0)
            at_least("cpu_ns_per_delivery", r["cpu_ns_per_delivery"], 1)
            # The server saw exactly this run: one subscribe per subscriber and one publish
            # per message in; one reply per command plus the deliveries out; every
            # connection upgraded and closed normally; nothing else moved.
            after = settled_totals(s)
            d = {k: after[k] - before[k] for k in after if isinstance(after[k], int)}
            conns = 202
            eq("server accepted", d["accepted"], conns)
            eq("server upgraded", d["upgraded"], conns)
            eq("server messages_in", d["messages_in"], 200 + r["published"])
            eq("server messages_out", d["messages_out"],
               200 + r["published"] + r["deliveries"])
            eq("server closed normally", after["closed"]["normal"] - before["closed"]["normal"],
               conns)
            for reason, n in after["closed"].items():
                if reason != "normal":
                    eq(f"server closed {reason}", n - before["closed"][reason], 0)
            for k in ("close_timeouts", "accept_emfile"):
                eq(f"server {k}", d[k], 0)
            eq("server subscriptions left", after["hub_subscriptions"], 0)
        c.case("starling hub fanout --mode hub (2 shards, 4 channels)", fanout_hub)

        def connect_subscribe():
            # 100 listeners on one channel; once the server counts them all, one publish
            # through the admin API carrying its CLOCK_MONOTONIC send time. Every listener
            # must get it, in sequence and timed from it, and the hold must end by itself
            # (long before its 20 s) once the last one has it.
            out = os.path.join(c.tmp, "listen.json")
            argv = [c.loadgen, "connect", s.url(), "-c", "100", "--procs", "2", "--threads", "1",
                    "--subscribe", "room:7/news", "--count", "1", "--duration", "20s",
                    "--json", out, "--no-progress"]
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + READY_TIMEOUT_S
                while server_totals(s)["hub_subscriptions"] < 100:
                    if time.monotonic() > deadline or p.poll() is not None:
                        raise AssertionError(f"listeners not subscribed: {server_totals(s)}")
                    time.sleep(0.05)
                t = time.monotonic_ns()
                body = json.dumps({"channel": "room:7/news", "data": {"t": t}}).encode()
                req = urllib.request.Request(f"http://127.0.0.1:{s.api}/publish", data=body)
                with urllib.request.urlopen(req, timeout=5) as r:
                    eq("publish ok", json.load(r)["ok"], True)
                stdout, stderr = p.communicate(timeout=RUN_TIMEOUT_S)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            if p.returncode != 0:
                raise AssertionError(f"exit {p.returncode}\nstdout: {stdout[-1500:]}\n"
                                     f"stderr: {stderr[-800:]}")
            with open(out) as f:
                r = json.load(f)
            clean(r, 100)
            l = r["subscribe"]
            eq("channel", l["channel"], "room:7/news")
            for k, want in (("subscribed", 100), ("refused", 0), ("wanted", 1), ("reached", 100),
                            ("deliveries", 100), ("timed", 100), ("gaps", 0), ("duplicates", 0),
                            ("reordered", 0), ("foreign", 0)):
                eq(f"subscribe.{k}", l[k], want)
            eq("latency samples", r["latency_us"]["count"], 100)
            at_least("latency max", r["latency_us"]["max"], 1)
            if r["latency_us"]["max"] > 10e6 or r["duration_s"] > 15:
                raise AssertionError(f"the hold did not end with the last delivery: {r['timing']}")
            # The listeners closed: their subscriptions go with them (counters lag ~250 ms).
            deadline = time.monotonic() + 10
            while (t := server_totals(s))["hub_subscriptions"] or t["open"]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"subscriptions left behind: {t}")
                time.sleep(0.1)
        c.case("connect --subscribe: one admin publish reaches every listener", connect_subscribe)

        def connect_subscribe_unreached():
            # Nobody publishes: --count 1 is not met when the hold runs out, so the run fails.
            r, _ = c.run(["connect", s.url(), "-c", "10", "--subscribe", "quiet", "--count", "1",
                          "--duration", "1s"], expect_exit=1)
            eq("ok", r["ok"], False)
            eq("subscribed", r["subscribe"]["subscribed"], 10)
            eq("reached", r["subscribe"]["reached"], 0)
            eq("errors", r["errors"], 0)
        c.case("connect --subscribe: --count not reached fails the run", connect_subscribe_unreached)

        def hub_mode_refusals():
            # Raw stamps to a hub: each binary message is refused (1003) and the run fails,
            # rather than measuring nothing and passing.
            r, _ = c.run(["fanout", s.url(), "-c", "4", "--rate", "100/s", "--duration", "1s",
                          "--drain", "500ms"], expect_exit=1)
            eq("ok", r["ok"], False)
            _, err = c.run(["fanout", s.url(), "--mode", "hub", "-c", "2", "--channels", "3"],
                           expect_exit=2)
            if "every channel" not in err:
                raise AssertionError(f"refusal does not say why: {err}")
        c.case("hub: raw mode fails, more channels than subscribers refused", hub_mode_refusals)

    for label, make in (("python websockets", py_server), ("node ws", node_server)):
        with make("echo") as s:
            def echo_peer():
                r, _ = c.run(["echo", s.url(), "-c", "4", "--depth", "4", "--duration", "1s"])
                clean(r, 4)
                echo_counts_add_up(r)
            c.case(f"{label} echo", echo_peer)
        with make("broadcast") as s:
            def fanout_peer():
                r, _ = c.run(["fanout", s.url(), "-c", "20", "--publishers", "1", "--rate",
                              "200/s", "--duration", "1s"])
                clean(r, 21)
                fanout_counts_add_up(r, 20)
            c.case(f"{label} fanout", fanout_peer)

    def fastopen():
        # The client and server bits of net.ipv4.tcp_fastopen for this case only; only
        # sockets that ask for Fast Open use them.
        path = "/proc/sys/net/ipv4/tcp_fastopen"
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write(str(int(old) | 3))
        try:
            with starling_fastopen(args.bin) as s:
                before = tcp_ext("TCPFastOpenActive")
                r, _ = c.run(["connect", s.url(), "-c", "50", "--fastopen", "--duration", "0s"])
                used = tcp_ext("TCPFastOpenActive") - before
        finally:
            with open(path, "w") as f:
                f.write(old)
        clean(r, 50)
        eq("open_peak", r["connections"]["open_peak"], 50)
        # The first connection fetches the cookie; every other one sends its request in
        # the SYN.
        at_least("connections that used Fast Open", used, 49)
    c.case("starling connect --fastopen against --tcp-fastopen", fastopen)

    def explicit_ports():
        # A run past half the ephemeral range on its one (source, target) pair: the load
        # generator binds each connection to a port of its own (connection g: the g-th port
        # of the range) instead of leaving connect() to scan, and a port that is taken
        # falls back to the kernel's choice among the ports the run leaves spare. The range
        # is narrowed for this case only (the server starts first, so its own port and its
        # readiness probe stay outside), and the ports in use are read with ss(8) during the
        # hold.
        path = "/proc/sys/net/ipv4/ip_local_port_range"
        with open(path) as f:
            old = f.read().strip()
        lo, hi, n = 40000, 40999, 600
        seen = []
        with starling(args.bin, "echo") as s:
            # Ten ports of the planned block already held towards the same target: those
            # connections must fall back (connect() finds the 4-tuple in use). The blockers
            # end with a reset, so no TIME_WAIT holds their ports for the next run.
            # Ports of the block someone else already holds (TIME_WAITs left by earlier
            # tests): those connections fall back too.
            taken = 0
            for port in range(lo, lo + n):
                probe = socket.socket()
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken += 1
                probe.close()
            blockers, held = [], set()
            for port in range(lo + 10, lo + n):
                if len(blockers) == 10:
                    break
                b = socket.socket()
                b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                try:
                    b.bind(("127.0.0.1", port))  # a TIME_WAIT of someone else may hold it
                except OSError:
                    b.close()
                    continue
                b.connect(("127.0.0.1", s.port))
                blockers.append(b)
                held.add(port)
            with open(path, "w") as f:
                f.write(f"{lo} {hi}")
            try:
                def look():
                    time.sleep(1.5)
                    out = subprocess.run(
                        ["ss", "-Htn", "state", "established", f"( dport = :{s.port} )"],
                        capture_output=True, text=True).stdout
                    seen.extend(int(line.split()[-2].rsplit(":", 1)[1])
                                for line in out.splitlines() if line.strip())
                t = threading.Thread(target=look)
                t.start()
                r, _ = c.run(["connect", s.url(), "-c", str(n), "--duration", "3s"])
                t.join()
            finally:
                with open(path, "w") as f:
                    f.write(old)
                for b in blockers:
                    b.close()
        # ss lists the blockers too (same destination); none of ours can hold their ports.
        eq("blockers", len(held), 10)
        seen = [p for p in seen if p not in held]
        clean(r, n)
        eq("local_ports (first and last assigned)", r["connections"]["local_ports"],
           [lo, lo + n - 1])
        fallbacks = r["connections"]["port_fallbacks"]
        eq("connections seen by ss", len(seen), n)
        eq("distinct local ports", len(set(seen)), n)
        own = sum(lo <= p < lo + n for p in seen)
        # Every connection whose own port was free holds it; the others hold spare ports.
        eq("connections on their own port", own, n - fallbacks)
        if any(not (lo + n <= p <= hi) for p in seen if not (lo <= p < lo + n)):
            raise AssertionError(f"a fallback outside the spare ports: {sorted(seen)[-5:]}")
        at_least("fallbacks (ten ports held by others)", fallbacks, 10)
        if fallbacks > 10 + taken + n // 20:
            raise AssertionError(f"{fallbacks} of {n} ports were taken ({taken} before the run)")
    c.case("starling connect past half the port range (ports chosen per connection)",
           explicit_ports)

    def first_message():
        # --first-message with {n}: every connection subscribes itself to a channel of its
        # own on the hub, so the server must list c0..c19, one subscriber each, while they
        # are held; each subscribe's reply counts as received.
        with starling_hub(args.bin, 2) as s:
            listed = []

            def look():
                time.sleep(1.0)
                with urllib.request.urlopen(f"http://127.0.0.1:{s.api}/channels",
                                            timeout=5) as resp:
                    listed.extend(json.load(resp)["channels"])
            t = threading.Thread(target=look)
            t.start()
            r, _ = c.run(["connect", s.url(), "-c", "20", "--duration", "2s", "--first-message",
                          '{"op":"subscribe","id":1,"channel":"c{n}"}'])
            t.join()
        clean(r, 20)
        eq("messages sent", r["messages_sent"], 20)
        eq("replies received", r["messages_received"], 20)
        eq("channels", sorted((ch["name"], ch["subscribers"]) for ch in listed),
           sorted((f"c{i}", 1) for i in range(20)))
        c.run(["echo", "ws://127.0.0.1:9/", "--first-message", "x"], expect_exit=2)
        c.run(["connect", "ws://127.0.0.1:9/", "--first-message", "x", "--subscribe", "a"],
              expect_exit=2)
    c.case("starling connect --first-message with {n}", first_message)

    def refused():
        port = free_port()  # nothing listens there once the probe socket is closed
        r, _ = c.run(["connect", f"ws://127.0.0.1:{port}/", "-c", "5", "--duration", "1s"],
                     expect_exit=1)
        eq("refused", r["failures"]["refused"], 5)
        eq("handshakes", r["connections"]["handshakes"], 0)
        eq("errors", r["errors"], 5)
        eq("ok", r["ok"], False)
    c.case("refused port -> refused, exit 1", refused)

    for status in (403, 404):
        def non_101(status=status):
            with py_server(f"status:{status}") as s:
                r, _ = c.run(["echo", s.url(), "-c", "3", "--duration", "1s"], expect_exit=1)
            eq(f"http_status:{status}", r["failures"].get(f"http_status:{status}"), 3)
            eq("handshakes", r["connections"]["handshakes"], 0)
            eq("errors", r["errors"], 3)
        c.case(f"HTTP {status} -> http_status:{status}, exit 1", non_101)

    def reset():
        with py_server("reset") as s:
            r, _ = c.run(["connect", s.url(), "-c", "3", "--duration", "1s"], expect_exit=1)
        # A reset before the request is written shows as reset; one that races the request
        # may show as the connection closing: either way, no handshake and 3 failures.
        eq("reset + closed", r["failures"]["reset"] + r["failures"]["closed"], 3)
        at_least("reset", r["failures"]["reset"], 1)
        eq("handshakes", r["connections"]["handshakes"], 0)
    c.case("reset -> reset, exit 1", reset)

    for kind in ("random", "frames", "json"):
        def garbage(kind=kind):
            # A valid 101, then hostile bytes: every scenario ends with exit 1, each
            # connection's fault counted, and no panic.
            runs = (["connect", "-c", "20", "--duration", "1s"],
                    ["echo", "-c", "10", "--duration", "1s"],
                    ["fanout", "-c", "10", "--duration", "1s", "--drain", "500ms"],
                    ["fanout", "--mode", "hub", "-c", "10", "--duration", "1s", "--drain",
                     "500ms"],
                    ["connect", "-c", "10", "--subscribe", "bench.0", "--duration", "1s"])
            with py_server(f"garbage:{kind}") as s:
                for argv in runs:
                    r, err = c.run([argv[0], s.url(), *argv[1:]], expect_exit=1)
                    if "panicked" in err:
                        raise AssertionError(f"{argv}: {err[-800:]}")
                    k = r["error_kinds"]
                    faults = k["protocol_errors"] + k["mismatches"] + k["dropped"]
                    at_least(f"{argv} faults", faults, 1)
                    eq(f"{argv} connect failures", k["connect_failures"], 0)
                    if kind == "random":
                        at_least(f"{argv} protocol errors", k["protocol_errors"], 10)
        c.case(f"valid 101 then hostile bytes ({kind}) -> counted, exit 1", garbage)

    def over_the_limit():
        _, err = c.run(["connect", "ws://127.0.0.1:9/", "-c", "1000000"], expect_exit=2)
        for needle in ("RLIMIT_NOFILE", "--procs", "sysctl/check"):
            if needle not in err:
                raise AssertionError(f"refusal does not mention {needle}: {err}")
    c.case("plan over the open-file limit -> refused, exit 2", over_the_limit)

    shutil.rmtree(c.tmp, ignore_errors=True)
    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
