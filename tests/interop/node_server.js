'use strict';
// A WebSocket server nobody here wrote (Node's `ws`), for the load generator's tests.
//
//   node node_server.js --app echo|broadcast [--port 0]
//
// Prints `listening <port>` once it accepts connections, then serves until killed.
// echo: every message goes back to its sender, same type. broadcast: every message goes
// to every open connection, the sender included.

const { WebSocketServer, WebSocket } = require('ws');

const opts = { app: 'echo', port: 0 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (argv[i] === '--app') opts.app = argv[i + 1];
  else if (argv[i] === '--port') opts.port = Number(argv[i + 1]);
  else {
    process.stderr.write(`node_server.js: unknown argument ${argv[i]}\n`);
    process.exit(2);
  }
}
if (opts.app !== 'echo' && opts.app !== 'broadcast') {
  process.stderr.write(`node_server.js: unknown app ${opts.app}\n`);
  process.exit(2);
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: opts.port,
  backlog: 4096,
  perMessageDeflate: false,
});

wss.on('listening', () => {
  process.stdout.write(`listening ${wss.address().port}\n`);
});

wss.on('connection', (ws) => {
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
