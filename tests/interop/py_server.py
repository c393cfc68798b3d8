#!/usr/bin/env python3
"""A WebSocket server nobody here wrote (Python `websockets`), for the load generator's tests.

    python3 py_server.py --app echo|broadcast|status:403|reset [--port 0]

Prints `listening <port>` on stdout once it accepts connections, then serves until killed.

  echo        every message goes back to its sender, same type
  broadcast   every message goes to every open connection, the sender included
  status:N    answers every upgrade request with HTTP status N (never 101)
  reset       accepts, then resets the connection (RST) without answering

The last two use plain sockets, not `websockets`: they are the failures the load generator
must name correctly.
"""

import argparse
import asyncio
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


async def serve_raw(app, port):
    async def answer(reader, writer):
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
    elif args.app == "reset" or args.app.startswith("status:"):
        asyncio.run(serve_raw(args.app, args.port))
    else:
        p.error(f"unknown app {args.app}")


if __name__ == "__main__":
    main()
