/* Browser telnet demo: uses only the served library (lib_session, lib_tcpsocket). */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const ui = {
    host: $("host"),
    port: $("port"),
    token: $("token"),
    connect: $("connect"),
    close: $("close"),
    status: $("status"),
    output: $("output"),
    line: $("line"),
    eol: $("eol"),
    send: $("send"),
  };
  const EOL = { crlf: "\r\n", lf: "\n", none: "" };

  let session = null;
  let sessionToken = null;
  let manager = null;
  let socket = null;
  let decoder = null;

  const params = new URLSearchParams(location.search);
  for (const name of ["host", "port", "token"]) {
    if (params.has(name)) ui[name].value = params.get(name);
  }

  function setStatus(text, state) {
    ui.status.textContent = text;
    ui.status.dataset.state = state || "";
  }

  function append(text, cls) {
    const atBottom = ui.output.scrollTop + ui.output.clientHeight >= ui.output.scrollHeight - 4;
    if (cls) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      ui.output.appendChild(span);
    } else {
      ui.output.appendChild(document.createTextNode(text));
    }
    if (atBottom) ui.output.scrollTop = ui.output.scrollHeight;
  }

  function meta(text) {
    append(`[${text}]\n`, "meta");
  }

  function describe(error) {
    if (error && error.value && error.value.message) return error.value.message;
    if (error && error.reason) return error.message ? `${error.reason}: ${error.message}` : error.reason;
    return String(error);
  }

  function setConnected(connected) {
    ui.line.disabled = !connected;
    ui.send.disabled = !connected;
    ui.close.disabled = !connected;
    ui.connect.disabled = false;
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
      current.open(
        "websocket",
        location.host || "localhost",
        token,
        {
          onsessionconnected() {
            lib_tcpsocket.TcpSocketManager.get(current).then((m) => {
              if (current === session) manager = m;
              resolve(m);
            }, reject);
          },
          onsessiondisconnected() {
            if (current !== session) return;
            manager = null;
            socket = null;
            meta("session closed");
            setStatus("disconnected", "error");
            setConnected(false);
          },
          onsessionconnectionerror(info) {
            reject(info && info.reason === "token_refused" ? { reason: "token refused" } : info || {});
          },
        },
        false
      );
    });
  }

  function onData(bytes) {
    append(decoder.decode(bytes, { stream: true }));
  }

  async function connect(event) {
    event.preventDefault();
    const host = ui.host.value.trim();
    const port = Number(ui.port.value);
    if (socket !== null) disconnect();
    ui.connect.disabled = true;
    setStatus(`connecting to ${host}:${port}…`, "busy");
    try {
      const m = await getManager(ui.token.value);
      const opened = await m.open({ host, port });
      socket = opened;
      decoder = new TextDecoder();
      opened.addEventListener(opened.DATA_EVENT, onData);
      opened.addEventListener(opened.ERROR_EVENT, (message) => meta(`error: ${message}`));
      opened.addEventListener(opened.CLOSE_EVENT, () => {
        if (socket !== opened) return;
        socket = null;
        meta("connection closed");
        setStatus("closed", "");
        setConnected(false);
      });
      meta(`connected to ${host}:${port}`);
      setStatus(`connected to ${host}:${port}`, "connected");
      setConnected(true);
      ui.line.focus();
    } catch (error) {
      meta(`connect failed: ${describe(error)}`);
      setStatus(`error: ${describe(error)}`, "error");
      setConnected(false);
    }
  }

  function disconnect() {
    const current = socket;
    if (current === null) return;
    current.close().catch((error) => meta(`close failed: ${describe(error)}`));
    setStatus("closing…", "busy");
  }

  async function sendLine(event) {
    event.preventDefault();
    if (socket === null) return;
    const text = ui.line.value + (EOL[ui.eol.value] ?? "\r\n");
    ui.line.value = "";
    try {
      await socket.send(text);
    } catch (error) {
      meta(`send failed: ${describe(error)}`);
    }
  }

  $("connect-form").addEventListener("submit", connect);
  $("send-form").addEventListener("submit", sendLine);
  ui.close.addEventListener("click", disconnect);
})();
