// The uWebSockets peer: uWebSockets.js (the C++ uWebSockets/uSockets core behind a Node
// binding; npm package `uws-pack`, a repack of the project's own binaries) running echo
// and broadcast the way its examples write them. The event loop is uSockets' own, on one
// thread, so like the other peers this server works on one core (compare.sh pins it).
//
//   node uws-server.mjs [--host H] [--port P] [--app echo|broadcast]
//
// echo: every text or binary message goes back to its sender, same opcode.
// broadcast: every socket subscribes to one topic and every text or binary message is
// published to it (app.publish, so the sender gets it too): uWS's own pub/sub, which
// encodes a message once for all subscribers.
// Limits match Starling's defaults: 16 MiB messages, 1 MiB of backpressure per socket
// (uWS skips a subscriber above it until it catches up), no compression, idle timeout off.

import { App, DISABLED } from 'uws-pack';
import args from './args.js';

const { parseArgs } = args;

const opts = parseArgs('uws-server.mjs', process.argv.slice(2));
const TOPIC = 'all';
const app = App();

app.ws('/*', {
  compression: DISABLED,
  maxPayloadLength: 16 * 1024 * 1024,
  maxBackpressure: 1024 * 1024,
  idleTimeout: 0,
  open: (ws) => {
    if (opts.app === 'broadcast') ws.subscribe(TOPIC);
  },
  message: opts.app === 'echo'
    ? (ws, message, isBinary) => { ws.send(message, isBinary); }
    : (ws, message, isBinary) => { app.publish(TOPIC, message, isBinary); },
});

app.listen(opts.host, opts.port, (token) => {
  if (!token) {
    process.stderr.write(`uws: could not listen on ${opts.host}:${opts.port}\n`);
    process.exit(1);
  }
  process.stderr.write(`uws: listening on ${opts.host}:${opts.port} app ${opts.app}\n`);
});
