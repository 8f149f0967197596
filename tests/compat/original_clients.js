#!/usr/bin/env node
'use strict';
// A re-creation of the *wire behaviour* of the original Node.js unix-relay
// clients (origin.js / dest.js, 2018, ws@5 + msgpack-lite + uuid@3), written
// for sockrelay's compatibility tests. Same command lines as the originals:
//
//   node original_clients.js origin HOST PORT TOKEN ORIGIN_UNIX_PATH
//   node original_clients.js dest   HOST PORT SESSION_ID TOKEN DEST_UNIX_PATH
//
// Wire behaviour reproduced (every WebSocket data message is one *binary*
// message holding one msgpack map; nothing else is ever sent):
//   origin: GET ws://HOST:PORT?mode=origin&token=TOKEN   (token not escaped)
//     relay -> origin  {type:"start", id:SESSION_UUID}     once, right after open
//   dest:   GET ws://HOST:PORT?mode=dest&id=ID&token=TOKEN
//     the relay sends the dest nothing; dest listens on DEST_UNIX_PATH once open.
//   per unix connection accepted by the dest (channel id = fresh uuid v4):
//     dest -> origin   {type:"open", id:CH, token:TOKEN}
//     origin: token matches -> connect ORIGIN_UNIX_PATH; else -> {type:"close", id:CH}
//     either way       {type:"data", id:CH, data:<bin>}   (one per socket read)
//     either way       {type:"close", id:CH}              (unix end/error; no ack)
//   ws@5 offers permessage-deflate; no subprotocol; answers pings with pongs.
//
// Differences from the originals, all off the wire: logs go to stderr (the
// origin's stdout carries only its eval line), sockets are destroyed rather than
// `.close()`d (net.Socket has no close(): the originals threw there), and this
// peer is strict, for testing: a text message, an undecodable message or an
// unexpected shape is a protocol error (exit 2) instead of a log line.
//
// Machine-readable events go to stderr as single lines:
//   compat: event=NAME key=value ...
// Exit codes: 0 normal (stdin closed with COMPAT_EXIT_ON_STDIN_EOF=1),
// 2 protocol error, 3 upgrade refused (event=refused status=NNN),
// 4 WebSocket closed or failed, 5 watchdog (COMPAT_MAX_SECONDS, default 300).

const net = require('net');
const fs = require('fs');
const WebSocket = require('ws');
const msgpack = require('msgpack-lite');
const uuid4 = require('uuid/v4');

function event(name, fields) {
  let line = `compat: event=${name}`;
  for (const [k, v] of Object.entries(fields || {})) {
    line += ` ${k}=${String(v).replace(/\s/g, '_')}`;
  }
  process.stderr.write(line + '\n');
}

function fail(code, name, fields) {
  event(name, fields);
  process.exit(code);
}

function usage() {
  process.stderr.write(
    'usage: original_clients.js origin HOST PORT TOKEN ORIGIN_UNIX_PATH\n' +
    '       original_clients.js dest HOST PORT SESSION_ID TOKEN DEST_UNIX_PATH\n');
  process.exit(64);
}

// ---- helpers -------------------------------------------------------------

// Decode one relayed message strictly: binary, msgpack, a map with a string
// `type`. Returns {msg, raw}.
function decode(data, who) {
  if (!Buffer.isBuffer(data)) {
    fail(2, 'protocol-error', {who, why: 'text-message', len: String(data).length});
  }
  let msg;
  try {
    msg = msgpack.decode(data);
  } catch (err) {
    fail(2, 'protocol-error', {who, why: 'not-msgpack', hex: data.slice(0, 64).toString('hex')});
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.type !== 'string') {
    fail(2, 'protocol-error', {who, why: 'not-a-typed-map', hex: data.slice(0, 64).toString('hex')});
  }
  return msg;
}

function send(ws, obj) {
  ws.send(msgpack.encode(obj));
}

function watchdogAndParent() {
  const max = Number(process.env.COMPAT_MAX_SECONDS || 300);
  setTimeout(() => fail(5, 'watchdog', {seconds: max}), max * 1000).unref();
  // Let a test harness end us by closing our stdin (no orphans if it dies).
  if (process.env.COMPAT_EXIT_ON_STDIN_EOF === '1') {
    process.stdin.on('data', () => {});
    process.stdin.on('end', () => process.exit(0));
    process.stdin.on('error', () => process.exit(0));
  }
}

function connect(url, who) {
  const ws = new WebSocket(url);
  // A non-101 answer: report its status (the original relay always upgraded).
  ws.on('unexpected-response', (req, res) => {
    fail(3, 'refused', {who, status: res.statusCode});
  });
  ws.on('error', (err) => fail(4, 'ws-error', {who, error: err.message}));
  ws.on('close', (code, reason) => fail(4, 'ws-close', {who, code, reason: reason || '-'}));
  ws.on('ping', (payload) => event('ping', {who, payload: payload.length ? payload.toString('latin1') : '-'}));
  return ws;
}

// ---- origin --------------------------------------------------------------

function runOrigin(host, port, token, originPath) {
  const url = `ws://${host}:${port}?mode=origin&token=${token}`;
  const ws = connect(url, 'origin');
  const channels = new Map(); // channel id -> net.Socket
  let sessionId = null;

  ws.on('open', () => event('ws-open', {who: 'origin', extensions: ws.extensions || '-'}));

  function closeChannel(id, tellPeer) {
    const sock = channels.get(id);
    if (!sock) return;
    channels.delete(id);
    sock.destroy();
    if (tellPeer) send(ws, {type: 'close', id});
    event('channel-close', {who: 'origin', id, by: tellPeer ? 'local' : 'peer'});
  }

  ws.on('message', (data) => {
    const msg = decode(data, 'origin');
    switch (msg.type) {
      case 'start': {
        const keys = Object.keys(msg).sort().join(',');
        if (sessionId !== null) fail(2, 'protocol-error', {who: 'origin', why: 'second-start'});
        if (typeof msg.id !== 'string') fail(2, 'protocol-error', {who: 'origin', why: 'start-id-not-string'});
        sessionId = msg.id;
        event('start', {who: 'origin', id: msg.id, keys, hex: data.toString('hex')});
        // The original printed this eval-able line on stdout.
        process.stdout.write(`export SESSION_ID="${msg.id}"\n`);
        break;
      }
      case 'open': {
        if (sessionId === null) fail(2, 'protocol-error', {who: 'origin', why: 'open-before-start'});
        const id = msg.id;
        if (typeof id !== 'string') fail(2, 'protocol-error', {who: 'origin', why: 'open-id-not-string'});
        if (channels.has(id)) {
          event('channel-refused', {who: 'origin', id, why: 'duplicate'});
          send(ws, {type: 'close', id});
          return;
        }
        if (msg.token !== token) {
          event('channel-refused', {who: 'origin', id, why: 'token'});
          send(ws, {type: 'close', id});
          return;
        }
        const sock = net.connect(originPath);
        channels.set(id, sock);
        event('channel-open', {who: 'origin', id, token_ok: 1});
        sock.on('data', (chunk) => {
          if (channels.get(id) === sock) send(ws, {type: 'data', id, data: chunk});
        });
        sock.on('end', () => closeChannel(id, true));
        sock.on('error', (err) => {
          event('unix-error', {who: 'origin', id, error: err.code || err.message});
          closeChannel(id, true);
        });
        break;
      }
      case 'data': {
        const sock = channels.get(msg.id);
        if (!Buffer.isBuffer(msg.data)) fail(2, 'protocol-error', {who: 'origin', why: 'data-not-bin'});
        if (sock) sock.write(msg.data);
        else event('data-for-unknown-channel', {who: 'origin', id: msg.id});
        break;
      }
      case 'close':
        closeChannel(msg.id, false);
        break;
      default:
        fail(2, 'protocol-error', {who: 'origin', why: 'unknown-type', type: msg.type});
    }
  });
}

// ---- dest ----------------------------------------------------------------

function runDest(host, port, sessionId, token, destPath) {
  const url = `ws://${host}:${port}?mode=dest&id=${sessionId}&token=${token}`;
  const ws = connect(url, 'dest');
  const channels = new Map(); // channel id -> net.Socket

  function closeChannel(id, tellPeer) {
    const sock = channels.get(id);
    if (!sock) return;
    channels.delete(id);
    sock.destroy();
    if (tellPeer) send(ws, {type: 'close', id});
    event('channel-close', {who: 'dest', id, by: tellPeer ? 'local' : 'peer'});
  }

  ws.on('open', () => {
    event('ws-open', {who: 'dest', extensions: ws.extensions || '-'});
    const server = net.createServer((sock) => {
      const id = uuid4();
      channels.set(id, sock);
      send(ws, {type: 'open', id, token});
      event('channel-open', {who: 'dest', id});
      sock.on('data', (chunk) => {
        // Same key order as the original dest: type, data, id.
        if (channels.get(id) === sock) send(ws, {type: 'data', data: chunk, id});
      });
      sock.on('end', () => closeChannel(id, true));
      sock.on('close', () => closeChannel(id, true));
      sock.on('error', () => closeChannel(id, true));
    });
    server.on('error', (err) => fail(4, 'listen-error', {who: 'dest', error: err.code || err.message}));
    server.listen(destPath, () => event('listening', {who: 'dest', path: destPath}));
    process.on('exit', () => { try { fs.unlinkSync(destPath); } catch (e) { /* gone */ } });
  });

  ws.on('message', (data) => {
    const msg = decode(data, 'dest');
    switch (msg.type) {
      case 'data': {
        const sock = channels.get(msg.id);
        if (!Buffer.isBuffer(msg.data)) fail(2, 'protocol-error', {who: 'dest', why: 'data-not-bin'});
        if (sock) sock.write(msg.data);
        else event('data-for-unknown-channel', {who: 'dest', id: msg.id});
        break;
      }
      case 'close':
        closeChannel(msg.id, false);
        break;
      default:
        // The original relay never sent the dest anything of its own.
        fail(2, 'protocol-error', {who: 'dest', why: 'unknown-type', type: msg.type});
    }
  });
}

// ---- main ----------------------------------------------------------------

const argv = process.argv.slice(2);
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
if (argv[0] === 'origin' && argv.length === 5) {
  watchdogAndParent();
  runOrigin(argv[1], argv[2], argv[3], argv[4]);
} else if (argv[0] === 'dest' && argv.length === 6) {
  watchdogAndParent();
  runDest(argv[1], argv[2], argv[3], argv[4], argv[5]);
} else {
  usage();
}
