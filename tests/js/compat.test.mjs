// api-daemon's JS runtime contract, on the classic scripts the daemon serves
// (webpack-era globals), against a mock WebSocket playing the daemon.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { GET_SERVICE_3, SCRIPTS, connectManager, flush, h, hex, loadClassic, reply, servedText } from "./helpers.mjs";

/** deepEqual across realms (the scripts run in a vm context). */
const same = (actual, expected) => assert.deepEqual(JSON.parse(JSON.stringify(actual)), expected);
const settle = async (promise) => {
  try {
    return { ok: await promise };
  } catch (error) {
    return { error };
  }
};

/** Open a socket on `manager`: the Open request is answered with socket `id`. */
async function openSocket({ ws, manager, core }, id = 1) {
  const opening = manager.open({ host: "127.0.0.1", port: 7878 });
  const [frame] = ws.take();
  reply(core, ws, frame, `0c ${id.toString(16).padStart(2, "0")}`);
  return opening;
}

describe("webpack-era globals", () => {
  test("ExternalAPI, lib_session, lib_tcpsocket and nothing else", () => {
    const env = loadClassic();
    assert.deepEqual(env.added.sort(), ["ExternalAPI", "lib_session", "lib_tcpsocket"]);
    assert.deepEqual(Object.keys(env.ExternalAPI), ["core"]);
    assert.deepEqual(Object.keys(env.ExternalAPI.core), ["SessionAck", "SessionHandshake", "BaseMessage", "CoreRequest", "CoreResponse"]);
    assert.deepEqual(Object.keys(env.lib_session), ["Session"]);
    assert.deepEqual(Object.keys(env.lib_tcpsocket), ["TcpSocketManager"]);
    assert.deepEqual(Object.keys(env.lib_tcpsocket.TcpSocketManager), ["get"]);
    for (const api of [env.ExternalAPI, env.lib_session, env.lib_tcpsocket]) {
      assert.equal(api.__esModule, true);
      assert.equal(Object.getOwnPropertyDescriptor(api, "__esModule").enumerable, false);
    }
    assert.equal(servedText("apps/service.js"), servedText("tcpsocket/service.js"));
  });

  test("each script stands alone (no load order)", () => {
    const env = loadClassic({ scripts: ["tcpsocket/service.js", "shared/session.js"] });
    assert.deepEqual(env.added.sort(), ["lib_session", "lib_tcpsocket"]);
    assert.equal(typeof env.lib_tcpsocket.TcpSocketManager.get, "function");
  });
});

describe("Session", () => {
  test("own properties, open results, default host and the port rule", () => {
    const env = loadClassic({ base: "http://127.0.0.1:9000/api/v1/" });
    const session = new env.lib_session.Session();
    assert.deepEqual(Object.keys(session), [
      "requests", "request_id", "next_id", "tracked", "tracked_events", "connected", "reconnecting", "objectRegistry", "services",
    ]);
    assert.deepEqual([session.request_id, session.next_id, session.connected, session.reconnecting], [1, 1, false, false]);
    same(session.open("websocket", "", "t", {}), { success: true, cause: "success" });
    assert.equal(env.sockets.at(-1).url, "ws://localhost:8081/ws");
    same(session.open("websocket", "localhost", "t", {}), { success: true, cause: "success" });
    assert.equal(env.sockets.at(-1).url, "ws://localhost:9000/ws");
    same(session.open("websocket", "127.0.0.1:7000", "t", {}), { success: true, cause: "success" });
    assert.equal(env.sockets.at(-1).url, "ws://127.0.0.1:7000/ws");
    // Opening again closed the previous WebSocket.
    assert.notEqual(env.sockets.at(-2).closed, null);
    const kind = session.open("tcp", "localhost", "t", {});
    assert.equal(kind.success, false);
    assert.match(kind.cause, /websocket/);
    same(session.open_url("ws://x/ws", "", {}), { success: false, cause: "Invalid token" });
    same(session.open_url("http://x/ws", "t", {}), { success: false, cause: "Unsupported url. Url should be a valid websocket url" });
    same(session.open_url("WS://x/ws", "t", {}), { success: false, cause: "Unsupported url. Url should be a valid websocket url" });
    assert.equal(session.is_connected(), false);
  });

  test("handshake, callbacks and odd request ids from 3", async () => {
    const { session, ws, state, env, core } = await connectManager();
    assert.equal(state.connected, 1);
    assert.equal(session.is_connected(), true);
    assert.equal(session.connected, true);
    assert.equal(session.services[1], "TcpSocketManager");
    assert.equal(session.request_id, 3);
    const has = session.has_service("TcpSocketManager");
    const [frame] = ws.take();
    assert.equal(frame, h("00 00 00 05 12 01 10") + Buffer.from("TcpSocketManager").toString("hex"));
    reply(core, ws, frame, "01 01");
    assert.equal(await has, true);
    assert.ok(env);
  });

  test("a refused token: onsessionconnectionerror once, never retried", async () => {
    const env = loadClassic();
    const errors = [];
    const session = new env.lib_session.Session();
    session.open("websocket", "localhost", "bad", { onsessionconnectionerror: (e) => errors.push(e) }, true);
    const ws = env.sockets[0];
    ws.serverOpen();
    ws.serverSend("00");
    ws.serverClose(1008, "invalid token");
    env.clock.advance(60_000);
    same(errors, [{ reason: "token_refused" }]);
    assert.equal(env.sockets.length, 1);
  });

  test("close(): pending calls reject, onsessiondisconnected when the close event comes, then zombie", async () => {
    const { session, ws, state, manager } = await connectManager();
    const pending = settle(manager.open({ host: "127.0.0.1", port: 1 }));
    session.close();
    same((await pending).error, { reason: "session_closed", value: "client closed session" });
    assert.equal(session.is_connected(), false);
    assert.equal(state.disconnected, 0);
    ws.onclose({ code: 1000, reason: "" });
    assert.equal(state.disconnected, 1);
    const late = await settle(manager.open({ host: "127.0.0.1", port: 1 }));
    assert.equal(late.error.reason, "session_closed");
    assert.match(late.error.value, /^zombie session \(message was \{"service":1,"object":0,"content":/);
    session.close(); // a second close does nothing
  });
});

describe("TcpSocketManager and TcpSocket", () => {
  test("get() resolves a service object; failures reject with bare strings", async () => {
    const { manager, session, ws, core, env } = await connectManager();
    assert.deepEqual(Object.keys(manager), ["id", "session", "service_id", "wrapper_payload_message", "event_callbacks"]);
    assert.deepEqual([manager.id, manager.service_id], [0, 1]);
    assert.equal(Object.getPrototypeOf(manager.event_callbacks), null);
    for (const [answer, expected] of [
      ["00 01", "UnknownService"],
      ["00 02", "FingerprintMismatch"],
      ["00 03", "MissingPermission"],
      ["00 04 03 62 61 64", "Internal:bad"],
    ]) {
      const got = settle(env.lib_tcpsocket.TcpSocketManager.get(session));
      const [frame] = ws.take();
      reply(core, ws, frame, answer);
      assert.equal((await got).error, expected);
    }
    // A permission error frame (kind 3).
    const got = settle(env.lib_tcpsocket.TcpSocketManager.get(session));
    const id = core.decodeBaseMessage(hex(ws.take()[0])).requestId;
    ws.serverSend(hex(`00 00 03 ${id.toString(16).padStart(2, "0")} 01 70 01 6d 00`));
    same((await got).error, { reason: "permission_error", value: { request: id, permission: "p", message: "m" } });
  });

  test("methods resolve as specified; failures keep value {} and carry the reason beside it", async () => {
    const ctx = await connectManager();
    const { ws, core, manager } = ctx;
    const socket = await openSocket(ctx, 1);
    assert.deepEqual(Object.keys(socket), ["id", "session", "service_id", "wrapper_payload_message", "event_callbacks"]);
    assert.deepEqual([socket.id, socket.service_id, socket.object_id], [1, 1, 1]);
    assert.deepEqual([socket.CLOSE_EVENT, socket.DATA_EVENT, socket.DRAIN_EVENT, socket.ERROR_EVENT], [0, 1, 2, 3]);
    assert.equal(Object.hasOwn(socket, "DATA_EVENT"), false);
    const calls = [
      ["send", [new Uint8Array([1])], "04 01", true],
      ["send", ["text"], "04 00", false],
      ["suspend", [], "06", {}],
      ["resume", [], "02", {}],
      ["close", [], "00", {}],
    ];
    for (const [method, args, answer, expected] of calls) {
      const result = settle(socket[method](...args));
      reply(core, ws, ws.take()[0], answer);
      same((await result).ok, expected);
    }
    for (const [method, name, answer] of [["send", "Send", "05"], ["suspend", "Suspend", "07"], ["resume", "Resume", "03"], ["close", "Close", "01"]]) {
      const args = method === "send" ? [new ArrayBuffer(2)] : [];
      const result = settle(socket[method](...args));
      reply(core, ws, ws.take()[0], answer + " 03 61 62 63");
      same((await result).error, { method_name: name, reason: "call_failure", value: {}, message: "abc" });
    }
    // Open: error variant with and without the daemon's reason; port coercion on the wire.
    const opening = settle(manager.open({ host: "127.0.0.1", port: "abc" }));
    const frame = ws.take()[0];
    assert.ok(frame.endsWith(h("04 09 31 32 37 2e 30 2e 30 2e 31 00")), frame);
    reply(core, ws, frame, "0d");
    same((await opening).error, { method_name: "Open", reason: "call_failure", value: {}, message: "open failed" });
    const strPort = manager.open({ host: "127.0.0.1", port: "7878" }).catch(() => {});
    assert.ok(ws.take()[0].endsWith("fb3d8c"));
    assert.ok(strPort);
    // Synchronous throws of the original.
    assert.throws(() => manager.open(undefined), { name: "TypeError" });
    assert.throws(() => manager.open({ host: 1, port: 1 }), { message: "Expected string, but got number" });
    assert.throws(() => socket.send(undefined), { message: "Expected uintarray, but got undefined" });
    assert.throws(() => socket.send([1, 2]), { message: "Expected uintarray, but got object" });
  });

  test("events: CLOSE {}, DATA Uint8Array, DRAIN boolean, ERROR string; Enable/DisableEvent", async () => {
    const ctx = await connectManager();
    const { ws } = ctx;
    const socket = await openSocket(ctx, 1);
    const got = [];
    const handlers = [0, 1, 2, 3].map((e) => (v) => got.push([e, v]));
    for (const e of [1, 2, 3, 0]) socket.addEventListener(e, handlers[e]);
    socket.addEventListener(1, handlers[1]); // again: nothing sent
    assert.deepEqual(ws.take(), [h("00 00 00 07 04 03 01 01 01"), h("00 00 00 09 04 03 01 01 02"), h("00 00 00 0b 04 03 01 01 03"), h("00 00 00 0d 04 03 01 01 00")]);
    assert.throws(() => socket.addEventListener(undefined, handlers[0]), { message: "Expected number, but got undefined" });
    ws.serverSend("01 01 02 07 09 05 48 65 6c 6c 6f");
    ws.serverSend("01 01 02 02 0a 01");
    ws.serverSend("01 01 02 03 0b 01 78");
    ws.serverSend("01 01 02 01 08");
    assert.equal(got.length, 4);
    assert.equal(got[0][0], 1);
    assert.equal(Object.prototype.toString.call(got[0][1]), "[object Uint8Array]");
    assert.equal(Buffer.from(got[0][1]).toString(), "Hello");
    assert.deepEqual(got.slice(1).map(([e, v]) => [e, v]).slice(0, 2), [[2, true], [3, "x"]]);
    assert.equal(got[3][0], 0);
    same(got[3][1], {});
    assert.equal(Object.keys(got[3][1]).length, 0);
    socket.removeEventListener(1, handlers[1]);
    assert.deepEqual(ws.take(), [h("00 00 00 0f 04 04 01 01 01")]);
  });

  test("release(): undefined on true, {reason, value: 'No such object'} on false", async () => {
    const ctx = await connectManager();
    const { ws, core, manager } = ctx;
    const socket = await openSocket(ctx, 1);
    const released = settle(socket.release());
    const frame = ws.take()[0];
    assert.equal(frame, h("00 00 00 07 03 02 01 01"));
    reply(core, ws, frame, "02 01");
    assert.deepEqual(await released, { ok: undefined });
    const again = settle(manager.release());
    const second = ws.take()[0];
    assert.equal(second, h("00 00 00 09 03 02 01 00"));
    reply(core, ws, second, "02 00");
    same((await again).error, { reason: "call_failure", value: "No such object" });
  });

  test("manager listeners get the events of every socket, this = the socket", async () => {
    const ctx = await connectManager();
    const { ws, manager } = ctx;
    const first = await openSocket(ctx, 1);
    const seen = [];
    function onData(value) {
      seen.push([this.id, Buffer.from(value).toString()]);
    }
    manager.addEventListener(manager.DATA_EVENT, onData);
    assert.deepEqual(ws.take(), [h("00 00 00 07 04 03 01 01 01")]);
    const second = await openSocket(ctx, 2);
    assert.deepEqual(ws.take(), [h("00 00 00 0b 04 03 01 02 01")]);
    ws.serverSend("01 01 02 03 09 01 61");
    ws.serverSend("01 02 02 03 09 01 62");
    assert.deepEqual(seen, [[1, "a"], [2, "b"]]);
    manager.removeEventListener(manager.DATA_EVENT, onData);
    assert.equal(ws.take().length, 2);
    assert.ok(first && second);
  });
});

describe("lazy reconnect", () => {
  test("retries with backoff until the daemon is back (not only once)", async () => {
    const ctx = await connectManager(undefined, { lazy: true });
    const { env, ws, state, session, manager } = ctx;
    const pending = settle(manager.open({ host: "127.0.0.1", port: 1 }));
    ws.serverClose(1006);
    same((await pending).error, { reason: "session_closed", value: "daemon restarting" });
    assert.equal(state.disconnected, 1);
    assert.equal(session.reconnecting, true);
    const delays = [];
    for (let attempt = 0; attempt < 5; attempt++) {
      delays.push(...env.clock.pending());
      env.clock.advance(env.clock.pending()[0]);
      env.sockets.at(-1).serverClose(1006);
    }
    assert.deepEqual(delays, [250, 500, 1000, 2000, 4000]);
    assert.equal(state.errors.length, 5);
    env.clock.advance(env.clock.pending()[0]);
    const back = env.sockets.at(-1);
    back.serverOpen();
    assert.deepEqual(back.take(), ["03616263"]);
    back.serverSend("01");
    assert.equal(state.connected, 2);
    assert.equal(session.reconnecting, false);
    assert.deepEqual(env.clock.pending(), []);
    // Old objects are stale: their calls reject without reaching the new connection.
    const stale = await settle(manager.open({ host: "127.0.0.1", port: 1 }));
    same(stale.error, { reason: "session_closed", value: "an object of an earlier connection" });
    assert.deepEqual(back.take(), []);
    await flush();
  });

  test("reconnect() opens a new connection and returns {success, cause}", async () => {
    const { session, env } = await connectManager();
    const before = env.sockets.length;
    same(session.reconnect(), { success: true, cause: "success" });
    assert.equal(env.sockets.length, before + 1);
    assert.equal(session.next_id, 1);
  });
});

test("the served scripts are the ones the tests load", () => {
  for (const path of SCRIPTS) assert.match(servedText(path), /as a classic script/);
  assert.ok(GET_SERVICE_3.length > 0);
});

test("b2g: a fresh token from navigator.b2g.externalapi.getToken() before reconnecting", async () => {
  const ctx = await connectManager(undefined, { lazy: true });
  const { env, ws } = ctx;
  env.context.navigator = { b2g: { externalapi: { getToken: () => Promise.resolve("fresh") } } };
  ws.serverClose(1006);
  env.clock.advance(250);
  await flush();
  const next = env.sockets.at(-1);
  assert.notEqual(next, ws);
  next.serverOpen();
  assert.deepEqual(next.take(), ["05" + Buffer.from("fresh").toString("hex")]);
});

test("UMD: under CommonJS the classic script assigns module.exports", async () => {
  const { default: vm } = await import("node:vm");
  const sandbox = { module: { exports: {} }, FinalizationRegistry, WeakRef, URL, TextEncoder, TextDecoder };
  vm.createContext(sandbox);
  vm.runInContext(servedText("shared/session.js"), sandbox);
  assert.equal(typeof sandbox.module.exports.Session, "function");
  assert.equal("lib_session" in sandbox, false);
});

describe("the port rule and the scheme", () => {
  const cases = [
    ["localhost", "http://127.0.0.1:8081/api/v1/", "ws://localhost:8081/ws"],
    ["localhost", "https://daemon.test/api/v1/", "wss://localhost:443/ws"],
    ["[::1]", "http://127.0.0.1:9000/api/v1/", "ws://[::1]:9000/ws"],
    ["::1", "http://127.0.0.1:9000/api/v1/", "ws://[::1]:9000/ws"],
    ["[::1]:7000", "http://127.0.0.1:9000/api/v1/", "ws://[::1]:7000/ws"],
    ["10.0.0.1:7000", "http://127.0.0.1:9000/api/v1/", "ws://10.0.0.1:7000/ws"],
  ];
  for (const [host, base, url] of cases) {
    test(`${host} with scripts from ${base}`, () => {
      const env = loadClassic({ base });
      assert.equal(env.lib_session.websocketUrl(host), url);
      new env.lib_session.Session().open("websocket", host, "t", {});
      assert.equal(env.sockets.at(-1).url, url);
    });
  }

  test("inlined code (no script URL): 8081, and wss on an https page", () => {
    const env = loadClassic({ base: null, page: "https://app.test/" });
    assert.equal(env.lib_session.websocketUrl("localhost"), "wss://localhost:8081/ws");
  });

  test("bad hosts are refused causes", () => {
    const env = loadClassic();
    const session = new env.lib_session.Session();
    for (const host of ["bad host", "a/b", "h:0", "h:70000"]) {
      const result = session.open("websocket", host, "t", {});
      assert.equal(result.success, false, host);
    }
    assert.equal(env.sockets.length, 0);
  });
});

test("throwing callbacks and listeners are reported; the session and other listeners go on", async () => {
  const env = loadClassic();
  const session = new env.lib_session.Session();
  const errors = [];
  env.context.reportError = (e) => errors.push(e);
  session.open("websocket", "localhost", "abc", {
    onsessionconnected() {
      throw new Error("callback");
    },
  });
  const ws = env.sockets[0];
  ws.serverOpen();
  ws.serverSend("01");
  assert.equal(session.is_connected(), true);
  const pending = env.lib_tcpsocket.TcpSocketManager.get(session);
  ws.serverSend("00 00 01 03 03 00 00 01");
  const manager = await pending;
  const opening = manager.open({ host: "127.0.0.1", port: 1 });
  ws.serverSend("01 00 01 05 02 0c 01");
  const socket = await opening;
  const seen = [];
  socket.addEventListener(1, () => {
    throw new Error("listener");
  });
  socket.addEventListener(1, (v) => seen.push(v.length));
  ws.serverSend("01 01 02 07 09 05 48 65 6c 6c 6f");
  assert.deepEqual(seen, [5]);
  assert.deepEqual(errors.map((e) => e.message), ["callback", "listener"]);
});
