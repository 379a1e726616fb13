// Shared helpers of the JS unit tests: the served files, a vm realm per test,
// a mock WebSocket and a manual clock.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import vm from "node:vm";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "..", "..");

let served = null;

/**
 * Directory holding exactly what ApiV1Resource serves, dumped once per
 * process through Python: the default form of every path at that path (the
 * classic scripts for core.js, session.js, service.js), and every file's
 * ES-module form below esm/ (what `import` gets). TCPSOCKET_SERVED_DIR
 * overrides it.
 */
export function servedDir() {
  if (served !== null) return served;
  if (process.env.TCPSOCKET_SERVED_DIR) {
    served = process.env.TCPSOCKET_SERVED_DIR;
    return served;
  }
  const dir = mkdtempSync(join(tmpdir(), "tcpsocket-served-"));
  const script = [
    "import pathlib, sys",
    "from tcpsocket.web import ApiV1Resource",
    "out = pathlib.Path(sys.argv[1])",
    "api = ApiV1Resource()",
    "for prefix, assets in (('', api.assets), ('esm/', {**api.assets, **api.modules})):",
    "    for path, asset in assets.items():",
    "        target = out / (prefix + path)",
    "        target.parent.mkdir(parents=True, exist_ok=True)",
    "        target.write_bytes(asset.body)",
  ].join("\n");
  const python = process.env.PYTHON || "python3";
  const env = { ...process.env, PYTHONPATH: [repoRoot, process.env.PYTHONPATH].filter(Boolean).join(":") };
  execFileSync(python, ["-c", script, dir], { cwd: repoRoot, env, stdio: ["ignore", "inherit", "inherit"] });
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  served = dir;
  return served;
}

export function servedText(path) {
  return readFileSync(join(servedDir(), path), "utf8");
}

export const SCRIPTS = ["shared/core.js", "shared/session.js", "tcpsocket/service.js"];

/** A controllable setTimeout/clearTimeout. */
export class Clock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, delay = 0) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.now + Math.max(0, delay), fn, delay });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Delays of the pending timers. */
  pending() {
    return Array.from(this.timers.values()).map((t) => t.delay);
  }

  /** Run timers due within `ms`, in order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) if (t.at <= end && (next === null || t.at < next[1].at)) next = [id, t];
      if (next === null) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
  }
}

/** WebSocket stand-in; the test plays the daemon. */
export function makeWebSocketClass(log) {
  return class MockWebSocket {
    constructor(url) {
      this.url = url;
      this.binaryType = "blob";
      this.sent = [];
      this.closed = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      log.push(this);
    }

    send(data) {
      if (this.closed !== null) throw new Error("closed");
      const bytes = ArrayBuffer.isView(data)
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : new Uint8Array(data);
      this.sent.push(Uint8Array.from(bytes));
      this.lastSentObject = data;
    }

    close(code, reason) {
      this.closed = { code, reason };
    }

    // --- daemon side ---
    serverOpen() {
      this.onopen && this.onopen({});
    }

    serverSend(hexOrBytes) {
      const bytes = typeof hexOrBytes === "string" ? hex(hexOrBytes) : hexOrBytes;
      const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
      this.onmessage && this.onmessage({ data: buffer });
    }

    serverClose(code = 1006, reason = "") {
      this.closed = this.closed || { code, reason };
      this.onclose && this.onclose({ code, reason, wasClean: false });
    }

    /** Pop the frames sent so far, as hex strings. */
    take() {
      const out = this.sent.map(toHex);
      this.sent = [];
      return out;
    }
  };
}

export function hex(text) {
  const clean = text.replace(/\s+/g, "");
  if (clean.length % 2) throw new Error(`odd hex: ${text}`);
  const out = new Uint8Array(clean.length / 2);
  for (let k = 0; k < out.length; k++) out[k] = parseInt(clean.slice(2 * k, 2 * k + 2), 16);
  return out;
}

export function ascii(text) {
  return Array.from(Buffer.from(text, "latin1"), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function toHex(bytes) {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

/** Hex of a space-separated vector string (normalised). */
export function h(text) {
  return text.replace(/\s+/g, "").toLowerCase();
}

/**
 * A fresh realm with the classic scripts loaded, as a page would: each
 * script sees document.currentScript.src = base + its path.
 */
export function loadClassic({ base = "http://127.0.0.1:8081/api/v1/", page = "http://127.0.0.1:8081/", scripts = SCRIPTS } = {}) {
  const clock = new Clock();
  const sockets = [];
  const errors = [];
  const pageUrl = new URL(page);
  const context = {
    console,
    TextEncoder,
    TextDecoder,
    URL,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    WebSocket: makeWebSocketClass(sockets),
    reportError: (e) => errors.push(e),
    location: { protocol: pageUrl.protocol, host: pageUrl.host, href: pageUrl.href },
    document: { currentScript: null },
  };
  vm.createContext(context);
  const before = new Set(Object.getOwnPropertyNames(vm.runInContext("globalThis", context)));
  for (const path of scripts) {
    context.document.currentScript = base === null ? null : { src: new URL(path, base).href };
    vm.runInContext(readFileSync(join(servedDir(), path), "utf8"), context, { filename: path });
    context.document.currentScript = null;
  }
  const after = Object.getOwnPropertyNames(vm.runInContext("globalThis", context));
  const added = after.filter((name) => !before.has(name));
  return {
    context,
    clock,
    sockets,
    errors,
    added,
    ExternalAPI: context.ExternalAPI,
    lib_session: context.lib_session,
    lib_tcpsocket: context.lib_tcpsocket,
  };
}

/** Let pending promise reactions run. */
export async function flush() {
  for (let k = 0; k < 5; k++) await new Promise((r) => setImmediate(r));
}

export const FINGERPRINT = "80b7d391444db6fd2eca3b489c6c4aac8144ad3de7852f5b476abb17bf";
export const GET_SERVICE_3 = h("00 00 00 03 4d 00 10") + ascii("TcpSocketManager") + "3a" + ascii(FINGERPRINT);

/**
 * Open a session on the mock, complete the handshake and GetService; returns
 * {env, session, ws, manager, state}.
 */
export async function connectManager(env = loadClassic(), { lazy = false } = {}) {
  const state = { connected: 0, disconnected: 0, errors: [], disconnects: [] };
  const session = new env.lib_session.Session();
  session.open(
    "websocket",
    "localhost",
    "abc",
    {
      onsessionconnected: () => state.connected++,
      onsessiondisconnected: (e) => {
        state.disconnected++;
        state.disconnects.push(e);
      },
      onsessionconnectionerror: (e) => state.errors.push(e),
    },
    lazy
  );
  const ws = env.sockets[env.sockets.length - 1];
  ws.serverOpen();
  ws.take();
  ws.serverSend("01");
  const pending = env.lib_tcpsocket.TcpSocketManager.get(session);
  const [frame] = ws.take();
  const core = env.ExternalAPI.core;
  const id = core.decodeBaseMessage(hex(frame)).requestId;
  ws.serverSend(core.encodeResponse(0, 0, id, hex("00 00 01")));
  const manager = await pending;
  return { env, session, ws, manager, state, core };
}

/** Answer the last request `ws` sent (its id from the frame) with `contentHex`, from `service`/`object`. */
export function reply(core, ws, frameHex, contentHex) {
  const msg = core.decodeBaseMessage(hex(frameHex));
  ws.serverSend(core.encodeResponse(msg.service, msg.object, msg.requestId, hex(contentHex)));
}
