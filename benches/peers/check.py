#!/usr/bin/env python3
"""Checks that each peer server really does echo and broadcast, with three clients.

    python3 check.py                     # start every peer (and, with --starling,
                                         # target/release/starling) in both apps, check
    python3 check.py --url ws://127.0.0.1:9001/ --app echo   # check a running server

echo: each client sends text and binary messages (some pipelined) and must get
each one back, in order, with the same type; a ping among them gets its pong.
broadcast: with all three clients open, each sends one text and one binary
message and a ping; every client must receive all six messages, the sender
included, and its pong.
Both: a ping on an idle connection gets its pong, and every client's close
handshake is answered by the server.

fastwebsockets is checked twice, once per write mode (`--writes direct`, the
default, and `--writes buffered`), since the two share no connection code; its
command line is checked too (the default mode, and a bad mode refused).

Uses the Python `websockets` package, installed with pip when it is missing. The
servers it starts are stopped by their own process handle, never by name.
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
CLIENTS = 3
RECV_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 10.0

try:
    from websockets.asyncio.client import connect
except ImportError:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "websockets"], check=True)
    from websockets.asyncio.client import connect


def server_commands(with_starling):
    """(name, argv-for-port-and-app) for every server this check can start."""
    release = os.path.join(HERE, "target", "release")
    servers = [
        ("tokio-tungstenite",
         lambda port, app: [os.path.join(release, "peer-tokio-tungstenite"),
                            "--listen", f"127.0.0.1:{port}", "--app", app]),
        ("fastwebsockets",
         lambda port, app: [os.path.join(release, "peer-fastwebsockets"),
                            "--listen", f"127.0.0.1:{port}", "--app", app, "--writes", "direct"]),
        ("fastwebsockets-buffered",
         lambda port, app: [os.path.join(release, "peer-fastwebsockets"),
                            "--listen", f"127.0.0.1:{port}", "--app", app, "--writes", "buffered"]),
        ("node-ws",
         lambda port, app: ["node", os.path.join(HERE, "node", "server.js"),
                            "--port", str(port), "--app", app]),
        ("uws",
         lambda port, app: ["node", os.path.join(HERE, "node", "uws-server.mjs"),
                            "--port", str(port), "--app", app]),
    ]
    if with_starling:
        starling = os.path.join(ROOT, "target", "release", "starling")
        servers.insert(0, ("starling",
                           lambda port, app: [starling, "serve", "--listen", f"127.0.0.1:{port}",
                                              "--app", app, "--shards", "1"]))
    return servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, port):
    """Polls the port until it accepts; fails if the server exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {READY_TIMEOUT_S}s")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)


async def open_clients(url):
    """Opens the clients; each must answer a ping sent while nothing else is in flight."""
    clients = [await connect(url, compression=None) for _ in range(CLIENTS)]
    for ws in clients:
        pong = await ws.ping(b"idle ping")
        await asyncio.wait_for(pong, RECV_TIMEOUT_S)
    return clients


async def check_echo(url):
    clients = await open_clients(url)
    try:
        for i, ws in enumerate(clients):
            sent = [f"hello from {i}", f"héllo ✓ {i}".encode(), "x" * 70_000, bytes(range(256))]
            sent += [f"pipelined {i}-{k}" for k in range(50)]
            for m in sent:
                await ws.send(m)
            # A ping in the middle of the stream must be answered, and not echoed.
            # (awaited after the echoes: the client reads the pong only once it has
            # drained the messages queued before it).
            pong = await ws.ping(b"are you there")
            for m in sent:
                got = await recv(ws)
                if got != m or type(got) is not type(m):
                    raise AssertionError(f"client {i}: sent {m!r:.40} got {got!r:.40}")
            await asyncio.wait_for(pong, RECV_TIMEOUT_S)
    finally:
        await close_all(clients)


async def close_all(clients):
    """Closes each client and requires the server's close frame in reply."""
    for ws in clients:
        await ws.close()
    for i, ws in enumerate(clients):
        # websockets reports 1006 when no close frame came back.
        if ws.close_code in (None, 1006):
            raise AssertionError(f"client {i}: server did not answer the close handshake")


async def check_broadcast(url):
    clients = await open_clients(url)
    try:
        # Every client is open (handshake done) before anything is published.
        sent, pongs = [], []
        for i, ws in enumerate(clients):
            for m in (f"text from {i}", f"binary from {i}".encode()):
                await ws.send(m)
                sent.append(m)
            # Answered by the reader while the writer may be delivering: the pong
            # must arrive and must not be broadcast.
            pongs.append(await ws.ping(f"ping from {i}".encode()))
        for i, ws in enumerate(clients):
            got = [await recv(ws) for _ in sent]
            if sorted(map(repr, got)) != sorted(map(repr, sent)):
                raise AssertionError(f"client {i}: expected {sent!r} got {got!r}")
            await asyncio.wait_for(pongs[i], RECV_TIMEOUT_S)
    finally:
        await close_all(clients)


CHECKS = {"echo": check_echo, "broadcast": check_broadcast}


def check_fastwebsockets_cli():
    """The write mode defaults to direct, and a mode it does not know is refused."""
    binary = os.path.join(HERE, "target", "release", "peer-fastwebsockets")
    bad = subprocess.run([binary, "--writes", "batched"], check=False, capture_output=True,
                         timeout=10)
    if bad.returncode != 2:
        raise AssertionError(f"--writes batched: exit status {bad.returncode}, expected 2")
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_ready(proc, port)
        finally:
            stop(proc)
        log.seek(0)
        banner = log.read().decode(errors="replace")
    if "writes Direct" not in banner:
        raise AssertionError(f"without --writes the banner says {banner.strip()!r}")


def run_all(with_starling):
    passed = failed = 0
    try:
        check_fastwebsockets_cli()
        print(f"PASS {'fastwebsockets':24} cli       (default --writes direct, bad value refused)")
        passed += 1
    except (AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"FAIL {'fastwebsockets':24} cli       {type(e).__name__}: {e}")
        failed += 1
    for name, command in server_commands(with_starling):
        for app, check in CHECKS.items():
            port = free_port()
            argv = command(port, app)
            # A file, not a pipe: a chatty server must never block on a full pipe.
            with tempfile.TemporaryFile() as log:
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
                try:
                    wait_ready(proc, port)
                    asyncio.run(check(f"ws://127.0.0.1:{port}/"))
                    print(f"PASS {name:24} {app:9} ({CLIENTS} clients)")
                    passed += 1
                except Exception as e:  # noqa: BLE001 -- report every server, not just the first failure
                    print(f"FAIL {name:24} {app:9} {type(e).__name__}: {e}")
                    failed += 1
                    stop(proc)
                    log.seek(0)
                    err = log.read().decode(errors="replace").strip()
                    if err:
                        print(f"     server stderr: {err[-500:]}")
                finally:
                    stop(proc)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="check an already running server instead of starting the peers")
    p.add_argument("--app", choices=sorted(CHECKS), help="with --url: which app it runs")
    p.add_argument("--starling", action="store_true", help="also start and check target/release/starling")
    args = p.parse_args()
    if args.url:
        if not args.app:
            p.error("--url needs --app")
        asyncio.run(CHECKS[args.app](args.url))
        print(f"PASS {args.url} {args.app}")
        return 0
    return run_all(args.starling)


if __name__ == "__main__":
    sys.exit(main())
