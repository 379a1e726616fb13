/*
 * tcpsocket client library -- the TcpSocketManager service (lib_tcpsocket).
 *
 * Needs shared/core.js and shared/session.js first. Classic script: defines
 * the global `lib_tcpsocket` and nothing else. ES module (`service.mjs`,
 * generated from this same file by tcpsocket/web.py): exports
 * `lib_tcpsocket` (default export too) and re-exports `lib_session`.
 */
(function (root) {
  "use strict";

  const lib_session = root.lib_session;
  if (lib_session === null || typeof lib_session !== "object" || !lib_session.core || !lib_session.Session) {
    throw new Error("tcpsocket: load shared/core.js and shared/session.js before service.js");
  }
  const core = lib_session.core;
  const reportError = lib_session.reportError;

  const SERVICE_NAME = "TcpSocketManager";
  const FINGERPRINT = "80b7d391444db6fd2eca3b489c6c4aac8144ad3de7852f5b476abb17bf";

  const CLOSE_EVENT = 0;
  const DATA_EVENT = 1;
  const DRAIN_EVENT = 2;
  const ERROR_EVENT = 3;
  const EVENT_COUNT = 4;

  // Request tags (client -> daemon).
  const REQ_CLOSE = 0;
  const REQ_RESUME = 1;
  const REQ_SEND = 2;
  const REQ_SUSPEND = 3;
  const REQ_OPEN = 4;

  // Response / event tags (daemon -> client).
  const RES_CLOSE_OK = 0;
  const RES_RESUME_OK = 2;
  const RES_SEND_OK = 4;
  const RES_SUSPEND_OK = 6;
  const EV_CLOSE = 8;
  const EV_DATA = 9;
  const EV_DRAIN = 10;
  const EV_ERROR = 11;
  const RES_OPEN_OK = 12;

  function failure(message) {
    return { reason: "call_failure", value: { message } };
  }

  /**
   * Decoder of a method's Response: success tag `ok` (value read by
   * `readValue`), error tag `ok + 1` optionally followed by a detail string
   * (protocol C.1), which becomes the rejection's value.message.
   */
  function resultDecoder(ok, readValue, defaultMessage) {
    return (content) => {
      const r = new core.Reader(content);
      const tag = r.u32();
      if (tag === ok) return readValue === null ? undefined : readValue(r);
      if (tag === ok + 1) {
        let message = defaultMessage;
        if (r.remaining() > 0) {
          try {
            message = r.str() || defaultMessage;
          } catch (e) {
            /* unknown trailing data: keep the default */
          }
        }
        throw failure(message);
      }
      throw new core.DecodeError(`unexpected response tag ${tag}`);
    };
  }

  const decodeClose = resultDecoder(RES_CLOSE_OK, null, "close failed");
  const decodeResume = resultDecoder(RES_RESUME_OK, null, "resume failed");
  const decodeSend = resultDecoder(RES_SEND_OK, (r) => r.bool(), "send failed");
  const decodeSuspend = resultDecoder(RES_SUSPEND_OK, null, "suspend failed");
  const decodeOpen = resultDecoder(RES_OPEN_OK, (r) => r.u32(), "open failed");

  function checkEvent(event) {
    if (!Number.isInteger(event) || event < 0 || event >= EVENT_COUNT) {
      throw new RangeError(`unknown event ${String(event)}`);
    }
  }

  function isListener(listener) {
    return (
      typeof listener === "function" ||
      (listener !== null && typeof listener === "object" && typeof listener.handleEvent === "function")
    );
  }

  function invoke(listeners, listener, target, value) {
    if (!listeners.has(listener)) return; // removed during this dispatch
    try {
      if (typeof listener === "function") listener.call(target, value);
      else listener.handleEvent(value);
    } catch (e) {
      reportError(e);
    }
  }

  function newListenerSets() {
    const sets = [];
    for (let e = 0; e < EVENT_COUNT; e++) sets.push(new Set());
    return sets;
  }

  function newRef(target) {
    return typeof WeakRef === "function" ? new WeakRef(target) : { deref: () => target };
  }

  /**
   * A TCP client socket opened by TcpSocketManager.open(). Events: DATA
   * (Uint8Array), DRAIN (boolean), ERROR (string), CLOSE (undefined).
   */
  class TcpSocket {
    constructor(manager, objectId) {
      this._manager = manager;
      this._session = manager._session;
      this._generation = manager._generation;
      this.service_id = manager.service_id;
      this.object_id = objectId;
      this._listeners = newListenerSets();
      this._enabled = [false, false, false, false];
      this._closed = false; // CLOSE event seen
      this._released = false;
    }

    /** Write bytes (ArrayBuffer, ArrayBufferView or string as UTF-8) -> Promise<boolean>. */
    send(data) {
      let bytes;
      try {
        bytes = core.toUint8Array(data);
      } catch (e) {
        return Promise.reject(failure(`send: ${e.message}`));
      }
      return this._call(new core.Fields().u(REQ_SEND).bytes(bytes), decodeSend);
    }

    /** Stop reading from the remote (nests: n suspends need n resumes). */
    suspend() {
      return this._call(new core.Fields().u(REQ_SUSPEND), decodeSuspend);
    }

    /** Undo one suspend(). */
    resume() {
      return this._call(new core.Fields().u(REQ_RESUME), decodeResume);
    }

    /** Graceful close: buffered data is written, then FIN; CLOSE follows. */
    close() {
      return this._call(new core.Fields().u(REQ_CLOSE), decodeClose);
    }

    /**
     * Forget the socket on both sides (core ReleaseObject; the daemon closes
     * it) -> Promise<boolean>: whether the daemon still knew it.
     */
    release() {
      if (this._released) return Promise.resolve(false);
      this._released = true;
      this._session._unregister(this.service_id, this.object_id, this);
      this._manager._forget(this.object_id);
      return this._session.release_object(this.service_id, this.object_id, this._generation);
    }

    addEventListener(event, listener) {
      checkEvent(event);
      if (!isListener(listener)) throw new TypeError("listener must be a function");
      const set = this._listeners[event];
      if (set.has(listener)) return;
      set.add(listener);
      this._sync(event);
    }

    removeEventListener(event, listener) {
      checkEvent(event);
      if (this._listeners[event].delete(listener)) this._sync(event);
    }

    _call(content, decode) {
      if (this._released) return Promise.reject(failure("socket released"));
      return this._session._call(this._generation, this.service_id, this.object_id, content, decode);
    }

    /** Enable or disable `event` on the daemon to match the listeners. */
    _sync(event) {
      const want =
        !this._released && (this._listeners[event].size > 0 || this._manager._listeners[event].size > 0);
      if (want === this._enabled[event]) return;
      this._enabled[event] = want;
      const session = this._session;
      const request = want
        ? session.enable_event(this.service_id, this.object_id, event, this._generation)
        : session.disable_event(this.service_id, this.object_id, event, this._generation);
      request.catch(() => {
        /* session gone: nothing to undo */
      });
      this._updateHold();
    }

    /** Keep the socket reachable through the session while it has enabled events. */
    _updateHold() {
      const strong = !this._closed && !this._released && this._enabled.some((e) => e);
      this._session._hold(this.service_id, this.object_id, this, strong);
    }

    _onEvent(content) {
      let event;
      let value;
      try {
        const r = new core.Reader(content);
        const tag = r.u32();
        switch (tag) {
          case EV_DATA:
            event = DATA_EVENT;
            value = r.bytesCopy();
            break;
          case EV_DRAIN:
            event = DRAIN_EVENT;
            value = r.bool();
            break;
          case EV_ERROR:
            event = ERROR_EVENT;
            value = r.str();
            break;
          case EV_CLOSE:
            event = CLOSE_EVENT;
            value = undefined;
            break;
          default:
            throw new core.DecodeError(`unknown event tag ${tag}`);
        }
      } catch (e) {
        console.warn(`tcpsocket: ignoring a malformed event: ${e.message}`);
        return;
      }
      if (event === CLOSE_EVENT) {
        this._closed = true;
        this._updateHold();
      }
      this._dispatch(event, value);
    }

    _dispatch(event, value) {
      const own = this._listeners[event];
      if (own.size > 0) for (const listener of Array.from(own)) invoke(own, listener, this, value);
      const shared = this._manager._listeners[event];
      if (shared.size > 0) for (const listener of Array.from(shared)) invoke(shared, listener, this, value);
    }
  }

  /**
   * A TcpSocketManager service instance (TcpSocketFactory). Listeners added
   * here receive the events of every socket it opened, with `this` set to
   * the socket.
   */
  class TcpSocketManager {
    constructor(session, serviceId, generation) {
      this._session = session;
      this._generation = generation;
      this.service_id = serviceId;
      this._listeners = newListenerSets();
      this._sockets = new Map(); // object id -> WeakRef(TcpSocket)
    }

    /**
     * GetService("TcpSocketManager") on `session` -> Promise<TcpSocketManager>.
     * Rejects with {reason: "UnknownService" | "FingerprintMismatch" |
     * "MissingPermission" | "InternalError" | "session_closed", ...}.
     */
    static get(session) {
      const generation = session.generation;
      return session
        .get_service(SERVICE_NAME, FINGERPRINT)
        .then((serviceId) => new TcpSocketManager(session, serviceId, generation));
    }

    /** open({host, port}) -> Promise<TcpSocket>, resolved once connected. */
    open(addr) {
      let content;
      try {
        if (addr === null || typeof addr !== "object") throw new TypeError("open() needs {host, port}");
        if (typeof addr.host !== "string") throw new TypeError("host must be a string");
        let port = addr.port;
        if (typeof port === "string" && /^\s*-?\d+\s*$/.test(port)) port = Number(port);
        if (typeof port !== "bigint" && !Number.isSafeInteger(port)) throw new TypeError("port must be an integer");
        content = new core.Fields().u(REQ_OPEN).str(addr.host).i(port);
      } catch (e) {
        return Promise.reject(failure(`open: ${e.message}`));
      }
      return this._session._call(this._generation, this.service_id, 0, content, decodeOpen).then((objectId) => {
        const socket = new TcpSocket(this, objectId);
        this._sockets.set(objectId, newRef(socket));
        this._session._register(this.service_id, objectId, socket, this._generation);
        for (let e = 0; e < EVENT_COUNT; e++) {
          if (this._listeners[e].size > 0) socket._sync(e);
        }
        return socket;
      });
    }

    addEventListener(event, listener) {
      checkEvent(event);
      if (!isListener(listener)) throw new TypeError("listener must be a function");
      const set = this._listeners[event];
      if (set.has(listener)) return;
      set.add(listener);
      if (set.size === 1) this._syncSockets(event);
    }

    removeEventListener(event, listener) {
      checkEvent(event);
      const set = this._listeners[event];
      if (set.delete(listener) && set.size === 0) this._syncSockets(event);
    }

    _syncSockets(event) {
      for (const [id, ref] of Array.from(this._sockets)) {
        const socket = ref.deref();
        if (socket === undefined) this._sockets.delete(id);
        else socket._sync(event);
      }
    }

    _forget(objectId) {
      this._sockets.delete(objectId);
    }
  }

  const constants = {
    CLOSE_EVENT: { value: CLOSE_EVENT, enumerable: true },
    DATA_EVENT: { value: DATA_EVENT, enumerable: true },
    DRAIN_EVENT: { value: DRAIN_EVENT, enumerable: true },
    ERROR_EVENT: { value: ERROR_EVENT, enumerable: true },
  };
  Object.defineProperties(TcpSocket.prototype, constants);
  Object.defineProperties(TcpSocketManager.prototype, constants);
  Object.defineProperties(TcpSocket, constants);
  Object.defineProperties(TcpSocketManager, constants);
  Object.defineProperties(TcpSocketManager, {
    SERVICE_NAME: { value: SERVICE_NAME, enumerable: true },
    FINGERPRINT: { value: FINGERPRINT, enumerable: true },
  });

  root.lib_tcpsocket = Object.freeze({
    TcpSocketManager,
    TcpSocket,
    SERVICE_NAME,
    FINGERPRINT,
    CLOSE_EVENT,
    DATA_EVENT,
    DRAIN_EVENT,
    ERROR_EVENT,
  });
})(this);
