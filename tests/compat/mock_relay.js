#!/usr/bin/env node
'use strict';
// A stand-in for sockrelay-relay's *compatibility mode only*, following the
// README's relay wire API (not the original server). It exists to check the
// compat harness itself (tests/compat_node.rs runs the same checks against it
// as against the real relay, as a control). It is not a relay to use.
//
//   node mock_relay.js -p PORT -b ADDR      prints "listening on ADDR:PORT" on stderr
//
// GET /?mode=origin&token=T  -> 101 + Sockrelay-Session, then the binary msgpack
//                               message {type:"start", id}, then ping
//                               "sockrelay session <id>"
// GET /?mode=dest&id=U&token=T -> 400 malformed, 404 unknown id, 403 wrong token,
//                               409 already has a dest, else 101 and pings
//                               "sockrelay peer-joined <addr>" to both sides
// Data frames are forwarded unchanged (binary stays binary, text stays text).

const http = require('http');
const url = require('url');
const crypto = require('crypto');
const WebSocket = require('ws');
const msgpack = require('msgpack-lite');
const uuid4 = require('uuid/v4');

let port = 8080;
let bind = '127.0.0.1';
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '-p') port = Number(argv[++i]);
  else if (argv[i] === '-b') bind = argv[++i];
  else { process.stderr.write(`mock-relay: unknown argument ${argv[i]}\n`); process.exit(64); }
}

const log = (s) => process.stderr.write(`mock-relay: ${s}\n`);
const sessions = new Map(); // id -> {token, origin, dest}
const wss = new WebSocket.Server({noServer: true, perMessageDeflate: false});
wss.on('headers', (headers, req) => {
  if (req.sockrelaySession) headers.push(`Sockrelay-Session: ${req.sockrelaySession}`);
});

function sameToken(a, b) {
  const ha = crypto.createHash('sha256').update(a).digest();
  const hb = crypto.createHash('sha256').update(b).digest();
  return crypto.timingSafeEqual(ha, hb);
}

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') { res.end('ok\n'); return; }
  res.statusCode = 404;
  res.end();
});

server.on('upgrade', (req, socket, head) => {
  const q = url.parse(req.url, true).query;
  const peer = `${socket.remoteAddress}:${socket.remotePort}`;
  const refuse = (code, why) => {
    log(`refuse ${code} ${why} (${peer})`);
    socket.end(`HTTP/1.1 ${code} ${http.STATUS_CODES[code]}\r\n` +
               'Connection: close\r\nContent-Length: 0\r\n\r\n');
  };

  if (q.mode === 'origin') {
    if (typeof q.token !== 'string' || q.token === '') return refuse(400, 'missing token');
    const id = uuid4();
    req.sockrelaySession = id;
    const s = {token: q.token, origin: null, dest: null};
    sessions.set(id, s);
    wss.handleUpgrade(req, socket, head, (ws) => {
      s.origin = ws;
      s.originAddr = peer;
      log(`session ${id} created (${peer})`);
      ws.send(msgpack.encode({type: 'start', id}));
      ws.ping(`sockrelay session ${id}`);
      ws.on('message', (d) => {
        if (s.dest && s.dest !== 'pending' && s.dest.readyState === WebSocket.OPEN) s.dest.send(d);
      });
      ws.on('close', () => {
        sessions.delete(id);
        if (s.dest && s.dest !== 'pending') s.dest.close(4001, 'origin gone');
      });
    });
  } else if (q.mode === 'dest') {
    if (typeof q.id !== 'string' || typeof q.token !== 'string' || q.token === '') {
      return refuse(400, 'missing id or token');
    }
    const s = sessions.get(q.id);
    if (!s || !s.origin) return refuse(404, `unknown session ${q.id}`);
    if (!sameToken(q.token, s.token)) return refuse(403, `wrong token for ${q.id}`);
    if (s.dest) return refuse(409, `session ${q.id} already has a dest`);
    s.dest = 'pending';
    req.sockrelaySession = q.id;
    wss.handleUpgrade(req, socket, head, (ws) => {
      s.dest = ws;
      log(`session ${q.id} paired (${peer})`);
      ws.ping(`sockrelay peer-joined ${s.originAddr}`);
      s.origin.ping(`sockrelay peer-joined ${peer}`);
      ws.on('message', (d) => {
        if (s.origin.readyState === WebSocket.OPEN) s.origin.send(d);
      });
      ws.on('close', (code, reason) => {
        if (s.dest === ws) s.dest = null;
        if (s.origin.readyState === WebSocket.OPEN) s.origin.ping(`sockrelay peer-left ${code} ${reason}`);
      });
    });
  } else {
    refuse(400, `bad mode ${q.mode}`);
  }
});

server.listen(port, bind, () => {
  const a = server.address();
  log(`listening on ${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`);
});
process.on('SIGTERM', () => process.exit(0));
if (process.env.COMPAT_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => process.exit(0));
}
