#!/usr/bin/env python3
"""Idle-connection density of a WebSocket server: its RSS before and after N upgraded, idle
connections, as bytes per connection (user space). Raw sockets, one upgrade request each, so the
client side costs little and nothing but the handshake reaches the server.

usage: density.py HOST:PORT SERVER_PID [N] [--subscribe]

With --subscribe (for `starling serve --app hub`), each connection then subscribes to one
channel (100 channels, round robin) and waits for the ok reply, so the figure is the memory of
an idle *subscribed* connection."""
import base64, json, os, socket, struct, sys, time


def masked_text(payload: bytes) -> bytes:
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + key + body


def read_frame(s, buf: bytes):
    """Reads one unfragmented server frame (short payload); returns (payload, rest)."""
    while len(buf) < 2 or len(buf) < 2 + (buf[1] & 0x7F):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed while waiting for a reply")
        buf += chunk
    n = buf[1] & 0x7F
    assert n < 126, "short replies only"
    return buf[2:2 + n], buf[2 + n:]

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")

def main():
    host, port = sys.argv[1].rsplit(":", 1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    subscribe = "--subscribe" in sys.argv
    pid, n = int(args[1]), int(args[2]) if len(args) > 2 else 15000
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
        if subscribe:
            cmd = json.dumps({"op": "subscribe", "id": i, "channel": f"c{i % 100}"})
            s.sendall(masked_text(cmd.encode()))
            reply, _ = read_frame(s, resp.split(b"\r\n\r\n", 1)[1])
            if not json.loads(reply).get("ok"):
                raise SystemExit(f"connection {i}: {reply!r}")
        socks.append(s)
    took = time.time() - t0
    time.sleep(1.0)
    after = rss(pid)
    per = (after - before) / n
    print(f"subscribed={subscribe} connections={n} open_secs={took:.2f} rss_before={before} rss_after={after} "
          f"bytes_per_conn={per:.1f}")
    for s in socks:
        s.close()

main()
