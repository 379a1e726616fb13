/*
 * tcpsocket client library -- Session: one WebSocket to the daemon
 * (`ws[s]://host[:port]/ws`), the token handshake, request/response matching,
 * event routing and lazy reconnection.
 *
 * ES module; named export `Session` (the classic script at the same URL
 * defines the global `lib_session` = {Session}). Also exports
 * `websocketUrl` and `scriptUrl` (the port rule, doc/javascript.md).
 */
import WSTransport from "./ws_transport.js";
import Services from "./services.js";
import { core } from "./core.js";

const DEFAULT_HOST = "localhost:8081";
const DEFAULT_PORT = 8081;
const RECONNECT_INITIAL_MS = 250;
const RECONNECT_MAX_MS = 5000;

/** URL this module was loaded from (the classic script: document.currentScript.src). */
export const scriptUrl = String(import.meta.url || "");

function parseUrl(text) {
  try {
    return new URL(text);
  } catch (e) {
    return null;
  }
}

/** Port of the daemon that served this script, or 8081. */
function daemonPort() {
  const url = parseUrl(scriptUrl);
  if (url === null || (url.protocol !== "http:" && url.protocol !== "https:")) return DEFAULT_PORT;
  if (url.port) return Number(url.port);
  return url.protocol === "https:" ? 443 : 80;
}

/** wss when this script came over https (or, if its URL is unknown, the page did). */
function secure() {
  const url = parseUrl(scriptUrl);
  if (url !== null && (url.protocol === "http:" || url.protocol === "https:")) return url.protocol === "https:";
  return typeof location !== "undefined" && location !== null && location.protocol === "https:";
}

/**
 * WebSocket URL for `host`: "name", "name:port", "1.2.3.4", "[::1]", "[::1]:port"
 * or a bare IPv6 literal. Without a port, the port of the daemon that served
 * session.js (8081 if unknown). Throws TypeError for anything else.
 */
export function websocketUrl(host) {
  if (typeof host !== "string" || host.trim() === "") throw new TypeError("host must be a non-empty string");
  let name = host.trim();
  let port = null;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(name);
  if (bracketed) {
    name = `[${bracketed[1]}]`;
    port = bracketed[2] === undefined ? null : Number(bracketed[2]);
  } else if ((name.match(/:/g) || []).length > 1) {
    name = `[${name}]`;
  } else {
    const m = /^([^:/?#@\s[\]]+)(?::(\d+))?$/.exec(name);
    if (!m) throw new TypeError(`invalid host: ${host}`);
    name = m[1];
    port = m[2] === undefined ? null : Number(m[2]);
  }
  if (port === null) port = daemonPort();
  if (!(port >= 1 && port <= 65535)) throw new TypeError(`invalid port in host: ${host}`);
  return `${secure() ? "wss" : "ws"}://${name}:${port}/ws`;
}

function callback(state, name, info) {
  const fn = state && state[name];
  if (typeof fn !== "function") return;
  try {
    fn.call(state, info);
  } catch (e) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(e);
    else console.error(e);
  }
}

function describe(msg) {
  try {
    return JSON.stringify(msg);
  } catch (e) {
    return String(msg);
  }
}

function closedError(value) {
  return { reason: "session_closed", value };
}

export class Session {
  #generation = 0;
  #userClosed = false;
  #retryDelay = RECONNECT_INITIAL_MS;
  #retryTimer = null;
  #held = new Set();

  constructor() {
    this.requests = new Map();
    this.request_id = 1;
    this.next_id = 1;
    this.tracked = new Map();
    this.tracked_events = new Map();
    this.connected = false;
    this.reconnecting = false;
    this.objectRegistry = new FinalizationRegistry((held) => this.#finalized(held));
    this.services = {};
  }

  /** Number of the current connection; objects of an earlier one are stale. */
  get generation() {
    return this.#generation;
  }

  /**
   * open("websocket", host, token, sessionstate, lazy_reconnect) -> {success, cause}.
   * `host` defaults to "localhost:8081"; without a port it is the port of the
   * daemon that served this script. Callbacks of `sessionstate`:
   * onsessionconnected(), onsessiondisconnected(info), onsessionconnectionerror(info).
   */
  open(kind, host, token, state, lazy_reconnect = false) {
    if (kind !== "websocket") {
      return { success: false, cause: `Unsupported session kind ${JSON.stringify(String(kind))}: use "websocket"` };
    }
    let url;
    try {
      url = websocketUrl(host || DEFAULT_HOST);
    } catch (e) {
      return { success: false, cause: e.message };
    }
    return this.open_url(url, token, state, lazy_reconnect);
  }

  /** The same on an explicit ws:// or wss:// URL. */
  open_url(url, token, state, lazy_reconnect = false) {
    if (typeof token !== "string" || token.length === 0) return { success: false, cause: "Invalid token" };
    if (!url.startsWith("ws://") && !url.startsWith("wss://")) {
      return { success: false, cause: "Unsupported url. Url should be a valid websocket url" };
    }
    this.#stop("session reopened");
    this.session_state = state || {};
    this.lazy_reconnect = !!lazy_reconnect;
    this.url = url;
    this.token = token;
    this.#userClosed = false;
    this.#retryDelay = RECONNECT_INITIAL_MS;
    this.#start();
    return { success: true, cause: "success" };
  }

  /** Close for good: no reconnection; pending calls reject; onsessiondisconnected follows. */
  close() {
    this.lazy_reconnect = false;
    this.#userClosed = true;
    const wasConnected = this.connected;
    const transport = this.transport;
    this.clear("client closed session");
    if (transport) {
      transport.close(() => {
        if (wasConnected) callback(this.session_state, "onsessiondisconnected", { code: 1000, reason: "session closed" });
      });
    }
  }

  /** Reject every pending request with {reason: "session_closed", value: description}. */
  clear(description) {
    this.#cancelRetry();
    this.connected = false;
    this.#generation++;
    this.transport = null;
    this.tracked = new Map();
    this.tracked_events = new Map();
    this.#held.clear();
    const pending = Array.from(this.requests.values());
    this.requests.clear();
    for (const p of pending) p.reject(closedError(description));
  }

  is_connected() {
    return this.connected;
  }

  /** A new connection to the same URL (and token) now -> {success, cause}. */
  reconnect() {
    this.#stop("daemon restarting");
    this.next_id = 1;
    if (!this.url) this.url = `ws://${DEFAULT_HOST}/ws`;
    this.#userClosed = false;
    this.#start();
    return { success: true, cause: "success" };
  }

  has_service(name) {
    return Services.has(name, this);
  }

  /** Our low-level GetService -> Promise<number>; TcpSocketManager.get() is what apps use. */
  get_service(name, fingerprint) {
    return Services.get(name, fingerprint, this);
  }

  /**
   * Send `msg` (a BaseMessage) as a request; resolves with
   * {response, service, object, msg: responseType.decode(content, service, session)}.
   */
  send_request(msg, responseType) {
    if (!this.connected || !this.transport) {
      return Promise.reject(closedError(`zombie session (message was ${describe(msg)})`));
    }
    if (!responseType) {
      return Promise.reject({ reason: "call_failure", value: `response_type must be defined (message was ${describe(msg)}).` });
    }
    this.request_id += 2;
    const id = this.request_id;
    const frame = msg.set_request(id).encode();
    return new Promise((resolve, reject) => {
      this.requests.set(id, { resolve, reject, responseType });
      this.transport.send(frame);
    });
  }

  /** A request without an answer. */
  send_request_oneway(msg) {
    if (!this.connected || !this.transport) throw new Error(`session_closed: zombie session (message was ${describe(msg)})`);
    this.request_id += 2;
    this.transport.send(msg.set_request(this.request_id).encode());
  }

  /** An answer to a daemon request (msg already carries the daemon's id). */
  send_callback_message(msg) {
    if (!this.connected || !this.transport) throw new Error(`session_closed: zombie session (message was ${describe(msg)})`);
    this.transport.send(msg.encode());
  }

  get_next_id() {
    return this.next_id;
  }

  track(obj) {
    this.tracked.set(this.next_id, obj);
    this.next_id += 2;
  }

  untrack(id) {
    this.tracked.delete(id);
  }

  get_tracked(id) {
    return this.tracked.has(id) ? this.tracked.get(id) : null;
  }

  new_tracked(cls, arg) {
    const obj = new cls(this.next_id, this, arg);
    this.track(obj);
    return obj;
  }

  get_event_key(service, object) {
    return `${service},${object}`;
  }

  /** Route events of (service, object) to `obj`; the first object registered for a key wins. */
  track_events(service, object, obj) {
    const key = this.get_event_key(service, object);
    if (!this.tracked_events.has(key)) this.tracked_events.set(key, obj);
  }

  untrack_events(service, object) {
    this.tracked_events.delete(this.get_event_key(service, object));
  }

  get_tracked_events(service, object) {
    const obj = this.tracked_events.get(this.get_event_key(service, object));
    return obj === undefined ? null : obj;
  }

  registerService(id, name) {
    this.services[id] = name;
  }

  /** Send ReleaseObject(service_id, id) when `obj` is garbage collected (same connection only). */
  registerObject(obj) {
    const held = { id: obj.id, service: obj.service_id, generation: this.#generation };
    this.objectRegistry.register(obj, held, obj);
  }

  /** Keep `obj` reachable while `keep` (a service object with listeners for its sockets). */
  hold(obj, keep) {
    if (keep) this.#held.add(obj);
    else this.#held.delete(obj);
  }

  /** A frame from the daemon. */
  on_message(bytes) {
    let msg;
    try {
      msg = core.decodeBaseMessage(bytes);
    } catch (e) {
      console.warn(`tcpsocket: ignoring a malformed message from the daemon: ${e.message}`);
      return;
    }
    if (msg.kind === core.KIND_RESPONSE || msg.kind === core.KIND_PERMISSION_ERROR) {
      const pending = this.requests.get(msg.requestId);
      if (pending === undefined) return;
      this.requests.delete(msg.requestId);
      if (msg.kind === core.KIND_PERMISSION_ERROR) {
        pending.reject({
          reason: "permission_error",
          value: { request: msg.requestId, permission: msg.permission, message: msg.message },
        });
        return;
      }
      let decoded;
      try {
        decoded = pending.responseType.decode(msg.content, msg.service, this);
      } catch (e) {
        pending.reject(e);
        return;
      }
      pending.resolve({ response: msg.requestId, service: msg.service, object: msg.object, msg: decoded });
    } else if (msg.kind === core.KIND_EVENT) {
      const target = this.get_tracked_events(msg.service, msg.object);
      if (target !== null && typeof target.on_event === "function") target.on_event(msg.content);
    } else {
      const target = this.get_tracked(msg.object);
      if (target !== null && typeof target.on_message === "function") target.on_message(msg);
      else console.error(`tcpsocket: no object ${msg.object} for a daemon request`);
    }
  }

  /** From the transport: "connected", or "closed"/"error" with an info object. */
  set_transport_state(state, info) {
    const s = String(state).toLowerCase();
    if (s === "connected") {
      this.connected = true;
      this.reconnecting = false;
      this.#retryDelay = RECONNECT_INITIAL_MS;
      callback(this.session_state, "onsessionconnected");
      return;
    }
    const wasConnected = this.connected;
    const refused = !!info && info.reason === "token_refused";
    const retry = this.lazy_reconnect && !this.#userClosed && !refused;
    this.clear(retry ? "daemon restarting" : "connection lost");
    if (wasConnected) callback(this.session_state, "onsessiondisconnected", info || {});
    else callback(this.session_state, "onsessionconnectionerror", info || {});
    if (retry && this.lazy_reconnect && !this.#userClosed && this.transport === null) this.wait_reopen();
  }

  /** Schedule the next reconnection attempt: 250 ms, doubling to 5 s, until one succeeds. */
  wait_reopen() {
    if (this.#retryTimer !== null) return;
    this.reconnecting = true;
    this.reconnect_interval = this.#retryDelay;
    const delay = this.#retryDelay;
    this.#retryDelay = Math.min(delay * 2, RECONNECT_MAX_MS);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.connected || this.#userClosed || this.transport) return;
      const api = typeof navigator !== "undefined" && navigator.b2g && navigator.b2g.externalapi;
      if (api && typeof api.getToken === "function") {
        Promise.resolve(api.getToken()).then(
          (token) => {
            if (this.#userClosed || this.connected || this.transport) return;
            this.token = token;
            this.#attempt();
          },
          () => this.wait_reopen()
        );
      } else {
        this.#attempt();
      }
    }, delay);
  }

  #attempt() {
    try {
      this.#start();
    } catch (e) {
      this.transport = null;
      callback(this.session_state, "onsessionconnectionerror", { reason: "connection_failed", message: String(e && e.message) });
      this.wait_reopen();
    }
  }

  #start() {
    this.transport = new WSTransport(this);
    this.transport.start(this.url, this.token);
  }

  #stop(description) {
    const transport = this.transport;
    if (this.connected || transport || this.requests.size) this.clear(description);
    this.#cancelRetry();
    if (transport) transport.close(null);
  }

  #cancelRetry() {
    if (this.#retryTimer !== null) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
    }
  }

  #finalized(held) {
    if (held.generation !== this.#generation || !this.connected) return;
    const content = Services.create_core_message(core.CoreRequest.RELEASE_OBJECT, {
      service: held.service,
      object: held.id,
    });
    this.send_request(new core.BaseMessage(0, 0, content), core.CoreResponse).catch(() => {});
  }
}
