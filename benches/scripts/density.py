#!/usr/bin/env python3
"""Idle-connection density of a WebSocket server: its RSS before and after N upgraded, idle
connections, as bytes per connection (user space). Raw sockets, one upgrade request each, so the
client side costs little and nothing but the handshake reaches the server.

usage: density.py HOST:PORT SERVER_PID [N]"""
import base64, os, socket, sys, time

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")

def main():
    host, port = sys.argv[1].rsplit(":", 1)
    pid, n = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 15000
    time.sleep(0.5)
    before = rss(pid)
    socks, t0 = [], time.time()
    for i in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"connection {i} closed during handshake")
            resp += chunk
        if not resp.startswith(b"HTTP/1.1 101"):
            raise SystemExit(f"connection {i}: {resp[:40]!r}")
        socks.append(s)
    took = time.time() - t0
    time.sleep(1.0)
    after = rss(pid)
    per = (after - before) / n
    print(f"connections={n} open_secs={took:.2f} rss_before={before} rss_after={after} "
          f"bytes_per_conn={per:.1f}")
    for s in socks:
        s.close()

main()
