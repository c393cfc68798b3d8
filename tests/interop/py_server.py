#!/usr/bin/env python3
"""A WebSocket server nobody here wrote (Python `websockets`), for the load generator's tests.

    python3 py_server.py --app echo|broadcast|status:403|reset|garbage:KIND [--port 0]

Prints `listening <port>` on stdout once it accepts connections, then serves until killed.

  echo        every message goes back to its sender, same type
  broadcast   every message goes to every open connection, the sender included
  status:N    answers every upgrade request with HTTP status N (never 101)
  reset       accepts, then resets the connection (RST) without answering
  garbage:K   answers a valid 101, then sends 200 chunks of hostile bytes, 1 ms apart:
              K = random (any bytes), frames (frame headers with random bits, opcodes and
              lengths, some lying), json (well-formed text frames whose JSON mimics the
              hub's deliveries and replies with out-of-range and mistyped values)

The last three use plain sockets, not `websockets`: they are the failures the load generator
must name correctly (and survive).
"""

import argparse
import asyncio
import base64
import hashlib
import os
import random
import socket
import struct
import sys

try:
    from websockets.asyncio.server import broadcast, serve
except ImportError:  # pragma: no cover - the test script installs it
    sys.exit("py_server.py needs the websockets package: python3 -m pip install websockets")


async def echo(ws):
    async for message in ws:
        await ws.send(message)


CONNECTIONS = set()


async def fan_out(ws):
    CONNECTIONS.add(ws)
    try:
        async for message in ws:
            broadcast(CONNECTIONS, message)
    finally:
        CONNECTIONS.discard(ws)


async def serve_ws(app, port):
    handler = echo if app == "echo" else fan_out
    # No compression: the load generator never offers it, and stating it keeps runs
    # comparable. max_size=None: the load generator decides message sizes.
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None,
                     ping_interval=None, backlog=4096) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"listening {bound}", flush=True)
        await asyncio.get_running_loop().create_future()


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def header(b0, n):
    """A frame header with first byte b0 announcing n payload bytes (unmasked)."""
    if n < 126:
        return bytes([b0, n])
    if n < 65536:
        return bytes([b0, 126]) + n.to_bytes(2, "big")
    return bytes([b0, 127]) + n.to_bytes(8, "big")


def frame(opcode, body, fin=True):
    """An unmasked server frame."""
    return header((0x80 if fin else 0) | opcode, len(body)) + body


def hostile_chunk(kind, rnd):
    if kind == "random":
        return os.urandom(rnd.randint(1, 300))
    if kind == "frames":
        b0 = (rnd.random() < 0.8) << 7 | (rnd.random() < 0.1) << 6
        b0 |= rnd.choice([0, 1, 2, 3, 8, 9, 10, 11, 15])
        body = os.urandom(rnd.choice([0, 1, 5, 125, 126, 200, 1000]))
        n = len(body) if rnd.random() < 0.8 else rnd.choice([126, 127, 70000, 2**40])
        head = header(b0, n)
        if rnd.random() < 0.1:  # a mask bit a server must not set
            head = bytes([head[0], head[1] | 0x80]) + head[2:] + os.urandom(4)
        return head + body
    ch = rnd.choice(['"bench.0"', '"news"', '"bench.99999999999999999999"', '""', "1", "null"])
    seq = rnd.choice(["1", "0", "-1", "18446744073709551615", "18446744073709551616", "1e3",
                      '"7"', str(rnd.randint(0, 50))])
    data = rnd.choice(['"x"', '{"t":%d,"p":0,"n":%d}' % (rnd.randint(0, 2**64), rnd.randint(0, 99)),
                       "[" * 200 + "]" * 200, '"' + "a" * rnd.randint(0, 3000) + '"',
                       '{"t":-1,"p":-1,"n":-1}', "truefalse"])
    shape = rnd.choice(['{"ch":%s,"seq":%s,"data":%s}', '{"id":%s,"ok":true}',
                        '{"id":1,"error":{"code":"x"}}', '{"type":"join","ch":%s}',
                        '{"ch":%s,"seq":%s'])
    body = shape.replace("%s", ch, 1).replace("%s", seq, 1).replace("%s", data, 1)
    return frame(1, body.replace("%s", "1").encode())


async def serve_raw(app, port):
    async def garbage(reader, writer, kind):
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        rnd = random.Random(id(writer))
        for _ in range(200):
            writer.write(hostile_chunk(kind, rnd))
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.5)
        writer.close()

    async def answer(reader, writer):
        if app.startswith("garbage:"):
            try:
                await garbage(reader, writer, app.split(":", 1)[1])
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                    StopIteration):
                writer.close()
            return
        if app == "reset":
            sock = writer.get_extra_info("socket")
            # SO_LINGER with a zero timeout turns close() into a RST.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        code = int(app.split(":", 1)[1])
        body = b"no upgrade here\n"
        writer.write(b"HTTP/1.1 %d Refused\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (code, len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=4096)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--app", default="echo")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.app in ("echo", "broadcast"):
        asyncio.run(serve_ws(args.app, args.port))
    elif args.app == "reset" or args.app.startswith(("status:", "garbage:")):
        asyncio.run(serve_raw(args.app, args.port))
    else:
        p.error(f"unknown app {args.app}")


if __name__ == "__main__":
    main()
