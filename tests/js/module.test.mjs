// The current generation: the ES modules `import` gets at the same URLs
// (api-daemon's HEAD module graph), with their exports and import specifiers.
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { GET_SERVICE_3, h, makeWebSocketClass, servedDir, servedText } from "./helpers.mjs";

const url = (path) => pathToFileURL(join(servedDir(), "esm", path)).href;

const EXPORTS = {
  "shared/bincode.js": ["Decoder", "Encoder", "ObjectDecoder", "wrapBlob"],
  "shared/core.js": ["core"],
  "shared/services.js": ["default"],
  "shared/session.js": ["Session"],
  "shared/sessionobject.js": ["default"],
  "shared/ws_transport.js": ["default"],
  "tcpsocket/service.js": ["TcpSocketManager"],
  "apps/service.js": ["TcpSocketManager"],
};

const IMPORTS = {
  "shared/bincode.js": [],
  "shared/core.js": ['"./bincode.js"'],
  "shared/services.js": ['"./core.js"'],
  "shared/session.js": ['"./ws_transport.js"', '"./services.js"', '"./core.js"'],
  "shared/sessionobject.js": ['"./services.js"', '"./core.js"'],
  "shared/ws_transport.js": ['"./core.js"'],
  "tcpsocket/service.js": ["'../shared/services.js'", "'../shared/sessionobject.js'", "'../shared/bincode.js'"],
};

test("the six shared modules and the service export what api-daemon's do, and define no globals", async () => {
  const before = new Set(Object.getOwnPropertyNames(globalThis));
  for (const [path, names] of Object.entries(EXPORTS)) {
    const module = await import(url(path));
    for (const name of names) assert.ok(name in module && module[name] !== undefined, `${path} exports ${name}`);
  }
  assert.deepEqual(Object.getOwnPropertyNames(globalThis).filter((n) => !before.has(n)), []);
  const session = await import(url("shared/session.js"));
  assert.equal("default" in session, false);
  const core = (await import(url("shared/core.js"))).core;
  assert.deepEqual(Object.keys(core), ["SessionAck", "SessionHandshake", "BaseMessage", "CoreRequest", "CoreResponse"]);
  const services = (await import(url("shared/services.js"))).default;
  assert.deepEqual(Object.keys(services).sort(), ["create_core_message", "get", "has"]);
  const service = await import(url("tcpsocket/service.js"));
  assert.deepEqual(Object.keys(service.TcpSocketManager), ["get"]);
  const alias = await import(url("apps/service.js"));
  assert.deepEqual(Object.keys(alias.TcpSocketManager), ["get"]);
  assert.equal(servedText("esm/apps/service.js"), servedText("esm/tcpsocket/service.js"));
});

test("import specifiers are api-daemon's exact strings", () => {
  for (const [path, specifiers] of Object.entries(IMPORTS)) {
    const found = servedText(join("esm", path))
      .split("\n")
      .filter((line) => line.startsWith("import "))
      .map((line) => line.slice(line.lastIndexOf(" from ") + 6, -1));
    assert.deepEqual(found, specifiers, path);
  }
});

test("the module graph runs the seed's flow with the same frames", async () => {
  const { Session } = await import(url("shared/session.js"));
  const { TcpSocketManager } = await import(url("tcpsocket/service.js"));
  const sockets = [];
  globalThis.WebSocket = makeWebSocketClass(sockets);
  try {
    const session = new Session();
    const opened = session.open("websocket", "localhost", "abc", {}, false);
    assert.deepEqual(opened, { success: true, cause: "success" });
    const ws = sockets[0];
    // The port rule: a file: URL gives 8081.
    assert.equal(ws.url, "ws://localhost:8081/ws");
    ws.serverOpen();
    ws.serverSend("01");
    const pending = TcpSocketManager.get(session);
    ws.serverSend("00 00 01 03 03 00 00 01");
    const manager = await pending;
    const opening = manager.open({ host: "127.0.0.1", port: 7878 });
    ws.serverSend("01 00 01 05 02 0c 01");
    const socket = await opening;
    assert.deepEqual(ws.take(), ["03616263", GET_SERVICE_3, h("01 00 00 05 0e 04 09 31 32 37 2e 30 2e 30 2e 31 fb 3d 8c")]);
    const sent = socket.send(new TextEncoder().encode("Hello"));
    assert.deepEqual(ws.take(), [h("01 01 00 07 07 02 05 48 65 6c 6c 6f")]);
    ws.serverSend("01 01 01 07 02 04 01");
    assert.equal(await sent, true);
    session.close();
  } finally {
    delete globalThis.WebSocket;
  }
});
