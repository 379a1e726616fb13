/*
 * tcpsocket client library -- SessionObject, the base of every object a service
 * returns (a service instance is object 0 of its service).
 *
 * ES module; default export `SessionObject`, with api-daemon's method calls,
 * listeners and release. Differences (doc/javascript.md, "Compatibility"):
 * listeners may also be objects with handleEvent, a throwing listener is
 * reported and the others still run, and Enable/DisableEvent failures are
 * not left as unhandled rejections.
 */
import Services from "./services.js";
import { core } from "./core.js";

/** Report an exception thrown by app code without breaking the library's own flow. */
export function reportError(error) {
  if (typeof globalThis.reportError === "function") {
    globalThis.reportError(error);
  } else {
    setTimeout(() => {
      throw error;
    }, 0);
  }
}

function ignore() {}

function isListener(listener) {
  return (
    typeof listener === "function" ||
    (listener !== null && typeof listener === "object" && typeof listener.handleEvent === "function")
  );
}

/** Call the listeners of `list` (a snapshot) with `value`, `this` = `target`. */
export function callListeners(list, target, value) {
  for (const listener of list.slice()) {
    try {
      if (typeof listener === "function") listener.call(target, value);
      else listener.handleEvent(value);
    } catch (e) {
      reportError(e);
    }
  }
}

export default class SessionObject {
  /**
   * `wrapper_payload_message` maps "<Method>Request" to {encode(payload)} and
   * "<Method>Response" to {decode(content, service, session)} (which gives
   * {success} or {error[, message]}), and optionally "Event" to
   * {decode(content)} giving [event_id, value].
   */
  constructor(id, session, service_id, wrapper_payload_message) {
    this.id = id;
    this.session = session;
    this.service_id = service_id;
    this.wrapper_payload_message = wrapper_payload_message;
    this.event_callbacks = Object.create(null);
    Object.defineProperty(this, "_enabled", { value: new Set(), writable: true });
    Object.defineProperty(this, "_generation", { value: session ? session.generation : undefined });
    if (session && typeof session.registerObject === "function") session.registerObject(this);
  }

  /**
   * Call a method: resolves with its success value; rejects with
   * {method_name, reason: "call_failure", value, message} on its error variant
   * (`message`: the daemon's reason, if it gave one), with
   * {method_name, reason: "permission_error", value: {permission, message}}, or
   * passes {reason: "session_closed", value} through.
   */
  call_method(name, payload) {
    const content = this.create_payload_message(`${name}Request`, payload);
    const response = this.wrapper_payload_message[`${name}Response`];
    return this.send_request(new core.BaseMessage(this.service_id, this.id, content), response).then(
      (answer) => {
        const msg = answer.msg;
        if (msg === null || msg === undefined) throw new TypeError(`unexpected answer to ${name}`);
        if (msg.success !== undefined) return msg.success;
        const error = { method_name: name, reason: "call_failure", value: msg.error === undefined ? {} : msg.error };
        if (msg.message !== undefined) error.message = msg.message;
        throw error;
      },
      (error) => {
        if (error && error.reason === "permission_error" && error.value && typeof error.value === "object") {
          const value = { ...error.value };
          delete value.request;
          console.error(`Permission error in ${name}: missing '${value.permission}' - ${value.message}`);
          throw { method_name: name, reason: "permission_error", value };
        }
        throw error;
      }
    );
  }

  /** A call without an answer (attribute setters). */
  call_method_oneway(name, payload) {
    const content = this.create_payload_message(`${name}Request`, payload);
    this.send_request_oneway(new core.BaseMessage(this.service_id, this.id, content));
  }

  /** Through the session, unless this object belongs to an earlier connection of it. */
  send_request(msg, responseType) {
    if (this.session.connected && this._generation !== this.session.generation) {
      return Promise.reject({ reason: "session_closed", value: "an object of an earlier connection" });
    }
    return this.session.send_request(msg, responseType);
  }

  send_request_oneway(msg) {
    return this.session.send_request_oneway(msg);
  }

  send_callback_message(msg) {
    return this.session.send_callback_message(msg);
  }

  create_payload_message(variantName, init) {
    return this.wrapper_payload_message[variantName].encode(init || {});
  }

  /** EnableEvent for this object, fire and forget. */
  enable_event(event_id) {
    this._core_event(core.CoreRequest.ENABLE_EVENT, event_id);
  }

  /** DisableEvent for this object, fire and forget. */
  disable_event(event_id) {
    this._core_event(core.CoreRequest.DISABLE_EVENT, event_id);
  }

  _core_event(variant, event) {
    const content = Services.create_core_message(variant, { service: this.service_id, object: this.id, event });
    this.send_request(new core.BaseMessage(0, 0, content), core.CoreResponse).catch(ignore);
  }

  get_event_key(event_id) {
    return `${this.service_id},${this.id},${event_id}`;
  }

  /** Whether the daemon should send `event_id` for this object (it has listeners). */
  _wants_event(event_id) {
    return this.get_event_key(event_id) in this.event_callbacks;
  }

  /** Send Enable/DisableEvent if what is wanted changed. */
  _sync_event(event_id) {
    const want = this._wants_event(event_id);
    if (want === this._enabled.has(event_id)) return;
    if (want) {
      this._enabled.add(event_id);
      this.enable_event(event_id);
    } else {
      this._enabled.delete(event_id);
      this.disable_event(event_id);
    }
  }

  /** The first listener of an event sends EnableEvent; adding a listener twice does nothing. */
  addEventListener(event_id, fn) {
    if (typeof event_id !== "number") throw new Error(`Expected number, but got ${typeof event_id}`);
    if (!isListener(fn)) throw new TypeError("a listener is a function or has handleEvent");
    const key = this.get_event_key(event_id);
    const list = this.event_callbacks[key] || (this.event_callbacks[key] = []);
    if (list.includes(fn)) return;
    list.push(fn);
    this._sync_event(event_id);
  }

  /** Removing the last listener of an event sends DisableEvent. */
  removeEventListener(event_id, fn) {
    const key = this.get_event_key(event_id);
    const list = this.event_callbacks[key];
    if (list === undefined) return;
    const index = list.indexOf(fn);
    if (index < 0) return;
    list.splice(index, 1);
    if (list.length === 0) delete this.event_callbacks[key];
    this._sync_event(event_id);
  }

  /** Call the listeners of `event_id` with `value`, in the order they were added. */
  dispatchEvent(event_id, value) {
    const list = this.event_callbacks[this.get_event_key(event_id)];
    if (list !== undefined) callListeners(list, this, value);
  }

  /** An event for this object: `content` decoded by the "Event" codec, then dispatched. */
  on_event(content) {
    const codec = this.wrapper_payload_message.Event;
    if (codec === undefined) return;
    const decoded = codec.decode(content);
    if (decoded === null) return;
    this.dispatchEvent(decoded[0], decoded[1]);
  }

  /**
   * ReleaseObject: resolves with undefined, or rejects with
   * {reason: "call_failure", value: "No such object"} when the daemon answers false.
   */
  release() {
    const content = Services.create_core_message(core.CoreRequest.RELEASE_OBJECT, {
      service: this.service_id,
      object: this.id,
    });
    return this.send_request(new core.BaseMessage(0, 0, content), core.CoreResponse).then((answer) => {
      if (answer.msg && answer.msg.success === true) return undefined;
      throw { reason: "call_failure", value: "No such object" };
    });
  }
}
