#!/usr/bin/env python3
"""Drives a Starling server with the Python `websockets` client (an independent RFC 6455
implementation): echo of text/binary/empty/large messages, ping/pong, subprotocol selection,
and a clean close handshake with the code echoed. Prints one line per check; exits 1 on the
first failure.

usage: py_client.py ws://HOST:PORT/ [expected-subprotocol]"""
import asyncio, os, sys

import websockets


async def main(url, want_proto):
    kwargs = {"max_size": 4 * 1024 * 1024, "compression": None}
    if want_proto:
        kwargs["subprotocols"] = ["nope.v9", want_proto]
    async with websockets.connect(url, **kwargs) as ws:
        if want_proto:
            assert ws.subprotocol == want_proto, f"subprotocol {ws.subprotocol!r}"
            print("ok subprotocol", ws.subprotocol)
        cases = ["héllo wörld ✓", b"\x00\x01\xff" * 10, "", b"", os.urandom(70_000),
                 "x" * (1024 * 1024 - 64)]
        for m in cases:
            await ws.send(m)
            r = await asyncio.wait_for(ws.recv(), 10)
            assert type(r) is type(m) and r == m, f"echo mismatch for {type(m).__name__} {len(m)}"
        print("ok echo", len(cases))
        # Many in flight, order kept.
        for i in range(500):
            await ws.send(f"m{i}")
        for i in range(500):
            r = await asyncio.wait_for(ws.recv(), 10)
            assert r == f"m{i}", f"order: got {r!r} want m{i}"
        print("ok pipelined 500")
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        print("ok ping")
        await ws.close(code=4001, reason="done here")
        assert ws.close_code == 4001, f"close code {ws.close_code}"
        print("ok close", ws.close_code)


asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
