// Drives a Starling server with the Node `ws` client (an independent RFC 6455 implementation):
// echo of text/binary/empty/large messages, ping/pong, subprotocol selection, many messages in
// flight, and a clean close handshake with the code echoed. Exits 1 on the first failure.
//
// usage: node node_client.js ws://HOST:PORT/ [expected-subprotocol]
'use strict';
const WebSocket = require('ws');
const crypto = require('crypto');

const [url, wantProto] = process.argv.slice(2);
const fail = (why) => { console.error('FAIL', why); process.exit(1); };
setTimeout(() => fail('timed out'), 20000).unref();

const ws = new WebSocket(url, wantProto ? ['nope.v9', wantProto] : [], { perMessageDeflate: false });
const queue = [];
let waiter = null;
ws.on('message', (data, isBinary) => {
  const m = { data: Buffer.from(data), isBinary };
  if (waiter) { const w = waiter; waiter = null; w(m); } else queue.push(m);
});
const next = () => new Promise((res) => { if (queue.length) res(queue.shift()); else waiter = res; });
ws.on('error', (e) => fail(`error ${e.message}`));

ws.on('open', async () => {
  if (wantProto) {
    if (ws.protocol !== wantProto) fail(`subprotocol ${ws.protocol}`);
    console.log('ok subprotocol', ws.protocol);
  }
  const cases = [
    ['text', Buffer.from('héllo wörld ✓')], ['binary', Buffer.from([0, 1, 255])],
    ['text', Buffer.alloc(0)], ['binary', crypto.randomBytes(70000)],
    ['text', Buffer.alloc(1024 * 1024 - 64, 'y')],
  ];
  for (const [kind, buf] of cases) {
    ws.send(kind === 'text' ? buf.toString() : buf, { binary: kind === 'binary' });
    const m = await next();
    if (m.isBinary !== (kind === 'binary') || !m.data.equals(buf)) fail(`echo ${kind} ${buf.length}`);
  }
  console.log('ok echo', cases.length);
  for (let i = 0; i < 500; i++) ws.send(`m${i}`);
  for (let i = 0; i < 500; i++) {
    const m = await next();
    if (m.data.toString() !== `m${i}`) fail(`order at ${i}: ${m.data}`);
  }
  console.log('ok pipelined 500');
  await new Promise((res) => { ws.once('pong', (d) => { if (d.toString() !== 'ping!') fail('pong payload'); res(); }); ws.ping('ping!'); });
  console.log('ok ping');
  ws.on('close', (code, reason) => {
    if (code !== 4002) fail(`close code ${code}`);
    console.log('ok close', code, reason.toString());
    process.exit(0);
  });
  ws.close(4002, 'bye');
});
