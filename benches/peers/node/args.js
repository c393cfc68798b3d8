'use strict';
// The command line both Node peers take: [--host H] [--port P] [--app echo|broadcast].
// `name` is the script's file name, for messages; a bad argument exits with status 2.

function parseArgs(name, argv) {
  const usage = (msg) => {
    process.stderr.write(`${name}: ${msg}\n`);
    process.stderr.write(`usage: node ${name} [--host H] [--port P] [--app echo|broadcast]\n`);
    process.exit(2);
  };
  const opts = { host: '127.0.0.1', port: 9001, app: 'echo' };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag === '--host') opts.host = value;
    else if (flag === '--port') opts.port = Number(value);
    else if (flag === '--app') opts.app = value;
    else usage(`unknown argument ${flag}`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    usage(`bad --port ${opts.port}`);
  }
  if (opts.app !== 'echo' && opts.app !== 'broadcast') usage(`unknown app ${opts.app}`);
  return opts;
}

module.exports = { parseArgs };
