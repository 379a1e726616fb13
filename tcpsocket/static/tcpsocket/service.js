/*
 * tcpsocket client library -- the TcpSocketManager service.
 *
 * ES module; named export `TcpSocketManager` = {get(session)} (the classic
 * script at the same URL defines the global `lib_tcpsocket`). Built on the
 * shared runtime like api-daemon's generated service, plus our additions:
 * string and ArrayBuffer sends, the daemon's reason beside every failure's
 * `value`, and listeners on the manager for the events of all its sockets.
 */
// api-daemon's generated service imports these three modules (Encoder, Decoder and
// wrapBlob unused here, kept so the module graph is the same).
import Services from '../shared/services.js';
import SessionObject, { callListeners } from '../shared/sessionobject.js';
import { Encoder, Decoder, wrapBlob, Fields, Reader, toUint8Array } from '../shared/bincode.js';

export const SERVICE_NAME = "TcpSocketManager";
export const FINGERPRINT = "80b7d391444db6fd2eca3b489c6c4aac8144ad3de7852f5b476abb17bf";
/* SecureTcpSocketManager (protocol section E): used by open() when the options need TLS. */
export const SECURE_SERVICE_NAME = "SecureTcpSocketManager";
export const SECURE_FINGERPRINT = "4b7d3af4849d73f6205c77a14ac06f95143dea56f81beca2116ed43877bd6c";
/* The open() options that only the secure service understands. */
const SECURE_OPTIONS = ["useSecureTransport", "serverName", "alpnProtocols", "noDelay", "keepAlive"];

export const CLOSE_EVENT = 0;
export const DATA_EVENT = 1;
export const DRAIN_EVENT = 2;
export const ERROR_EVENT = 3;
const EVENT_COUNT = 4;

/* Request tags (client -> daemon). */
const REQ_CLOSE = 0;
const REQ_RESUME = 1;
const REQ_SEND = 2;
const REQ_SUSPEND = 3;
const REQ_OPEN = 4;
const REQ_UPGRADE = 5;

/* Response and event tags (daemon -> client). */
const RES_CLOSE = 0;
const RES_RESUME = 2;
const RES_SEND = 4;
const RES_SUSPEND = 6;
const EV_CLOSE = 8;
const EV_DATA = 9;
const EV_DRAIN = 10;
const EV_ERROR = 11;
const RES_OPEN = 12;
const RES_UPGRADE = 14;

/** The daemon's optional reason after an error variant (protocol C.1), or a default. */
function reasonAfter(r, fallback) {
  if (r.remaining() > 0) {
    try {
      return r.str() || fallback;
    } catch (e) {
      /* an unknown extension: keep the default */
    }
  }
  return fallback;
}

/**
 * Decoder of a method's response: the success tag `ok` gives {success: readValue(r)},
 * `ok + 1` gives {error: {}, message}; any other tag null.
 */
function response(ok, readValue, what) {
  return {
    decode(content, service, session) {
      const r = new Reader(toUint8Array(content));
      const tag = r.u32();
      if (tag === ok) return { success: readValue(r, service, session) };
      if (tag === ok + 1) return { error: {}, message: reasonAfter(r, `${what} failed`) };
      return null;
    },
  };
}

const empty = () => ({});
const plain = (tag) => ({ encode: () => new Fields().u(tag) });

/** Events of a socket: [event id, value]; DATA owns its bytes (a copy out of the frame). */
const SOCKET_EVENT = {
  decode(content) {
    const r = new Reader(toUint8Array(content));
    switch (r.u32()) {
      case EV_CLOSE:
        return [CLOSE_EVENT, {}];
      case EV_DATA:
        return [DATA_EVENT, r.bytesCopy()];
      case EV_DRAIN:
        return [DRAIN_EVENT, r.bool()];
      case EV_ERROR:
        return [ERROR_EVENT, r.str()];
      default:
        return null;
    }
  },
};

const SOCKET_CODEC = {
  CloseRequest: plain(REQ_CLOSE),
  CloseResponse: response(RES_CLOSE, empty, "close"),
  ResumeRequest: plain(REQ_RESUME),
  ResumeResponse: response(RES_RESUME, empty, "resume"),
  SendRequest: { encode: (p) => new Fields().u(REQ_SEND).bytes(p.data) },
  SendResponse: response(RES_SEND, (r) => r.bool(), "send"),
  SuspendRequest: plain(REQ_SUSPEND),
  SuspendResponse: response(RES_SUSPEND, empty, "suspend"),
  UpgradeToSecureRequest: {
    encode: (p) => alpnFields(new Fields().u(REQ_UPGRADE).str(p.serverName || ""), p.alpnProtocols),
  },
  UpgradeToSecureResponse: response(RES_UPGRADE, readTlsInfo, "upgradeToSecure"),
  Event: SOCKET_EVENT,
};

/** TlsInfo {secure, version, alpn, peerSubject} (all empty on a plain socket). */
function readTlsInfo(r) {
  return { secure: r.bool(), version: r.str(), alpn: r.str(), peerSubject: r.str() };
}

function alpnFields(fields, alpn) {
  const names = alpn === undefined || alpn === null ? [] : Array.from(alpn);
  fields.u(names.length);
  for (const name of names) {
    if (typeof name !== "string") throw new Error(`Expected string, but got ${typeof name}`);
    fields.str(name);
  }
  return fields;
}

/** The port as api-daemon's runtime coerces it: numbers truncate, "7878" is 7878, the rest 0. */
function coercePort(port) {
  if (typeof port === "bigint") return port;
  const n = Math.trunc(Number(port));
  return Number.isSafeInteger(n) ? n : 0;
}

/** Bytes to send: any typed array or DataView (its bytes), an ArrayBuffer, or a string (UTF-8). */
function sendBytes(data) {
  if (typeof data === "string" || ArrayBuffer.isView(data)) return toUint8Array(data);
  if (data !== null && typeof data === "object" && data.byteLength !== undefined) {
    try {
      return toUint8Array(data);
    } catch (e) {
      /* fall through */
    }
  }
  throw new Error(`Expected uintarray, but got ${typeof data}`);
}

/**
 * A TCP socket (api-daemon's TcpSocketSession): close, resume, suspend resolve {},
 * send resolves a boolean; events CLOSE {}, DATA Uint8Array, DRAIN boolean, ERROR string.
 */
class TcpSocket extends SessionObject {
  constructor(id, session, service_id, manager) {
    super(id, session, service_id, SOCKET_CODEC);
    Object.defineProperty(this, "_manager", { value: manager ? new WeakRef(manager) : null });
    session.track_events(service_id, id, this);
  }

  /** The object id (`id`), under the name our earlier library used. */
  get object_id() {
    return this.id;
  }

  /** Write bytes -> Promise<boolean>: false asks the sender to wait for DRAIN. */
  send(data) {
    return this.call_method("Send", { data: sendBytes(data) });
  }

  /** Stop reading from the remote (nests: n suspends need n resumes). */
  suspend() {
    return this.call_method("Suspend", {});
  }

  /** Undo one suspend(). */
  resume() {
    return this.call_method("Resume", {});
  }

  /**
   * STARTTLS -> Promise<{secure, version, alpn, peerSubject}>: what was sent before goes in
   * the clear, what follows encrypted. Only for sockets opened with TLS options (at least
   * `useSecureTransport: false`), which use the SecureTcpSocketManager service.
   */
  upgradeToSecure(options) {
    if (!this.secureService) {
      return Promise.reject({ method_name: "UpgradeToSecure", reason: "call_failure", value: {},
        message: "open the socket with {useSecureTransport: false} to upgrade it later" });
    }
    const opts = options || {};
    return this.call_method("UpgradeToSecure", { serverName: opts.serverName, alpnProtocols: opts.alpnProtocols })
      .then((tls) => {
        this.tls = tls;
        return tls;
      });
  }

  /** Graceful close: buffered data is written, then FIN; CLOSE follows. */
  close() {
    return this.call_method("Close", {});
  }

  /** ReleaseObject: the daemon closes and forgets the socket; no events follow. */
  release() {
    this._forget();
    return super.release();
  }

  _manager_listeners(event_id) {
    const manager = this._manager === null ? undefined : this._manager.deref();
    return manager === undefined ? null : manager._listeners[event_id];
  }

  _wants_event(event_id) {
    const shared = this._manager_listeners(event_id);
    return super._wants_event(event_id) || (shared !== null && shared !== undefined && shared.length > 0);
  }

  dispatchEvent(event_id, value) {
    super.dispatchEvent(event_id, value);
    const shared = this._manager_listeners(event_id);
    if (shared) callListeners(shared, this, value);
  }

  on_event(content) {
    const decoded = SOCKET_EVENT.decode(content);
    if (decoded === null) return;
    // After CLOSE the daemon has forgotten the socket: stop routing, nothing to release.
    if (decoded[0] === CLOSE_EVENT) this._forget();
    this.dispatchEvent(decoded[0], decoded[1]);
  }

  _forget() {
    this.session.untrack_events(this.service_id, this.id);
    this.session.objectRegistry.unregister(this);
  }
}

/** Codec of a SecureTcpSocketManager instance: Open resolves with a TcpSocket that knows its
 * addresses and TLS. */
function secureFactoryCodec(manager) {
  return {
    OpenRequest: {
      encode: (addr) => {
        const host = addr.host;
        if (typeof host !== "string") throw new Error(`Expected string, but got ${typeof host}`);
        const fields = new Fields().u(REQ_OPEN).str(host).i(coercePort(addr.port))
          .bool(addr.useSecureTransport === true).str(addr.serverName || "");
        return alpnFields(fields, addr.alpnProtocols).bool(addr.noDelay !== false).bool(addr.keepAlive === true);
      },
    },
    OpenResponse: response(RES_OPEN, (r, service, session) => {
      const socket = new TcpSocket(r.u32(), session, service, manager);
      socket.secureService = true;
      socket.remoteAddress = r.str();
      socket.remotePort = Number(r.i64());
      socket.localAddress = r.str();
      socket.localPort = Number(r.i64());
      socket.tls = readTlsInfo(r);
      return manager._adopt(socket);
    }, "open"),
  };
}

/** Codec of a service instance: Open resolves with a new TcpSocket of `manager`. */
function factoryCodec(manager) {
  return {
    OpenRequest: {
      encode: (addr) => {
        const host = addr.host;
        if (typeof host !== "string") throw new Error(`Expected string, but got ${typeof host}`);
        return new Fields().u(REQ_OPEN).str(host).i(coercePort(addr.port));
      },
    },
    // The socket's service id is the one in the response's header.
    OpenResponse: response(RES_OPEN, (r, service, session) => manager._adopt(new TcpSocket(r.u32(), session, service, manager)), "open"),
  };
}

function checkListener(event_id, fn) {
  if (typeof event_id !== "number") throw new Error(`Expected number, but got ${typeof event_id}`);
  if (typeof fn !== "function" && !(fn !== null && typeof fn === "object" && typeof fn.handleEvent === "function")) {
    throw new TypeError("a listener is a function or has handleEvent");
  }
}

/**
 * An instance of the service (api-daemon's TcpSocketFactorySession, object 0).
 * Listeners added here get the events of every socket it opened, `this` = the socket.
 */
class TcpSocketFactory extends SessionObject {
  constructor(session, service_id) {
    super(0, session, service_id, null);
    this.wrapper_payload_message = factoryCodec(this);
    const listeners = [];
    for (let e = 0; e < EVENT_COUNT; e++) listeners.push([]);
    Object.defineProperty(this, "_listeners", { value: listeners });
    Object.defineProperty(this, "_sockets", { value: new Map() });
  }

  /**
   * open({host, port}) -> Promise<TcpSocket>, once the TCP connection is established.
   * Rejects with {method_name: "Open", reason: "call_failure", value: {}, message}.
   */
  open(addr) {
    if (addr === undefined || addr === null) throw new TypeError("open() needs a {host, port} address");
    if (SECURE_OPTIONS.some((name) => addr[name] !== undefined)) {
      return this._secure().then((secure) => secure.call_method("Open", addr));
    }
    return this.call_method("Open", addr);
  }

  /** The session's SecureTcpSocketManager instance for this manager, got once. */
  _secure() {
    if (this._secure_factory === undefined) {
      const session = this.session;
      this._secure_factory = Services.get(SECURE_SERVICE_NAME, SECURE_FINGERPRINT, session).then((id) => {
        session.registerService(id, SECURE_SERVICE_NAME);
        const secure = new SessionObject(0, session, id, null);
        secure.wrapper_payload_message = secureFactoryCodec(this);
        return secure;
      }, (error) => {
        this._secure_factory = undefined;
        throw error;
      });
    }
    return this._secure_factory;
  }

  _adopt(socket) {
    this._sockets.set(socket.id, new WeakRef(socket));
    for (let e = 0; e < EVENT_COUNT; e++) if (this._listeners[e].length > 0) socket._sync_event(e);
    return socket;
  }

  /** A listener for `event_id` of every socket of this manager (also those opened later). */
  addEventListener(event_id, fn) {
    checkListener(event_id, fn);
    const list = this._listeners[event_id];
    if (list === undefined) return;
    if (list.includes(fn)) return;
    list.push(fn);
    if (list.length === 1) this._sync_sockets(event_id);
  }

  removeEventListener(event_id, fn) {
    const list = this._listeners[event_id];
    const index = list === undefined ? -1 : list.indexOf(fn);
    if (index < 0) return;
    list.splice(index, 1);
    if (list.length === 0) this._sync_sockets(event_id);
  }

  _sync_sockets(event_id) {
    // While it has listeners, the session keeps the manager (and so them) alive.
    this.session.hold(this, this._listeners.some((list) => list.length > 0));
    for (const [id, ref] of Array.from(this._sockets)) {
      const socket = ref.deref();
      if (socket === undefined) this._sockets.delete(id);
      else socket._sync_event(event_id);
    }
  }
}

const constants = {
  CLOSE_EVENT: { value: CLOSE_EVENT, enumerable: false },
  DATA_EVENT: { value: DATA_EVENT, enumerable: false },
  DRAIN_EVENT: { value: DRAIN_EVENT, enumerable: false },
  ERROR_EVENT: { value: ERROR_EVENT, enumerable: false },
};
Object.defineProperties(TcpSocket.prototype, constants);
Object.defineProperties(TcpSocketFactory.prototype, constants);

/** The service entry point: TcpSocketManager.get(session) -> Promise of a service instance. */
export const TcpSocketManager = Object.defineProperties(
  {
    get(session) {
      return Services.get(SERVICE_NAME, FINGERPRINT, session).then((id) => {
        session.registerService(id, SERVICE_NAME);
        return new TcpSocketFactory(session, id);
      });
    },
  },
  {
    ...constants,
    SERVICE_NAME: { value: SERVICE_NAME, enumerable: false },
    FINGERPRINT: { value: FINGERPRINT, enumerable: false },
  }
);

export { TcpSocket, TcpSocketFactory };
