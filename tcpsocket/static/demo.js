/* Browser telnet demo: uses only the served library (lib_session, lib_tcpsocket).
 *
 * The token is typed into a password field (and kept in sessionStorage only if asked); it is
 * never read from or written to a URL. The transcript keeps the last OUTPUT_LIMIT characters.
 */
(function () {
  "use strict";

  const OUTPUT_LIMIT = 256 * 1024;
  const TOKEN_KEY = "tcpsocket-demo-token";
  const $ = (id) => document.getElementById(id);
  const ui = {
    host: $("host"), port: $("port"), tls: $("tls"), token: $("token"), remember: $("remember"),
    connect: $("connect"), reconnect: $("reconnect"), close: $("close"), status: $("status"),
    hex: $("hex"), clear: $("clear"), kept: $("kept"), output: $("output"),
    line: $("line"), eol: $("eol"), send: $("send"),
  };
  const EOL = { crlf: "\r\n", lf: "\n", none: "" };

  let session = null;
  let sessionToken = null;
  let manager = null;
  let socket = null;
  let decoder = null;
  let lastError = null;
  let last = null; // {host, port} of the last connect, for Reconnect
  let kept = 0; // characters in the transcript
  let dropped = false;

  // A token in the address (an old link, a bookmark) is not used, and is taken out of the
  // address bar and the history entry so that it goes no further.
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
  }
  for (const name of ["host", "port"]) {
    if (params.has(name)) ui[name].value = params.get(name);
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved !== null) {
    ui.token.value = saved;
    ui.remember.checked = true;
  }

  function setStatus(text, state) {
    ui.status.textContent = text;
    ui.status.dataset.state = state;
  }

  /** Add `text` to the transcript (kind: "", "sent", "meta" or "error"), keeping it bounded. */
  function append(text, kind) {
    const out = ui.output;
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    const tail = out.lastChild;
    // Received text joins the previous received span; each sent line or notice is its own.
    if (!kind && tail && tail.nodeType === 1 && tail.dataset.kind === "") {
      tail.textContent += text;
    } else {
      const span = document.createElement("span");
      span.dataset.kind = kind || "";
      if (kind) span.className = kind;
      span.textContent = text;
      out.appendChild(span);
    }
    kept += text.length;
    while (kept > OUTPUT_LIMIT && out.firstChild) {
      const first = out.firstChild;
      const excess = kept - OUTPUT_LIMIT;
      if (first.textContent.length <= excess) {
        kept -= first.textContent.length;
        out.removeChild(first);
      } else {
        first.textContent = first.textContent.slice(excess);
        kept -= excess;
      }
      dropped = true;
    }
    ui.kept.textContent = dropped ? `older output dropped: showing the last ${Math.round(OUTPUT_LIMIT / 1024)} KiB` : "";
    if (atBottom) out.scrollTop = out.scrollHeight;
  }

  const meta = (text) => append(`[${text}]\n`, "meta");
  const problem = (text) => append(`[${text}]\n`, "error");

  function hexDump(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 16) {
      const row = bytes.subarray(i, i + 16);
      const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
      const ascii = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
      text += `${hex.padEnd(48)}  ${ascii}\n`;
    }
    return text;
  }

  /** A sentence for a failure of the library (session or socket). */
  function describe(error, host, port) {
    const reason = error && error.reason;
    const detail = (error && error.value && error.value.message) || (error && error.message) || "";
    const where = `${host}:${port}`;
    if (reason === "connection_failed") {
      return `cannot reach the tcpsocket daemon at ${location.host || "localhost"}: is it running?`;
    }
    if (reason === "token_refused") return "the daemon refused the token: check it and try again";
    if (reason === "MissingPermission") return "this token does not grant TCP sockets (tcp-socket)";
    if (reason === "session_closed") return "the session with the daemon ended";
    if (/^invalid (host|port)/.test(detail)) return `that is not a valid host or port (${detail})`;
    if (/^not allowed/.test(detail)) return `the daemon's policy does not allow ${where} (${detail})`;
    if (/refused/.test(detail)) return `${where} refused the connection: nothing listens there?`;
    if (/timed? ?out/.test(detail)) return `${where} did not answer in time`;
    if (/lookup|resolve|DNS|name/i.test(detail)) return `cannot find the host ${host} (${detail})`;
    if (/too many sockets/.test(detail)) return `the daemon's socket limit is reached (${detail})`;
    if (detail) return `cannot connect to ${where}: ${detail}`;
    return `cannot connect to ${where}: ${reason || String(error)}`;
  }

  function setConnected(connected) {
    ui.line.disabled = !connected;
    ui.send.disabled = !connected;
    ui.close.disabled = !connected;
    ui.connect.disabled = false;
    ui.reconnect.disabled = connected || last === null;
  }

  /** A TcpSocketManager on a session opened with `token` (reused when possible). */
  function getManager(token) {
    if (session !== null && sessionToken === token && session.connected && manager !== null) {
      return Promise.resolve(manager);
    }
    if (session !== null) session.close();
    const current = new lib_session.Session();
    session = current;
    sessionToken = token;
    manager = null;
    return new Promise((resolve, reject) => {
      current.open("websocket", location.host || "localhost", token, {
        onsessionconnected() {
          lib_tcpsocket.TcpSocketManager.get(current).then((m) => {
            if (current === session) manager = m;
            resolve(m);
          }, reject);
        },
        onsessiondisconnected(info) {
          if (current !== session) return;
          manager = null;
          const why = info && info.code ? ` (code ${info.code}${info.reason ? `: ${info.reason}` : ""})` : "";
          if (socket !== null) problem(`the session with the daemon ended${why}`);
          socket = null;
          setStatus(`disconnected${why}`, "error");
          setConnected(false);
        },
        onsessionconnectionerror(info) {
          reject(info || { reason: "connection_failed" });
        },
      }, false);
    });
  }

  function onData(bytes) {
    append(ui.hex.checked ? hexDump(bytes) : decoder.decode(bytes, { stream: true }));
  }

  async function open(host, port, tls) {
    if (socket !== null) disconnect();
    if (ui.remember.checked) sessionStorage.setItem(TOKEN_KEY, ui.token.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    last = { host, port, tls };
    lastError = null;
    ui.connect.disabled = true;
    ui.reconnect.disabled = true;
    setStatus(`connecting to ${host}:${port}…`, "busy");
    try {
      const m = await getManager(ui.token.value);
      // With TLS the daemon runs it (SecureTcpSocketManager): the page sees plaintext.
      const opened = await m.open(tls ? { host, port, useSecureTransport: true } : { host, port });
      socket = opened;
      decoder = new TextDecoder();
      opened.addEventListener(opened.DATA_EVENT, onData);
      opened.addEventListener(opened.ERROR_EVENT, (message) => {
        lastError = message;
        problem(`error: ${message}`);
      });
      opened.addEventListener(opened.CLOSE_EVENT, () => {
        if (socket !== opened) return;
        socket = null;
        const why = lastError ? `connection closed: ${lastError}` : "connection closed";
        meta(why);
        setStatus(why, lastError ? "error" : "closed");
        setConnected(false);
      });
      const how = tls && opened.tls ? ` over ${opened.tls.version}, certificate ${opened.tls.peerSubject}` : "";
      meta(`connected to ${host}:${port}${how}`);
      setStatus(`connected to ${host}:${port}${tls ? " (TLS)" : ""}`, "connected");
      setConnected(true);
      ui.line.focus();
    } catch (error) {
      const text = describe(error, host, port);
      problem(text);
      setStatus(text, "error");
      setConnected(false);
    }
  }

  function disconnect() {
    const current = socket;
    if (current === null) return;
    current.close().catch((error) => problem(`close failed: ${describe(error, last.host, last.port)}`));
    setStatus("closing…", "busy");
  }

  async function sendLine(event) {
    event.preventDefault();
    if (socket === null) return;
    const text = ui.line.value + (EOL[ui.eol.value] ?? "\r\n");
    ui.line.value = "";
    append(text.endsWith("\n") ? text : `${text}\n`, "sent");
    try {
      await socket.send(text);
    } catch (error) {
      problem(`send failed: ${describe(error, last.host, last.port)}`);
    }
  }

  function clear() {
    ui.output.textContent = "";
    kept = 0;
    dropped = false;
    ui.kept.textContent = "";
  }

  $("connect-form").addEventListener("submit", (event) => {
    event.preventDefault();
    open(ui.host.value.trim(), Number(ui.port.value), ui.tls.checked);
  });
  ui.reconnect.addEventListener("click", () => last && open(last.host, last.port, last.tls));
  $("send-form").addEventListener("submit", sendLine);
  ui.close.addEventListener("click", disconnect);
  ui.clear.addEventListener("click", clear);
  ui.remember.addEventListener("change", () => {
    if (!ui.remember.checked) sessionStorage.removeItem(TOKEN_KEY);
  });
  window.tcpsocketDemo = { OUTPUT_LIMIT };
})();
