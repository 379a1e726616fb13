'use strict';
// A lean load generator for the daemon: many sessions, pipelined 64-byte echo.
//
//   node bench/echo_load.js remote [--max-seconds S]
//       An echo server on 127.0.0.1 (every byte a connection sends comes back). Prints
//       {"port": P, "pid": PID} on one line; ends on SIGTERM, when its parent goes away, or
//       after --max-seconds (default 1800).
//
//   node bench/echo_load.js client --port P --token T --fingerprint F --remote-port R
//       [--sessions 100] [--sockets 4] [--depth 8] [--batch 1] [--size 64] [--max-seconds 300]
//       Opens the sessions (WebSocket /ws, the session protocol of doc/protocol.md), each
//       with TcpSocketManager and --sockets sockets to the echo remote, DATA and DRAIN
//       enabled; prints {"ready": ...}. Then reads commands on stdin, one a line:
//         go    start the traffic: every socket keeps up to --depth messages in flight (at
//               most 16 send requests unanswered, none after a `false` reply until DRAIN),
//               topped up once there is room for --batch of them at once;
//         mark  print the counters now, with the time ({"mark": ...});
//         stop  send nothing more, wait until every message came back, close the sessions,
//               print {"done": ...} with every counter and exit.
//       Every echoed byte is checked against what was sent (message k of socket s carries k
//       as 4 bytes big-endian, then a pattern of s, k and the offset), and every send reply
//       is counted. Both ends cost little per message: whole reads are parsed in place, and
//       the messages that the reads of one event-loop turn make room for leave in one write
//       per session.
//
// Written from RFC 6455 (client frames masked with a fresh key each) and protocol.md A.
// Loopback only: it connects to 127.0.0.1 and nothing else.

const net = require('net');
const crypto = require('crypto');

const HOST = '127.0.0.1';
const SEND_WINDOW = 16; // unanswered send requests per socket, as bench/client.py
const EVENT_DATA = 1;
const EVENT_DRAIN = 2;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    out[a.slice(2)] = argv[++i];
  }
  return out;
}

// -- remote ----------------------------------------------------------------------

function runRemote(args) {
  const maxSeconds = Number(args['max-seconds'] || 1800);
  const server = net.createServer({ noDelay: true }, (sock) => {
    sock.setNoDelay(true);
    sock.on('data', (data) => {
      if (!sock.write(data)) {
        sock.pause();
        sock.once('drain', () => sock.resume());
      }
    });
    sock.on('error', () => sock.destroy());
    sock.on('end', () => sock.end());
  });
  server.listen({ host: HOST, port: 0, backlog: 4096 }, () => {
    process.stdout.write(JSON.stringify({ port: server.address().port, pid: process.pid }) + '\n');
  });
  const parent = process.ppid;
  const started = Date.now();
  const timer = setInterval(() => {
    if (process.ppid !== parent || Date.now() - started > maxSeconds * 1000) process.exit(0);
  }, 1000);
  timer.unref();
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

// -- encoding (protocol.md A.1) ----------------------------------------------------

function varintSize(n) {
  if (n <= 250) return 1;
  if (n <= 0xffff) return 3;
  if (n <= 0xffffffff) return 5;
  return 9;
}

function writeVarint(buf, pos, n) {
  if (n <= 250) {
    buf[pos] = n;
    return pos + 1;
  }
  if (n <= 0xffff) {
    buf[pos] = 0xfb;
    buf.writeUInt16BE(n, pos + 1);
    return pos + 3;
  }
  if (n <= 0xffffffff) {
    buf[pos] = 0xfc;
    buf.writeUInt32BE(n, pos + 1);
    return pos + 5;
  }
  buf[pos] = 0xfd;
  buf.writeBigUInt64BE(BigInt(n), pos + 1);
  return pos + 9;
}

function varintBytes(n) {
  const b = Buffer.allocUnsafe(varintSize(n));
  writeVarint(b, 0, n);
  return b;
}

// Reads a varint at pos: sets R_POS to the position after it and returns the value.
let R_POS = 0;
function readVarint(buf, pos) {
  const first = buf[pos];
  if (first <= 250) {
    R_POS = pos + 1;
    return first;
  }
  if (first === 0xfb) {
    R_POS = pos + 3;
    return buf.readUInt16BE(pos + 1);
  }
  if (first === 0xfc) {
    R_POS = pos + 5;
    return buf.readUInt32BE(pos + 1);
  }
  if (first === 0xfd) {
    R_POS = pos + 9;
    return Number(buf.readBigUInt64BE(pos + 1));
  }
  throw new Error(`bad varint marker ${first}`);
}

function str(s) {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([varintBytes(b.length), b]);
}

function zigzag(n) {
  return n >= 0 ? 2 * n : -2 * n - 1;
}

// -- WebSocket frames (RFC 6455 5.2) -----------------------------------------------

let rng = (crypto.randomBytes(4).readUInt32LE(0) | 1) >>> 0;
function maskKey() {
  // xorshift32, seeded from the system's random source: a fresh key per frame.
  rng ^= rng << 13;
  rng >>>= 0;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  rng >>>= 0;
  return rng;
}

// Writes a masked binary frame of `len` payload bytes whose payload is already at
// buf[pos + header .. ]: returns the header size (the caller reserves it: frameHeaderSize).
function frameHeaderSize(len) {
  return (len < 126 ? 2 : len < 65536 ? 4 : 10) + 4;
}

function maskFrame(buf, pos, len, opcode) {
  let h = pos;
  buf[h++] = 0x80 | opcode;
  if (len < 126) {
    buf[h++] = 0x80 | len;
  } else if (len < 65536) {
    buf[h++] = 0xfe;
    buf.writeUInt16BE(len, h);
    h += 2;
  } else {
    buf[h++] = 0xff;
    buf.writeBigUInt64BE(BigInt(len), h);
    h += 8;
  }
  const key = maskKey();
  const k0 = key >>> 24, k1 = (key >>> 16) & 255, k2 = (key >>> 8) & 255, k3 = key & 255;
  buf[h] = k0;
  buf[h + 1] = k1;
  buf[h + 2] = k2;
  buf[h + 3] = k3;
  h += 4;
  const end = h + len;
  let i = h;
  for (; i + 3 < end; i += 4) {
    buf[i] ^= k0;
    buf[i + 1] ^= k1;
    buf[i + 2] ^= k2;
    buf[i + 3] ^= k3;
  }
  const keys = [k0, k1, k2, k3];
  for (let j = 0; i < end; i++, j++) buf[i] ^= keys[j];
  return end;
}

function frame(payload, opcode = 2) {
  const hs = frameHeaderSize(payload.length);
  const buf = Buffer.allocUnsafe(hs + payload.length);
  payload.copy(buf, hs);
  // The header goes right before the payload: build it at 0 with the same sizes.
  maskFrame(buf, 0, payload.length, opcode);
  return buf;
}

// -- the echo pattern ----------------------------------------------------------------

// Byte `j` of message `k` of socket `s` (message size `size`).
function patternByte(s, k, j) {
  if (j < 4) return (k >>> (24 - 8 * j)) & 255;
  return (s * 13 + j * 7 + k) & 255;
}

// -- a session ------------------------------------------------------------------------

class Session {
  constructor(client, index) {
    this.client = client;
    this.index = index;
    this.sock = null;
    this.buf = null; // bytes not parsed yet
    this.handshaking = true;
    this.nextRequest = 3;
    this.service = 0;
    this.pending = new Map(); // request id -> resolve(content Buffer) during set-up
    this.sockets = new Map(); // object id -> socket state
    this.list = [];
    this.onAck = null;
    this.closed = false;
    this.closeCode = null;
    this.dirty = false;
  }

  request() {
    const r = this.nextRequest;
    this.nextRequest += 2;
    return r;
  }

  call(service, object, content) {
    const request = this.request();
    const envelope = Buffer.concat([
      varintBytes(service),
      varintBytes(object),
      Buffer.from([0]),
      varintBytes(request),
      varintBytes(content.length),
      content,
    ]);
    return new Promise((resolve, reject) => {
      this.pending.set(request, { resolve, reject });
      this.sock.write(frame(envelope));
    });
  }

  connect() {
    const { port } = this.client;
    return new Promise((resolve, reject) => {
      const key = crypto.randomBytes(16).toString('base64');
      const accept = crypto
        .createHash('sha1')
        .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
        .digest('base64');
      const sock = net.connect({ host: HOST, port, noDelay: true });
      this.sock = sock;
      sock.setNoDelay(true);
      let head = Buffer.alloc(0);
      sock.on('connect', () => {
        sock.write(
          `GET /ws HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\n` +
            `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`
        );
      });
      sock.on('data', (data) => {
        if (this.handshaking) {
          head = Buffer.concat([head, data]);
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) return;
          const text = head.subarray(0, end).toString('latin1');
          if (!/^HTTP\/1\.1 101 /.test(text) || !text.includes(accept)) {
            reject(new Error(`WebSocket refused: ${text.split('\r\n')[0]}`));
            sock.destroy();
            return;
          }
          this.handshaking = false;
          resolve();
          data = head.subarray(end + 4);
          if (!data.length) return;
        }
        this.received(data);
      });
      sock.on('error', (e) => {
        this.fail(`socket error: ${e.message}`);
        reject(e);
      });
      sock.on('close', () => {
        if (!this.closed) this.fail(`connection closed (${this.closeCode})`);
        this.closed = true;
        reject(new Error('connection closed'));
      });
    });
  }

  fail(why) {
    if (this.closed) return;
    if (!this.client.stopping || this.client.active) this.client.errors.push(`session ${this.index}: ${why}`);
    for (const { reject } of this.pending.values()) reject(new Error(why));
    this.pending.clear();
  }

  async start() {
    const { token, fingerprint, remotePort, socketsPerSession } = this.client;
    await this.connect();
    const ack = new Promise((resolve) => (this.onAck = resolve));
    this.sock.write(frame(str(token)));
    const answer = await ack;
    if (answer.length !== 1 || answer[0] !== 1) throw new Error('token refused');
    // GetService TcpSocketManager (A.4): response content 00 00 <service id>.
    const got = await this.call(0, 0, Buffer.concat([Buffer.from([0]), str('TcpSocketManager'), str(fingerprint)]));
    if (got[0] !== 0 || got[1] !== 0) throw new Error(`GetService failed: ${got.toString('hex')}`);
    this.service = readVarint(got, 2);
    const address = Buffer.concat([Buffer.from([4]), str(HOST), varintBytes(zigzag(remotePort))]);
    const opened = await Promise.all(
      Array.from({ length: socketsPerSession }, () => this.call(this.service, 0, address))
    );
    for (const reply of opened) {
      if (reply[0] !== 12) throw new Error(`open failed: ${reply.toString('hex')}`);
      const id = readVarint(reply, 1);
      const state = {
        id,
        index: this.client.nextSocketIndex++,
        prefix: Buffer.concat([varintBytes(this.service), varintBytes(id), Buffer.from([0])]),
        sent: 0, // messages sent
        echoed: 0, // bytes echoed
        unanswered: 0,
        waitingDrain: false,
      };
      this.sockets.set(id, state);
      this.list.push(state);
    }
    const enables = [];
    for (const s of this.list) {
      for (const event of [EVENT_DATA, EVENT_DRAIN]) {
        const content = Buffer.concat([Buffer.from([3]), varintBytes(this.service), varintBytes(s.id), varintBytes(event)]);
        enables.push(this.call(0, 0, content));
      }
    }
    for (const reply of await Promise.all(enables)) {
      if (reply[0] !== 3 || reply[1] !== 1) throw new Error(`EnableEvent failed: ${reply.toString('hex')}`);
    }
  }

  // Frames in (unmasked, from the server): parse everything complete, keep the rest.
  received(data) {
    let buf = this.buf ? Buffer.concat([this.buf, data]) : data;
    let pos = 0;
    const size = buf.length;
    while (size - pos >= 2) {
      const b0 = buf[pos];
      let len = buf[pos + 1];
      let header = 2;
      if (len & 0x80) {
        this.fail('masked frame from the server');
        this.sock.destroy();
        return;
      }
      if (len === 126) {
        if (size - pos < 4) break;
        len = buf.readUInt16BE(pos + 2);
        header = 4;
      } else if (len === 127) {
        if (size - pos < 10) break;
        len = Number(buf.readBigUInt64BE(pos + 2));
        header = 10;
      }
      const end = pos + header + len;
      if (end > size) break;
      const opcode = b0 & 0x0f;
      if (!(b0 & 0x80)) {
        this.fail('fragmented message (not expected from the daemon)');
        this.sock.destroy();
        return;
      }
      if (opcode === 2) {
        this.message(buf, pos + header, end);
      } else if (opcode === 8) {
        this.closeCode = len >= 2 ? buf.readUInt16BE(pos + header) : 1005;
        if (!this.closeSent) {
          this.closeSent = true;
          this.sock.write(frame(Buffer.from([0x03, 0xe8]), 8));
        }
        this.sock.end();
      } else if (opcode === 9) {
        this.sock.write(frame(Buffer.from(buf.subarray(pos + header, end)), 10));
      } else if (opcode !== 10) {
        this.fail(`unexpected opcode ${opcode}`);
      }
      pos = end;
    }
    this.buf = pos < size ? buf.subarray(pos) : null;
    if (this.client.active && !this.dirty) {
      // Top up after every read of this event-loop turn: one write for all of them.
      this.dirty = true;
      this.client.schedule(this);
    }
  }

  message(buf, pos, end) {
    if (this.onAck) {
      const resolve = this.onAck;
      this.onAck = null;
      resolve(Buffer.from(buf.subarray(pos, end)));
      return;
    }
    readVarint(buf, pos); // service
    const object = readVarint(buf, R_POS);
    const kind = buf[R_POS];
    let p = R_POS + 1;
    const client = this.client;
    if (kind === 2) {
      const length = readVarint(buf, p);
      p = R_POS;
      const s = this.sockets.get(object);
      if (s === undefined) return;
      const tag = buf[p];
      if (tag === 9) {
        const n = readVarint(buf, p + 1);
        this.check(s, buf, R_POS, n);
      } else if (tag === 10) {
        s.waitingDrain = false;
        client.drains++;
      } else if (tag === 8) {
        if (!client.stopping) client.errors.push(`socket ${s.index} closed`);
      } else if (tag === 11) {
        client.errors.push(`socket ${s.index}: ERROR event ${buf.subarray(p, p + length).toString('hex')}`);
      }
      return;
    }
    if (kind !== 1) {
      client.errors.push(`unexpected message kind ${kind}`);
      return;
    }
    const request = readVarint(buf, p);
    const length = readVarint(buf, R_POS);
    p = R_POS;
    const waiting = this.pending.get(request);
    if (waiting !== undefined) {
      this.pending.delete(request);
      waiting.resolve(Buffer.from(buf.subarray(p, p + length)));
      return;
    }
    const s = this.sockets.get(object);
    if (s === undefined) {
      client.errors.push(`response to unknown request ${request}`);
      return;
    }
    const tag = buf[p];
    if (tag === 4) {
      s.unanswered--;
      if (buf[p + 1]) {
        client.repliesTrue++;
      } else {
        client.repliesFalse++;
        s.waitingDrain = true;
      }
    } else if (tag === 5) {
      s.unanswered--;
      client.sendErrors++;
    } else {
      client.errors.push(`unexpected reply ${tag} on socket ${s.index}`);
    }
  }

  // Echoed bytes: each must be the byte sent at that offset of the socket's stream.
  check(s, buf, pos, n) {
    const size = this.client.size;
    let offset = s.echoed;
    let k = Math.floor(offset / size);
    let j = offset - k * size;
    const sIndex = s.index;
    let bad = 0;
    for (let i = pos, end = pos + n; i < end; i++) {
      const want = j < 4 ? (k >>> (24 - 8 * j)) & 255 : (sIndex * 13 + j * 7 + k) & 255;
      if (buf[i] !== want) bad++;
      if (++j === size) {
        j = 0;
        k++;
      }
    }
    s.echoed = offset + n;
    if (s.echoed > s.sent * size) bad++; // more came back than was sent
    if (bad) this.client.mismatches += bad;
    this.client.echoedBytes += n;
  }

  // Top every socket up to `depth` messages in flight; one write for all of them.
  refill() {
    const client = this.client;
    const size = client.size;
    const depth = client.depth;
    const batch = client.batch;
    let count = 0;
    for (const s of this.list) {
      const inFlight = s.sent - Math.floor(s.echoed / size);
      const room = Math.min(depth - inFlight, SEND_WINDOW - s.unanswered);
      if (s.waitingDrain || room < batch) continue;
      s.room = room;
      count += room;
    }
    if (!count) return;
    // Per message at most: frame header 8 (+ 6 past 65535), prefix 11, request id 5,
    // content length 5, tag 1, data length 3.
    const most = (40 + size) * count;
    const out = Buffer.allocUnsafe(most);
    let w = 0;
    const bodyHead = varintSize(size);
    for (const s of this.list) {
      let room = s.room;
      if (!room) continue;
      s.room = 0;
      const sIndex = s.index;
      while (room-- > 0) {
        const request = this.request();
        const contentLength = 1 + bodyHead + size;
        const length =
          s.prefix.length + varintSize(request) + varintSize(contentLength) + contentLength;
        const hs = frameHeaderSize(length);
        let p = w + hs;
        s.prefix.copy(out, p);
        p += s.prefix.length;
        p = writeVarint(out, p, request);
        p = writeVarint(out, p, contentLength);
        out[p++] = 2; // send
        p = writeVarint(out, p, size);
        const k = s.sent;
        out[p++] = (k >>> 24) & 255;
        out[p++] = (k >>> 16) & 255;
        out[p++] = (k >>> 8) & 255;
        out[p++] = k & 255;
        for (let j = 4; j < size; j++) out[p++] = (sIndex * 13 + j * 7 + k) & 255;
        w = maskFrame(out, w, length, 2);
        s.sent++;
        s.unanswered++;
        client.sends++;
      }
    }
    this.sock.write(out.subarray(0, w));
  }

  // Bytes sent and not echoed yet, and send requests not answered yet.
  unechoed() {
    let n = 0;
    for (const s of this.list) n += s.sent * this.client.size - s.echoed;
    return n;
  }

  unanswered() {
    let n = 0;
    for (const s of this.list) n += s.unanswered;
    return n;
  }

  close() {
    return new Promise((resolve) => {
      if (this.closed || this.sock.destroyed) return resolve();
      const timer = setTimeout(() => {
        this.sock.destroy();
        resolve();
      }, 3000);
      this.sock.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.client.stopping = true;
      if (!this.closeSent) {
        this.closeSent = true;
        this.sock.write(frame(Buffer.from([0x03, 0xe8]), 8));
      }
    });
  }
}

// -- the client -------------------------------------------------------------------------

class Client {
  constructor(args) {
    this.port = Number(args.port);
    this.token = args.token;
    this.fingerprint = args.fingerprint;
    this.remotePort = Number(args['remote-port']);
    this.sessionCount = Number(args.sessions || 100);
    this.socketsPerSession = Number(args.sockets || 4);
    this.depth = Number(args.depth || 8);
    this.batch = Number(args.batch || 1);
    if (!(this.batch >= 1 && this.batch <= Math.min(this.depth, SEND_WINDOW))) {
      // A top-up waits for room for a whole batch: a batch over the send window never starts.
      throw new Error(`--batch must be 1 to min(--depth, ${SEND_WINDOW})`);
    }
    this.size = Number(args.size || 64);
    if (this.size < 8 || this.size > 1 << 16) throw new Error('--size must be 8 to 65536');
    this.nextSocketIndex = 0;
    this.sessions = [];
    this.active = false;
    this.stopping = false;
    this.sends = 0;
    this.repliesTrue = 0;
    this.repliesFalse = 0;
    this.sendErrors = 0;
    this.drains = 0;
    this.echoedBytes = 0;
    this.mismatches = 0;
    this.errors = [];
    this.dirtySessions = [];
    this.flush = this.flush.bind(this);
    this.t0 = process.hrtime.bigint();
  }

  counters() {
    return {
      t: Number(process.hrtime.bigint() - this.t0) / 1e9,
      sends: this.sends,
      replies_true: this.repliesTrue,
      replies_false: this.repliesFalse,
      send_errors: this.sendErrors,
      drains: this.drains,
      echoed_bytes: this.echoedBytes,
      echoed_messages: Math.floor(this.echoedBytes / this.size),
      mismatches: this.mismatches,
      errors: this.errors.length,
    };
  }

  schedule(session) {
    this.dirtySessions.push(session);
    if (this.dirtySessions.length === 1) setImmediate(this.flush);
  }

  flush() {
    const sessions = this.dirtySessions;
    this.dirtySessions = [];
    for (const s of sessions) {
      s.dirty = false;
      if (this.active && !s.closed) s.refill();
    }
  }

  async start() {
    this.sessions = Array.from({ length: this.sessionCount }, (_, i) => new Session(this, i));
    await Promise.all(this.sessions.map((s) => s.start()));
  }

  go() {
    this.active = true;
    for (const s of this.sessions) s.refill();
  }

  async stop() {
    this.active = false;
    const deadline = Date.now() + 30000;
    const busy = (s) => !s.closed && (s.unechoed() > 0 || s.unanswered() > 0);
    while (Date.now() < deadline && this.sessions.some(busy)) {
      await new Promise((r) => setTimeout(r, 20));
    }
    let unechoed = 0;
    let unanswered = 0;
    for (const s of this.sessions) {
      unechoed += s.unechoed();
      unanswered += s.unanswered();
    }
    this.stopping = true;
    await Promise.all(this.sessions.map((s) => s.close()));
    return {
      ...this.counters(),
      unechoed_bytes: unechoed,
      unanswered_sends: unanswered,
      error_sample: this.errors.slice(0, 5),
    };
  }
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function runClient(args) {
  const maxSeconds = Number(args['max-seconds'] || 300);
  const guard = setTimeout(() => {
    emit({ fatal: `no stop within ${maxSeconds} s` });
    process.exit(2);
  }, maxSeconds * 1000);
  guard.unref();
  const client = new Client(args);
  try {
    await client.start();
  } catch (e) {
    emit({ fatal: `set-up failed: ${e.message}`, error_sample: client.errors.slice(0, 5) });
    process.exit(1);
  }
  emit({
    ready: true,
    sessions: client.sessions.length,
    sockets: client.nextSocketIndex,
    depth: client.depth,
    batch: client.batch,
    size: client.size,
  });
  let rest = '';
  let stopping = false;
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', async (chunk) => {
    rest += chunk;
    let nl;
    while ((nl = rest.indexOf('\n')) >= 0) {
      const command = rest.slice(0, nl).trim();
      rest = rest.slice(nl + 1);
      if (command === 'go') {
        client.go();
        emit({ going: true });
      } else if (command === 'mark') {
        emit({ mark: client.counters() });
      } else if (command === 'stop') {
        stopping = true;
        emit({ done: await client.stop() });
        process.exit(0);
      }
    }
  });
  process.stdin.on('end', () => stopping || process.exit(0));
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'remote') {
  runRemote(parseArgs(rest));
} else if (mode === 'client') {
  runClient(parseArgs(rest)).catch((e) => {
    emit({ fatal: String(e && e.stack ? e.stack : e) });
    process.exit(1);
  });
} else {
  process.stderr.write('usage: node bench/echo_load.js remote | client --port P ...\n');
  process.exit(64);
}
