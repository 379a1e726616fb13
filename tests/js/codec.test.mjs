// Codec tests over every vector of protocol.md section D, on the served core.js.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, test } from "node:test";

import { FINGERPRINT, GET_SERVICE_3, ascii, h, hex, loadClassic, toHex } from "./helpers.mjs";

const { ExternalAPI, lib_tcpsocket } = loadClassic();
const core = ExternalAPI.core;
const { Fields, Reader, CoreRequest, CoreResponse } = core;
const coreRequest = (init) => CoreRequest.encode(init);
/** deepEqual across realms (the scripts run in a vm context). */
const same = (actual, expected) => assert.deepEqual(JSON.parse(JSON.stringify(actual)), expected);

const enc = (fields) => toHex(fields.encode());
const req = (service, object, id, content) => toHex(core.encodeRequest(service, object, id, content));

describe("protocol.md D vectors", () => {
  test("handshake token abc / ack ok / ack refused", () => {
    assert.equal(toHex(new core.SessionHandshake("abc").encode()), "03616263");
    same(new core.SessionAck().decode(hex("01")), { success: true });
    same(new core.SessionAck().decode(hex("00")), { success: false });
    same(new core.SessionAck().decode(hex("02")), { success: false });
  });

  test("GetService TcpSocketManager, request 3", () => {
    assert.equal(req(0, 0, 3, coreRequest({ variant: 0, name: "TcpSocketManager", fingerprint: FINGERPRINT })), GET_SERVICE_3);
  });

  test("GetService replies: success / missing permission / fingerprint mismatch / unknown", () => {
    const cases = [
      ["00 00 01 03 03 00 00 01", { service: 1 }],
      ["00 00 01 03 02 00 03", { error: "MissingPermission" }],
      ["00 00 01 03 02 00 02", { error: "FingerprintMismatch" }],
      ["00 00 01 03 02 00 01", { error: "UnknownService" }],
    ];
    for (const [bytes, expected] of cases) {
      const msg = core.decodeBaseMessage(hex(bytes));
      assert.equal(msg.service, 0);
      assert.equal(msg.object, 0);
      assert.equal(msg.kind, core.KIND_RESPONSE);
      assert.equal(msg.requestId, 3);
      same(CoreResponse.decode(msg.content), { variant: 0, response: expected });
    }
  });

  test("GetService InternalError carries its string", () => {
    same(CoreResponse.decode(hex("00 04 03" + ascii("bad"))), { variant: 0, response: { error: "Internal:bad" } });
  });

  test("HasService TcpSocketManager, request 17", () => {
    assert.equal(req(0, 0, 17, coreRequest({ variant: 1, name: "TcpSocketManager" })), h("00 00 00 11 12 01 10") + ascii("TcpSocketManager"));
  });

  test("open {127.0.0.1, 7878}, request 5, service 1", () => {
    const content = new Fields().u(4).str("127.0.0.1").i(7878);
    assert.equal(req(1, 0, 5, content), h("01 00 00 05 0e 04 09 31 32 37 2e 30 2e 30 2e 31 fb 3d 8c"));
  });

  test("open success socket 1 / open error", () => {
    let msg = core.decodeBaseMessage(hex("01 00 01 05 02 0c 01"));
    assert.deepEqual([msg.service, msg.object, msg.kind, msg.requestId, toHex(msg.content)], [1, 0, 1, 5, "0c01"]);
    msg = core.decodeBaseMessage(hex("01 00 01 05 01 0d"));
    assert.deepEqual([msg.service, msg.object, msg.kind, msg.requestId, toHex(msg.content)], [1, 0, 1, 5, "0d"]);
  });

  test("EnableEvent (1, 1, DATA), request 7 / reply", () => {
    assert.equal(req(0, 0, 7, coreRequest({ variant: 3, service: 1, object: 1, event: lib_tcpsocket.TcpSocketManager.DATA_EVENT })), h("00 00 00 07 04 03 01 01 01"));
    const msg = core.decodeBaseMessage(hex("00 00 01 07 02 03 01"));
    assert.equal(msg.requestId, 7);
    same(CoreResponse.decode(msg.content), { variant: 3, success: true });
  });

  test("send Hello to socket 1, request 9 / reply true", () => {
    assert.equal(req(1, 1, 9, new Fields().u(2).bytes("Hello")), h("01 01 00 09 07 02 05 48 65 6c 6c 6f"));
    const msg = core.decodeBaseMessage(hex("01 01 01 09 02 04 01"));
    assert.deepEqual([msg.service, msg.object, msg.requestId, toHex(msg.content)], [1, 1, 9, "0401"]);
  });

  test("DATA event Hello from socket 1", () => {
    const msg = core.decodeBaseMessage(hex("01 01 02 07 09 05 48 65 6c 6c 6f"));
    assert.deepEqual([msg.service, msg.object, msg.kind, msg.requestId], [1, 1, core.KIND_EVENT, null]);
    const r = new Reader(msg.content);
    assert.equal(r.u32(), 9);
    const data = r.bytesCopy();
    assert.equal(Buffer.from(data).toString(), "Hello");
    assert.equal(data.buffer.byteLength, data.length);
    assert.equal(toHex(core.encodeEvent(1, 1, new Fields().u(9).bytes("Hello"))), h("01 01 02 07 09 05 48 65 6c 6c 6f"));
  });

  test("close socket 1, request 11 / reply", () => {
    assert.equal(req(1, 1, 11, new Fields().u(0)), h("01 01 00 0b 01 00"));
    const msg = core.decodeBaseMessage(hex("01 01 01 0b 01 00"));
    assert.deepEqual([msg.requestId, toHex(msg.content)], [11, "00"]);
  });

  test("CLOSE event / ERROR event x", () => {
    let msg = core.decodeBaseMessage(hex("01 01 02 01 08"));
    assert.deepEqual([msg.kind, toHex(msg.content)], [2, "08"]);
    msg = core.decodeBaseMessage(hex("01 01 02 03 0b 01 78"));
    const r = new Reader(msg.content);
    assert.equal(r.u32(), 11);
    assert.equal(r.str(), "x");
  });

  test("ReleaseObject (1, 1), request 13", () => {
    assert.equal(req(0, 0, 13, coreRequest({ variant: 2, service: 1, object: 1 })), h("00 00 00 0d 03 02 01 01"));
  });

  test("DisableEvent (1, 1, DATA), request 15", () => {
    assert.equal(req(0, 0, 15, coreRequest({ variant: 4, service: 1, object: 1, event: 1 })), h("00 00 00 0f 04 04 01 01 01"));
  });

  test("varints 65535 / 65536 / 65536 in FD form", () => {
    assert.equal(enc(new Fields().u(65535)), "fbffff");
    assert.equal(enc(new Fields().u(65536)), "fc00010000");
    assert.equal(new Reader(hex("fb ff ff")).u16(), 65535);
    assert.equal(new Reader(hex("fc 00 01 00 00")).u32(), 65536);
    assert.equal(new Reader(hex("fd 00 00 00 00 00 01 00 00")).u32(), 65536);
    assert.equal(new Reader(hex("fd 00 00 00 00 00 01 00 00")).u64(), 65536);
  });
});

describe("primitive encoding", () => {
  test("shortest unsigned forms at every boundary", () => {
    const cases = [
      [0, "00"],
      [250, "fa"],
      [251, "fb00fb"],
      [65535, "fbffff"],
      [65536, "fc00010000"],
      [0xffffffff, "fcffffffff"],
      [0x100000000, "fd0000000100000000"],
      [Number.MAX_SAFE_INTEGER, "fd001fffffffffffff"],
      [0xffffffffffffffffn, "fdffffffffffffffff"],
    ];
    for (const [value, expected] of cases) {
      assert.equal(enc(new Fields().u(value)), expected, String(value));
      const back = new Reader(hex(expected)).u64();
      assert.equal(back, value);
    }
  });

  test("non-minimal forms decode", () => {
    assert.equal(new Reader(hex("fb 00 05")).u16(), 5);
    assert.equal(new Reader(hex("fc 00 00 00 05")).u16(), 5);
    assert.equal(new Reader(hex("fd 00 00 00 00 00 00 00 05")).u32(), 5);
    const msg = core.decodeBaseMessage(hex("fd0000000000000001 fc00000000 fb0001 fd0000000000000005 02 0401"));
    assert.deepEqual([msg.service, msg.object, msg.kind, msg.requestId], [1, 0, 1, 5]);
  });

  test("overflow of the target width is rejected", () => {
    assert.throws(() => new Reader(hex("fc 00 01 00 00")).u16(), core.DecodeError);
    assert.throws(() => new Reader(hex("fd 00 00 00 01 00 00 00 00")).u32(), core.DecodeError);
    assert.throws(() => core.decodeBaseMessage(hex("fd 00 00 00 01 00 00 00 00 00 02 00")), core.DecodeError);
    assert.equal(new Reader(hex("fd ff ff ff ff ff ff ff ff")).u64(), 0xffffffffffffffffn);
  });

  test("invalid markers and truncation are rejected", () => {
    for (const bad of ["fe", "ff", "fb 00", "fc 00 00 00", "fd 00 00 00 00 00 00 00", ""]) {
      assert.throws(() => new Reader(hex(bad)).u64(), core.DecodeError, bad);
    }
    assert.throws(() => new Reader(hex("05 61 62")).str(), core.DecodeError);
    assert.throws(() => new Reader(hex("05 61 62")).bytesView(), core.DecodeError);
    assert.throws(() => new Reader(hex("02 c3 28")).str(), core.DecodeError, "invalid UTF-8");
    assert.throws(() => new Reader(hex("02")).bool(), core.DecodeError);
    assert.throws(() => core.decodeBaseMessage(hex("00 00 07 00")), core.DecodeError, "unknown kind");
  });

  test("encoders refuse values out of range", () => {
    assert.throws(() => new Fields().u(-1), { name: "RangeError" });
    assert.throws(() => new Fields().u(1.5), { name: "RangeError" });
    assert.throws(() => new Fields().u(2 ** 60), { name: "RangeError" });
    assert.throws(() => new Fields().u32(2 ** 32), { name: "RangeError" });
    assert.throws(() => new Fields().u(2n ** 64n), { name: "RangeError" });
    assert.throws(() => new Fields().i(2n ** 63n), { name: "RangeError" });
    assert.throws(() => new Fields().str(5), { name: "TypeError" });
  });

  test("zigzag ints", () => {
    const cases = [
      [7878, "fb3d8c"],
      [-1, "01"],
      [0, "00"],
      [1, "02"],
      [-2, "03"],
      [70000, "fc000222e0"],
      [-(2 ** 52), "fd001fffffffffffff"],
      [2n ** 63n - 1n, "fdfffffffffffffffe"],
      [-(2n ** 63n), "fdffffffffffffffff"],
    ];
    for (const [value, expected] of cases) {
      assert.equal(enc(new Fields().i(value)), expected, String(value));
      assert.equal(new Reader(hex(expected)).i64(), typeof value === "bigint" && value >= -(2n ** 53n) && value < 2n ** 53n ? Number(value) : value);
    }
  });

  test("strings are UTF-8 with a byte length", () => {
    assert.equal(enc(new Fields().str("é€")), "05c3a9e282ac");
    assert.equal(new Reader(hex("05c3a9e282ac")).str(), "é€");
    assert.equal(enc(new Fields().bool(true).bool(false)), "0100");
  });

  test("binary inputs: ArrayBuffer, views, strings", () => {
    const buf = new Uint8Array([9, 1, 2, 3, 9]).buffer;
    assert.equal(enc(new Fields().bytes(buf)), "050901020309");
    assert.equal(enc(new Fields().bytes(new Uint8Array(buf, 1, 3))), "03010203");
    assert.equal(enc(new Fields().bytes(new DataView(buf, 1, 2))), "020102");
    assert.equal(enc(new Fields().bytes(new Uint16Array([0x0102]))), "02" + toHex(new Uint8Array(new Uint16Array([0x0102]).buffer)));
    assert.equal(enc(new Fields().bytes("hé")), "0368c3a9");
    assert.throws(() => new Fields().bytes(42), { name: "TypeError" });
  });

  test("daemon->client messages: trailing bytes are ignored", () => {
    const msg = core.decodeBaseMessage(hex("01 00 01 05 02 0c 01 ee ff"));
    assert.equal(toHex(msg.content), "0c01");
    assert.equal(CoreResponse.decode(hex("03 01 99")).success, true);
    assert.equal(new core.SessionAck().decode(hex("01 02 03")).success, true);
  });

  test("permission error kind", () => {
    const msg = core.decodeBaseMessage(hex("01 00 03 05 01 70 01 6d 02 01 00"));
    assert.deepEqual([msg.kind, msg.requestId, msg.permission, msg.message, toHex(msg.content)], [3, 5, "p", "m", "0100"]);
  });

  test("a 5 MiB send frame is built in one allocation with the right bytes", () => {
    const data = new Uint8Array(5 * 1024 * 1024);
    for (let k = 0; k < data.length; k += 4096) data[k] = k & 0xff;
    const frame = core.encodeRequest(1, 1, 9, new Fields().u(2).bytes(data));
    // 01 01 00 09 | content length FC 00 50 00 06 | 02 | FC 00 50 00 00 | data
    assert.equal(frame.length, 4 + 5 + 1 + 5 + data.length);
    assert.equal(frame.buffer.byteLength, frame.length);
    assert.equal(toHex(frame.subarray(0, 15)), "01010009fc00500006" + "02" + "fc00500000");
    assert.ok(Buffer.from(frame.subarray(15)).equals(Buffer.from(data)));
  });
});

test("fingerprint is recomputed from the protocol.md A.5 list", () => {
  const parts = [
    "TcpSocketClose", "TcpSocketResume", "TcpSocketSend(Vec<u8>,)", "TcpSocketSuspend",
    "TcpSocketFactoryOpen(SocketAddress,)", "TcpSocketCloseSuccess", "TcpSocketCloseError",
    "TcpSocketResumeSuccess", "TcpSocketResumeError", "TcpSocketSendSuccess(bool)", "TcpSocketSendError",
    "TcpSocketSuspendSuccess", "TcpSocketSuspendError", "TcpSocketCloseEvent", "TcpSocketDataEvent(Vec<u8>)",
    "TcpSocketDrainEvent(bool)", "TcpSocketErrorEvent(String)", "TcpSocketFactoryOpenSuccess(u32)",
    "TcpSocketFactoryOpenError", "host", "String", "port", "i64", "close", "()", "data", "Vec<u8>",
    "drain", "bool", "error", "String",
  ];
  const digest = createHash("sha256").update(parts.join("")).digest();
  const fingerprint = Array.from(digest, (b) => b.toString(16)).join("");
  assert.equal(fingerprint.length, 58);
  assert.equal(fingerprint, FINGERPRINT);
  assert.equal(lib_tcpsocket.FINGERPRINT, fingerprint);
  assert.equal(lib_tcpsocket.TcpSocketManager.FINGERPRINT, fingerprint);
  assert.equal(lib_tcpsocket.SERVICE_NAME, "TcpSocketManager");
  // The GetService frame carries it.
  assert.ok(GET_SERVICE_3.endsWith(ascii(fingerprint)));
});

describe("api-daemon's codec API (bincode.js)", () => {
  const { Encoder, Decoder, ObjectDecoder } = core;
  test("Encoder: chainable writes, trimmed value(), type errors", () => {
    const e = new Encoder();
    assert.equal(e.varint(5).string("abc").bool(true).u8_array(new Uint8Array([1, 2])).void(), e);
    assert.equal(toHex(e.value()), "0503616263010201 02".replace(/\s/g, ""));
    assert.equal(e.value().buffer.byteLength, 9);
    assert.throws(() => new Encoder().string(1), { message: "Expected string, but got number" });
    assert.throws(() => new Encoder().u8_array("x"), { message: "Expected uintarray, but got string" });
    assert.equal(toHex(new Encoder().full_u16(258).full_u32(1).value()), "010200000001");
    assert.equal(toHex(new Encoder().reset().url(new URL("http://a/")).value()), "09" + ascii("http://a/"));
  });

  test("i64 coerces as the runtime does: non-numbers 0, numeric strings, truncation", () => {
    const ints = (...values) => toHex(values.reduce((e, v) => e.i64(v), new Encoder()).value());
    assert.equal(ints(NaN, undefined, null, "abc", {}), "0000000000");
    assert.equal(ints("7878", "0x10", 1.5, -1.5, true), "fb3d8c" + "20" + "02" + "01" + "02");
    assert.equal(ints(65535), "fc0001fffe");
  });

  test("Decoder reads every type, void is {}, past the end is Error('eof')", () => {
    const bytes = new Encoder().varint(70000).i64(-3).string("hé").bool(false).u8_array(new Uint8Array([7])).json({ a: 1 }).value();
    const d = new Decoder(bytes);
    assert.deepEqual([d.varint(), d.i64(), d.string(), d.bool()], [70000, -3, "hé", false]);
    const view = d.u8_array();
    assert.equal(view.buffer.byteLength >= bytes.length, true);
    assert.deepEqual(Array.from(view), [7]);
    assert.equal(d.json().a, 1);
    assert.equal(Object.keys(d.void()).length, 0);
    assert.throws(() => d.varint(), { message: "eof" });
    assert.equal(new Decoder(hex("fd 00 00 00 00 00 01 11 70")).varint(), 70000);
  });

  test("ObjectDecoder builds an object, chained", () => {
    const bytes = new Encoder().string("127.0.0.1").i64(7878).value();
    same(new ObjectDecoder(bytes).string("host").i64("port").finalize(), { host: "127.0.0.1", port: 7878 });
  });
});

test("core's messages: BaseMessage encode/decode, with or without new", () => {
  const { BaseMessage, SessionHandshake, SessionAck } = core;
  const msg = BaseMessage(1, 1, hex("02 05 48 65 6c 6c 6f")).set_request(9);
  assert.equal(toHex(msg.encode()), h("01 01 00 09 07 02 05 48 65 6c 6c 6f"));
  assert.equal(toHex(new BaseMessage(0, 0, hex("03 01")).set_response(7).encode()), h("00 00 01 07 02 03 01"));
  same({ ...BaseMessage.decode(hex("01 01 02 07 09 05 48 65 6c 6c 6f")), content: null }, { service: 1, object: 1, kind: 2, is_event: true, content: null });
  same(BaseMessage.decode(hex("01 00 03 05 01 70 01 6d 02 01 00")).permissionError, { request: 5, permission: "p", message: "m" });
  assert.equal(BaseMessage.decode(hex("01 00 01 05 02 0c 01")).response, 5);
  assert.equal(toHex(SessionHandshake("abc").encode()), "03616263");
  assert.equal(SessionAck().decode(hex("01")).success, true);
});
