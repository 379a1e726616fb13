// The ES-module forms served as .mjs (generated from the classic sources by
// tcpsocket/web.py): exports, no globals, same bytes as the classic scripts.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { GET_SERVICE_3, h, loadClassic, makeWebSocketClass, servedDir, servedText, toHex } from "./helpers.mjs";

const url = (path) => pathToFileURL(join(servedDir(), path)).href;

test("modules export lib_session / lib_tcpsocket without touching globals", async () => {
  const before = new Set(Object.getOwnPropertyNames(globalThis));
  const core = await import(url("shared/core.mjs"));
  const session = await import(url("shared/session.mjs"));
  const service = await import(url("tcpsocket/service.mjs"));
  const alias = await import(url("apps/service.mjs"));
  const added = Object.getOwnPropertyNames(globalThis).filter((n) => !before.has(n));
  assert.deepEqual(added, []);
  assert.equal(typeof core.lib_session.core.Fields, "function");
  assert.equal(core.default, core.lib_session);
  assert.equal(session.lib_session, core.lib_session);
  assert.equal(typeof session.lib_session.Session, "function");
  assert.equal(service.lib_session, session.lib_session);
  assert.equal(service.default, service.lib_tcpsocket);
  assert.equal(service.lib_tcpsocket.DATA_EVENT, 1);
  assert.equal(typeof service.lib_tcpsocket.TcpSocketManager.get, "function");
  // apps/service.mjs imports ../shared/session.mjs: the same module instance.
  assert.equal(alias.lib_session, service.lib_session);
  // The port rule in a module uses import.meta.url (here a file: URL -> 8081).
  assert.equal(session.lib_session.scriptUrl, url("shared/session.mjs"));
  assert.equal(session.lib_session.websocketUrl("localhost"), "ws://localhost:8081/ws");
});

test("the module text is the classic source plus a wrapper", () => {
  for (const path of ["shared/core.js", "shared/session.js", "tcpsocket/service.js"]) {
    const classic = servedText(path);
    const module = servedText(path.replace(/\.js$/, ".mjs"));
    assert.ok(module.includes(classic.trimEnd()), path);
    assert.ok(module.length - classic.length < 800, path);
  }
  assert.equal(servedText("apps/service.js"), servedText("tcpsocket/service.js"));
});

test("module and classic scripts produce the same frames", async () => {
  const { lib_session, lib_tcpsocket } = await import(url("tcpsocket/service.mjs"));
  const sockets = [];
  globalThis.WebSocket = makeWebSocketClass(sockets);
  try {
    const session = new lib_session.Session();
    session.open_url("ws://127.0.0.1:1/ws", "abc", {}, false);
    const ws = sockets[0];
    ws.serverOpen();
    ws.serverSend("01");
    const pending = lib_tcpsocket.TcpSocketManager.get(session);
    ws.serverSend("00 00 01 03 03 00 00 01");
    const manager = await pending;
    const opened = manager.open({ host: "127.0.0.1", port: 7878 });
    ws.serverSend("01 00 01 05 02 0c 01");
    const socket = await opened;
    const frames = ws.take();
    assert.deepEqual(frames, ["03616263", GET_SERVICE_3, h("01 00 00 05 0e 04 09 31 32 37 2e 30 2e 30 2e 31 fb 3d 8c")]);
    socket.send("Hello").catch(() => {});
    assert.deepEqual(ws.take(), [h("01 01 00 07 07 02 05 48 65 6c 6c 6f")]);
    session.close();

    const classic = loadClassic();
    const frame = classic.lib_session.core.encodeRequest(1, 1, 7, new classic.lib_session.core.Fields().u(2).bytes("Hello"));
    assert.equal(toHex(frame), h("01 01 00 07 07 02 05 48 65 6c 6c 6f"));
  } finally {
    delete globalThis.WebSocket;
  }
});
