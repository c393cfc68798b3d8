#!/usr/bin/env python3
"""Clients on several channels each: how many writes the server makes per delivery.

    benches/scripts/multichannel.py --port PORT --api-port API [--conns 200] [--channels 10]
                                    [--rate 20] [--duration 8]

Against `starling serve --app hub` (anonymous clients allowed; its admin API on API, read
for its counters). Every connection subscribes to the same K channels `multi.0 ..
multi.{K-1}`; a publisher connection sends RATE rounds per second, each round one publish
to every channel in a single TCP write, so the server reads a round in one read and every
subscriber has K deliveries to receive from the same pass of its shard. The clients read
and count frames (raw sockets, a minimal frame parser: the server's frames are unmasked).
Printed: deliveries the clients counted, the server's `messages_out` and `write_calls` over
the run (GET /stats), and writes per delivery. Everything runs in this process and stops by
itself.
"""

import argparse
import asyncio
import base64
import json
import os
import time
import urllib.request


def masked_text(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


class Counter:
    def __init__(self):
        self.frames = 0


async def client(port, channels, counter, ready, stop):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head)
    for i, ch in enumerate(channels):
        cmd = json.dumps({"op": "subscribe", "id": i + 1, "channel": ch}).encode()
        writer.write(masked_text(cmd))
    await writer.drain()
    buf = b""
    replies = 0
    while not stop.is_set():
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.2)
        except asyncio.TimeoutError:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < off + n:
                break
            if replies < len(channels):
                replies += 1
                if replies == len(channels):
                    ready.release()
            else:
                counter.frames += 1
            buf = buf[off + n:]
    writer.close()


def get_stats(api):
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/stats", timeout=5) as r:
        return json.load(r)["total"]


async def publisher(port):
    """A connection for publishing; the server's replies are read and dropped."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")

    async def drop():
        while await reader.read(65536):
            pass
    return writer, asyncio.create_task(drop())


def round_bytes(channels, seq):
    return b"".join(
        masked_text(json.dumps({"op": "publish", "id": seq, "channel": ch,
                                "data": {"n": seq}}).encode())
        for ch in channels)


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api-port", type=int, required=True)
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--channels", type=int, default=10)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--duration", type=float, default=8)
    a = p.parse_args()
    channels = [f"multi.{i}" for i in range(a.channels)]
    counter, stop = Counter(), asyncio.Event()
    ready = asyncio.Semaphore(0)
    tasks = [asyncio.create_task(client(a.port, channels, counter, ready, stop))
             for _ in range(a.conns)]
    for _ in range(a.conns):
        await asyncio.wait_for(ready.acquire(), 30)
    await asyncio.sleep(0.6)  # the shards publish their counters every 250 ms
    pub, pub_reader = await publisher(a.port)
    before = get_stats(a.api_port)
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < a.duration:
        pub.write(round_bytes(channels, seq))
        await pub.drain()
        seq += 1
        await asyncio.sleep(max(0.0, start + seq / a.rate - time.monotonic()))
    expected = seq * a.channels * a.conns
    deadline = time.monotonic() + 10
    while counter.frames < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.6)
    after = get_stats(a.api_port)
    stop.set()
    pub.close()
    pub_reader.cancel()
    await asyncio.gather(*tasks, pub_reader, return_exceptions=True)
    out = after["messages_out"] - before["messages_out"]
    writes = after["write_calls"] - before["write_calls"]
    print(json.dumps({
        "conns": a.conns, "channels": a.channels, "publishes": seq,
        "expected_deliveries": expected, "counted_deliveries": counter.frames,
        "server_messages_out": out, "server_write_calls": writes,
        "writes_per_delivery": round(writes / max(out, 1), 4),
    }))


if __name__ == "__main__":
    asyncio.run(main())
