/*
 * tcpsocket client library -- session (lib_session.Session).
 *
 * A Session is one WebSocket to the daemon (`ws[s]://host[:port]/ws`), the
 * token handshake, request/response matching, event routing and optional
 * lazy reconnection. Needs shared/core.js first.
 *
 * Classic script: adds Session (and helpers) to the global `lib_session`.
 * ES module (`session.mjs`, generated from this same file by
 * tcpsocket/web.py): exports `lib_session`.
 */
(function (root) {
  "use strict";

  const lib_session = root.lib_session;
  if (lib_session === null || typeof lib_session !== "object" || !lib_session.core) {
    throw new Error("tcpsocket: load shared/core.js before shared/session.js");
  }
  const core = lib_session.core;

  const DEFAULT_PORT = 8081;
  const RECONNECT_INITIAL_MS = 250;
  const RECONNECT_MAX_MS = 5000;
  /** Rejection value of calls that cannot reach the daemon (a fresh object each time). */
  function sessionClosed() {
    return { reason: "session_closed" };
  }

  // URL of this script, captured while it runs (the port rule needs it):
  // the module wrapper passes import.meta.url; a classic script has
  // document.currentScript.
  const scriptUrl = (function () {
    if (typeof root.__tcpsocket_import_meta_url === "string") return root.__tcpsocket_import_meta_url;
    try {
      if (typeof document !== "undefined" && document.currentScript && document.currentScript.src) {
        return String(document.currentScript.src);
      }
    } catch (e) {
      /* no DOM */
    }
    return "";
  })();

  function parseUrl(text) {
    try {
      return new URL(text);
    } catch (e) {
      return null;
    }
  }

  /** Port of the daemon that served this script, or DEFAULT_PORT. */
  function daemonPort() {
    const url = parseUrl(scriptUrl);
    if (url === null || (url.protocol !== "http:" && url.protocol !== "https:")) return DEFAULT_PORT;
    if (url.port) return Number(url.port);
    return url.protocol === "https:" ? 443 : 80;
  }

  function secureContext() {
    if (typeof location !== "undefined" && location && location.protocol === "https:") return true;
    const url = parseUrl(scriptUrl);
    return url !== null && url.protocol === "https:";
  }

  /**
   * WebSocket URL for `host`: "name", "name:port", "1.2.3.4", "[::1]",
   * "[::1]:port" or a bare IPv6 literal. Without a port, the port of the
   * daemon that served session.js is used (8081 if unknown). The scheme is
   * wss when the page (or the script) was loaded over https.
   */
  function websocketUrl(host) {
    if (typeof host !== "string" || host.trim() === "") throw new TypeError("host must be a non-empty string");
    let name = host.trim();
    let port = null;
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(name);
    if (bracketed) {
      name = `[${bracketed[1]}]`;
      port = bracketed[2] === undefined ? null : Number(bracketed[2]);
    } else if ((name.match(/:/g) || []).length > 1) {
      name = `[${name}]`; // bare IPv6 literal
    } else {
      const m = /^([^:/?#@\s]+)(?::(\d+))?$/.exec(name);
      if (!m) throw new TypeError(`invalid host: ${host}`);
      name = m[1];
      port = m[2] === undefined ? null : Number(m[2]);
    }
    if (port === null) port = daemonPort();
    if (!(port >= 1 && port <= 65535)) throw new RangeError(`invalid port in host: ${host}`);
    return `${secureContext() ? "wss" : "ws"}://${name}:${port}/ws`;
  }

  function callback(state, name, arg) {
    const fn = state && state[name];
    if (typeof fn !== "function") return;
    try {
      fn.call(state, arg);
    } catch (e) {
      reportError(e);
    }
  }

  /** Report an exception thrown by user code without breaking our own flow. */
  function reportError(error) {
    if (typeof root.reportError === "function") {
      root.reportError(error);
    } else if (typeof globalThis.reportError === "function") {
      globalThis.reportError(error);
    } else {
      setTimeout(() => {
        throw error;
      }, 0);
    }
  }

  function newRef(target) {
    return typeof WeakRef === "function" ? new WeakRef(target) : { deref: () => target };
  }

  // Releases objects (sockets) that became unreachable while their session
  // connection is still the one they were created on.
  const finalizer =
    typeof FinalizationRegistry === "function"
      ? new FinalizationRegistry((held) => held.session._finalized(held))
      : null;

  /**
   * One session with the daemon. States: "idle" (never opened or waiting
   * to reconnect), "connecting", "handshake", "open", "closed" (close()
   * called, or a refused token).
   */
  class Session {
    constructor() {
      this._ws = null;
      this._state = "idle";
      this._url = "";
      this._token = "";
      this._callbacks = null;
      this._lazy = false;
      this._userClosed = false;
      this._nextId = 3; // odd ids from 3, one counter for the Session's lifetime
      this._pending = new Map();
      this._objects = new Map(); // "service:object" -> {ref, strong}
      this._generation = 0; // bumped when a connection opens or ends
      this._retryDelay = RECONNECT_INITIAL_MS;
      this._retryTimer = null;
    }

    /** True while the handshake succeeded and the WebSocket is open. */
    get connected() {
      return this._state === "open";
    }

    /** Current connection generation; objects of an older one are dead. */
    get generation() {
      return this._generation;
    }

    /**
     * Open a session: `kind` must be "websocket"; `host` as websocketUrl().
     * `sessionstate` holds the callbacks onsessionconnected,
     * onsessiondisconnected and onsessionconnectionerror. With
     * `lazyReconnect`, a lost or failed connection is retried with backoff
     * (250 ms doubling to 5 s).
     */
    open(kind, host, token, sessionstate, lazyReconnect) {
      if (kind !== "websocket") throw new TypeError(`unsupported session kind: ${kind}`);
      this.open_url(websocketUrl(host), token, sessionstate, lazyReconnect);
    }

    /** Open a session on an explicit ws:// or wss:// URL. */
    open_url(url, token, sessionstate, lazyReconnect) {
      if (typeof url !== "string") throw new TypeError("url must be a string");
      if (typeof token !== "string") throw new TypeError("token must be a string");
      this._shutdown(false);
      this._url = url;
      this._token = token;
      this._callbacks = sessionstate || {};
      this._lazy = !!lazyReconnect;
      this._userClosed = false;
      this._retryDelay = RECONNECT_INITIAL_MS;
      this._connect();
    }

    /** Close the session for good: no reconnection, pending calls rejected. */
    close() {
      this._userClosed = true;
      this._shutdown(true);
      this._state = "closed";
    }

    /** HasService(name) -> Promise<boolean>. */
    has_service(name) {
      return this._call(this._generation, 0, 0, core.CoreRequest.hasService(name), boolResult(core.CORE_HAS_SERVICE));
    }

    /**
     * GetService(name, fingerprint) -> Promise<number> (the service id).
     * Rejects with {reason: "UnknownService" | "FingerprintMismatch" |
     * "MissingPermission" | "InternalError", name[, message]} or
     * {reason: "session_closed"}.
     */
    get_service(name, fingerprint) {
      return this._call(this._generation, 0, 0, core.CoreRequest.getService(name, fingerprint), (content) => {
        const res = core.decodeCoreResponse(content);
        if (res.tag !== core.CORE_GET_SERVICE) throw new core.DecodeError(`unexpected core response ${res.tag}`);
        if (res.result === "Success") return res.serviceId;
        const error = { reason: res.result, name };
        if (res.message !== null) error.message = res.message;
        throw error;
      });
    }

    /** EnableEvent -> Promise<boolean>; `generation` defaults to the current one. */
    enable_event(service, object, event, generation) {
      return this._call(
        generation === undefined ? this._generation : generation,
        0,
        0,
        core.CoreRequest.enableEvent(service, object, event),
        boolResult(core.CORE_ENABLE_EVENT)
      );
    }

    /** DisableEvent -> Promise<boolean>. */
    disable_event(service, object, event, generation) {
      return this._call(
        generation === undefined ? this._generation : generation,
        0,
        0,
        core.CoreRequest.disableEvent(service, object, event),
        boolResult(core.CORE_DISABLE_EVENT)
      );
    }

    /** ReleaseObject -> Promise<boolean>. */
    release_object(service, object, generation) {
      return this._call(
        generation === undefined ? this._generation : generation,
        0,
        0,
        core.CoreRequest.releaseObject(service, object),
        boolResult(core.CORE_RELEASE_OBJECT)
      );
    }

    /**
     * Send a Request and resolve with decode(content) of its Response.
     * `decode` may throw a rejection value. Rejects with
     * {reason: "session_closed"} unless `generation` is the open connection.
     */
    _call(generation, service, object, content, decode) {
      if (this._state !== "open" || generation !== this._generation) return Promise.reject(sessionClosed());
      const id = this._nextId;
      this._nextId += 2;
      let frame;
      try {
        frame = core.encodeRequest(service, object, id, content);
      } catch (e) {
        return Promise.reject(e);
      }
      return new Promise((resolve, reject) => {
        this._pending.set(id, { resolve, reject, decode });
        try {
          this._ws.send(frame);
        } catch (e) {
          this._pending.delete(id);
          reject(sessionClosed());
        }
      });
    }

    /** Route events of (service, object) to `target._onEvent(content)`. */
    _register(service, object, target, generation) {
      if (generation !== this._generation) return;
      this._objects.set(`${service}:${object}`, { ref: newRef(target), strong: null });
      if (finalizer !== null) finalizer.register(target, { session: this, generation, service, object }, target);
    }

    /** Keep `target` strongly reachable (it has listeners) or not. */
    _hold(service, object, target, strong) {
      const entry = this._objects.get(`${service}:${object}`);
      if (entry !== undefined) entry.strong = strong ? target : null;
    }

    _unregister(service, object, target) {
      this._objects.delete(`${service}:${object}`);
      if (finalizer !== null && target) finalizer.unregister(target);
    }

    _finalized(held) {
      const key = `${held.service}:${held.object}`;
      const entry = this._objects.get(key);
      if (entry !== undefined && entry.ref.deref() === undefined) this._objects.delete(key);
      if (held.generation === this._generation && this._state === "open") {
        this.release_object(held.service, held.object, held.generation).catch(() => {});
      }
    }

    _connect() {
      const Ctor = globalThis.WebSocket;
      let ws;
      try {
        if (typeof Ctor !== "function") throw new Error("WebSocket is not available");
        ws = new Ctor(this._url);
      } catch (e) {
        this._state = "idle";
        setTimeout(() => {
          if (this._ws !== null || this._userClosed) return;
          this._attemptFailed({ reason: "connection_failed", message: String(e && e.message ? e.message : e) });
        }, 0);
        return;
      }
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      this._state = "connecting";
      ws.onopen = () => {
        if (this._ws !== ws) return;
        this._state = "handshake";
        ws.send(core.encodeHandshake(this._token));
      };
      ws.onmessage = (ev) => {
        if (this._ws === ws) this._onMessage(ws, ev.data);
      };
      ws.onerror = () => {
        /* a close event follows */
      };
      ws.onclose = (ev) => {
        if (this._ws === ws) this._onClose(ev);
      };
    }

    _onMessage(ws, data) {
      if (typeof data === "string") {
        console.warn("tcpsocket: ignoring a text message from the daemon");
        return;
      }
      const bytes = core.toUint8Array(data);
      if (this._state === "handshake") {
        let ok = false;
        try {
          ok = core.decodeHandshakeAck(bytes);
        } catch (e) {
          ok = false;
        }
        if (ok) {
          this._state = "open";
          this._generation++;
          this._retryDelay = RECONNECT_INITIAL_MS;
          callback(this._callbacks, "onsessionconnected");
        } else {
          // A refused token is not retried: it would be refused again.
          this._detach();
          this._state = "closed";
          try {
            ws.close();
          } catch (e) {
            /* already closing */
          }
          callback(this._callbacks, "onsessionconnectionerror", { reason: "token_refused" });
        }
        return;
      }
      if (this._state !== "open") return;
      let msg;
      try {
        msg = core.decodeBaseMessage(bytes);
      } catch (e) {
        console.warn(`tcpsocket: ignoring a malformed message from the daemon: ${e.message}`);
        return;
      }
      if (msg.kind === core.KIND_RESPONSE || msg.kind === core.KIND_PERMISSION_ERROR) {
        const pending = this._pending.get(msg.requestId);
        if (pending === undefined) return;
        this._pending.delete(msg.requestId);
        if (msg.kind === core.KIND_PERMISSION_ERROR) {
          pending.reject({ reason: "permission_error", value: { permission: msg.permission, message: msg.message } });
          return;
        }
        let value;
        try {
          value = pending.decode(msg.content);
        } catch (e) {
          pending.reject(e instanceof core.DecodeError ? { reason: "protocol_error", message: e.message } : e);
          return;
        }
        pending.resolve(value);
      } else if (msg.kind === core.KIND_EVENT) {
        const entry = this._objects.get(`${msg.service}:${msg.object}`);
        const target = entry === undefined ? undefined : entry.strong || entry.ref.deref();
        if (target !== undefined) target._onEvent(msg.content);
      }
      // Requests from the daemon (callbacks) are not used by our services.
    }

    _onClose(ev) {
      const wasOpen = this._state === "open";
      this._detach();
      this._state = "idle";
      if (wasOpen) {
        callback(this._callbacks, "onsessiondisconnected", { code: ev.code, reason: ev.reason });
        if (this._lazy && !this._userClosed) this._scheduleReconnect();
      } else {
        this._attemptFailed({ reason: "connection_failed", code: ev.code, message: ev.reason || "" });
      }
    }

    _attemptFailed(info) {
      callback(this._callbacks, "onsessionconnectionerror", info);
      if (this._lazy && !this._userClosed && this._state !== "closed") this._scheduleReconnect();
    }

    _scheduleReconnect() {
      if (this._retryTimer !== null) return;
      const delay = this._retryDelay;
      this._retryDelay = Math.min(delay * 2, RECONNECT_MAX_MS);
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        if (!this._userClosed && this._ws === null) this._connect();
      }, delay);
    }

    /** Forget the current WebSocket: new generation, pending calls rejected. */
    _detach() {
      const ws = this._ws;
      this._ws = null;
      if (ws !== null) {
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      }
      this._generation++;
      this._objects.clear();
      const pending = Array.from(this._pending.values());
      this._pending.clear();
      for (const p of pending) p.reject(sessionClosed());
      return ws;
    }

    _shutdown(notify) {
      if (this._retryTimer !== null) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
      }
      const wasOpen = this._state === "open";
      const ws = this._detach();
      this._state = "idle";
      if (ws !== null) {
        try {
          ws.close(1000, "session closed");
        } catch (e) {
          /* already closed */
        }
      }
      if (notify && wasOpen) callback(this._callbacks, "onsessiondisconnected", { code: 1000, reason: "session closed" });
    }
  }

  function boolResult(tag) {
    return (content) => {
      const res = core.decodeCoreResponse(content);
      if (res.tag !== tag) throw new core.DecodeError(`unexpected core response ${res.tag}`);
      return res.success;
    };
  }

  lib_session.Session = Session;
  lib_session.websocketUrl = websocketUrl;
  lib_session.scriptUrl = scriptUrl;
  lib_session.reportError = reportError;
  lib_session.DEFAULT_PORT = DEFAULT_PORT;
  root.lib_session = lib_session;
})(this);
