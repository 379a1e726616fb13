/*
 * tcpsocket client library -- the session's WebSocket (handshake, then frames).
 *
 * ES module; default export `WSTransport`. Its listener (the Session) gets
 * set_transport_state("connected" | "closed", info) and on_message(bytes).
 * A failed attempt is reported once ("closed"), whether the socket errored,
 * closed or the token was refused.
 */
import { core } from "./core.js";

export default class WSTransport {
  constructor(listener) {
    this.socket = null;
    this.state = "start";
    this.listener = listener || null;
  }

  set_listener(obj) {
    this.listener = obj;
  }

  /** Connect to `url` and send the handshake with `token`; throws what `new WebSocket` throws. */
  start(url, token) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    this.state = "start";
    ws.onopen = () => {
      if (this.socket === ws) ws.send(new core.SessionHandshake(token).encode());
    };
    ws.onmessage = (event) => {
      if (this.socket !== ws) return;
      if (typeof event.data === "string") {
        console.warn("tcpsocket: ignoring a text message from the daemon");
        return;
      }
      const bytes = core.toUint8Array(event.data);
      if (this.state === "start") {
        if (new core.SessionAck().decode(bytes).success) {
          this.state = "request";
          this._notify("connected", null);
        } else {
          this.state = "failed";
          this._drop(ws);
          this._notify("closed", { reason: "token_refused" });
        }
      } else if (this.state === "request") {
        this.listener.on_message(bytes);
      }
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = (event) => {
      if (this.socket !== ws) return;
      this.socket = null;
      const wasOpen = this.state === "request";
      this.state = "failed";
      const info = wasOpen
        ? { code: event.code, reason: event.reason }
        : { reason: "connection_failed", code: event.code, message: event.reason || "" };
      this._notify("closed", info);
    };
  }

  /** Send one frame; dropped unless the handshake succeeded. */
  send(bytes) {
    if (this.state === "request" && this.socket !== null) this.socket.send(bytes);
  }

  /**
   * Close without notifying the listener; `onclosed` runs when the WebSocket's close
   * event arrives.
   */
  close(onclosed) {
    const ws = this.socket;
    this.state = "failed";
    if (ws === null) return;
    this._drop(ws);
    if (onclosed) ws.onclose = () => onclosed();
  }

  _drop(ws) {
    this.socket = null;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(1000, "session closed");
    } catch (e) {
      /* already closing */
    }
  }

  _notify(state, info) {
    if (this.listener !== null) this.listener.set_transport_state(state, info);
  }
}
