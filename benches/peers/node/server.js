'use strict';
// The Node `ws` peer: echo and broadcast written the way the ws README writes
// them. Node runs JavaScript on one thread, so like the Rust peers this server
// does its work on one core (compare.sh pins it with taskset).
//
//   node server.js [--host H] [--port P] [--app echo|broadcast]
//
// echo: every text or binary message goes back to its sender, same opcode.
// broadcast: every text or binary message goes to every open client, the
// sender included, by iterating wss.clients.
// Ping, pong and close are answered by ws itself and never echoed.
//
// bufferutil (an optional dependency ws recommends for speed) is used when it
// is installed; UTF-8 validation uses Node's built-in buffer.isUtf8.

const { WebSocketServer, WebSocket } = require('ws');
const { parseArgs } = require('./args.js');

// A fan-out run opens 10,000 connections in a burst; Node's default backlog of
// 511 would make the kernel drop SYNs. The kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG = 4096;

const opts = parseArgs('server.js', process.argv.slice(2));
const wss = new WebSocketServer({
  host: opts.host,
  port: opts.port,
  backlog: LISTEN_BACKLOG,
  perMessageDeflate: false, // the default, stated: no peer compresses
});

wss.on('connection', (ws) => {
  // A client that vanishes mid-write raises 'error'; without a listener that
  // would take the whole server down.
  ws.on('error', () => {});
  if (opts.app === 'echo') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else {
    ws.on('message', (data, isBinary) => {
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  }
});

wss.on('listening', () => {
  const { address, port } = wss.address();
  process.stderr.write(`node-ws: listening on ${address}:${port} app ${opts.app}\n`);
});

wss.on('error', (err) => {
  process.stderr.write(`node-ws: ${err.message}\n`);
  process.exit(1);
});
