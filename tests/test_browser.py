"""The JavaScript library in Chromium against the real daemon, all on loopback.

The daemon, the loopback TCP servers and a small "app" web server run in-process on the
reactor. Chromium is driven with Playwright's sync API from one dedicated worker thread
(``ThreadPool(1, 1)``), so the reactor keeps serving while the browser works. One browser is
shared by every test; each test gets its own browser context, closed at cleanup. Waits are on
conditions (``wait_for_function``, Deferreds), never fixed sleeps.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tcpsocket.site import build_site
from tests.support import (
    NO_PERMISSION_TOKEN,
    TOKEN,
    Banner,
    Echo,
    SendAndClose,
    listen_remote,
    wait_until,
)
from tests.support import test_config as daemon_config

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # gc() for the garbage-collection tests (tests/test_browser_compat.py).
    "--js-flags=--expose-gc",
]
#: Playwright's timeout for one wait or action, in milliseconds.
WAIT_MS = 20_000

T = TypeVar("T")


class BrowserHost:
    """One Chromium for the module, used only from one worker thread."""

    def __init__(self) -> None:
        self._pool: ThreadPool | None = None
        self._playwright: Any = None
        self._browser: Any = None

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Call ``fn`` in the browser thread; its result in a Deferred."""
        if self._pool is None:
            pool = ThreadPool(1, 1, name="playwright")
            pool.threadFactory = functools.partial(threading.Thread, daemon=True)  # type: ignore[assignment]
            pool.start()
            self._pool = pool
            reactor.addSystemEventTrigger("before", "shutdown", self.stop)  # type: ignore[attr-defined]
            atexit.register(self._stop_at_exit)
        return deferToThreadPool(reactor, self._pool, fn, *args, **kwargs)  # type: ignore[arg-type]

    def browser(self) -> Any:
        """The shared browser, launched on first use (browser thread only)."""
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
        return self._browser

    def _close(self) -> None:
        try:
            if self._browser is not None:
                self._browser.close()
        finally:
            self._browser = None
            if self._playwright is not None:
                self._playwright.stop()
                self._playwright = None

    def stop(self) -> defer.Deferred[None] | None:
        """Close the browser and stop the thread (reactor shutdown)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return None
        d = deferToThreadPool(reactor, pool, self._close)  # type: ignore[arg-type]
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: pool.stop())
        return d

    def _stop_at_exit(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        done = threading.Event()

        def close() -> None:
            try:
                self._close()
            finally:
                done.set()

        pool.callInThread(close)
        done.wait(30)
        pool.stop()


HOST = BrowserHost()

# Records the first bytes (hex) of every WebSocket frame the page sends (window.__frames) and
# receives through onmessage (window.__received), before any script runs.
FRAME_LOG = """
(() => {
  const frames = [];
  const received = [];
  Object.defineProperty(window, "__frames", { value: frames });
  Object.defineProperty(window, "__received", { value: received });
  const head = (data) => {
    let bytes = null;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) {
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    }
    if (bytes === null) return null;
    return Array.from(bytes.subarray(0, 48), (b) => b.toString(16).padStart(2, "0")).join("");
  };
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    const hex = head(data);
    if (hex !== null) frames.push(hex);
    return send.call(this, data);
  };
  const onmessage = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
  Object.defineProperty(WebSocket.prototype, "onmessage", {
    configurable: true,
    get() { return onmessage.get.call(this); },
    set(fn) {
      const record = (event) => {
        const hex = head(event.data);
        if (hex !== null) received.push(hex);
      };
      const wrapped = typeof fn === "function"
        ? function (event) { record(event); return fn.call(this, event); }
        : fn;
      onmessage.set.call(this, wrapped);
    },
  });
})();
"""

# Test harness of the pages: window.T.
HARNESS = """
window.T = (() => {
  const T = { connected: 0, disconnected: 0, connErrors: [], sockets: [] };
  T.session = T.manager = null;
  const wrap = (p) => p.then(
    (value) => ({ ok: value === undefined ? null : value }),
    (error) => ({ error }),
  );
  T.open = (host, token, lazy) => {
    const session = new lib_session.Session();
    T.session = session;
    return new Promise((resolve) => {
      session.open("websocket", host, token, {
        onsessionconnected() { T.connected++; resolve({ ok: true }); },
        onsessiondisconnected() { T.disconnected++; },
        onsessionconnectionerror(e) { T.connErrors.push(e); if (!lazy) resolve({ error: e }); },
      }, lazy);
    });
  };
  T.getManager = () => wrap(lib_tcpsocket.TcpSocketManager.get(T.session).then((m) => {
    T.manager = m;
    return m.service_id;
  }));
  T.record = (socket) => {
    const rec = { socket, chunks: [], bytes: 0, text: "", events: [], decoder: new TextDecoder() };
    rec.handlers = [
      () => rec.events.push("close"),
      (v) => {
        const owned = v instanceof Uint8Array && v.buffer.byteLength === v.length;
        if (!owned) rec.events.push("bad-data");
        rec.chunks.push(v);
        rec.bytes += v.length;
        rec.text += rec.decoder.decode(v, { stream: true });
        rec.events.push("data");
      },
      (v) => rec.events.push("drain:" + v),
      (v) => rec.events.push("error:" + v),
    ];
    T.sockets.push(rec);
    return T.sockets.length - 1;
  };
  T.openSocket = (host, port, events) => wrap(T.manager.open({ host, port }).then((socket) => {
    const index = T.record(socket);
    for (const e of events || []) T.listen(index, e);
    return index;
  }));
  T.listen = (i, e) => T.sockets[i].socket.addEventListener(e, T.sockets[i].handlers[e]);
  T.unlisten = (i, e) => T.sockets[i].socket.removeEventListener(e, T.sockets[i].handlers[e]);
  T.call = (i, method, ...args) => wrap(T.sockets[i].socket[method](...args));
  T.text = (i) => T.sockets[i].text;
  T.events = (i) => T.sockets[i].events;
  return T;
})();
"""

OUTPUT_HAS = "(text) => document.querySelector('#output').textContent.includes(text)"

# The seed's snippet (the seed documentation of TcpSocketManager), verbatim.
SEED_SNIPPET = """
const session = new lib_session.Session();
const sessionstate = {};
let _tcpsocketManager = null;
sessionstate.onsessionconnected = function () {
  console.log(`TcpSocketManager onsessionconnected`);
  lib_tcpsocket.TcpSocketManager.get(session).then((TcpSocketManagerService) => {
  console.log(`Got TcpSocketManager : #TcpSocketManagerService.service_id}`);
  _tcpsocketManager = TcpSocketManagerService;
}).catch((e) => {
  console.log(`Error calling TcpSocketManager service${JSON.stringify(e)}`);
  _tcpsocketManager = null;
});
};

sessionstate.onsessiondisconnected = function () {
  console.log(`TcpSocketManager onsessiondisconnected Daemon Crashed`);
};

// On desktop version, set ENV WS_RUNTIME_TOKEN=change-this-secret-token
session.open('websocket', 'localhost', 'change-this-secret-token', sessionstate, true);
"""


def track_connections(test: unittest.TestCase, port: Any) -> None:
    """At cleanup, abort what is still connected to the listening ``port`` and wait until gone.

    Covers idle HTTP keep-alive connections of the browser, which outlive its pages.
    """

    def live() -> list[Any]:
        selectables = set(reactor.getReaders()) | set(reactor.getWriters())  # type: ignore[attr-defined]
        return [s for s in selectables if getattr(s, "server", None) is port]

    async def drop() -> None:
        for transport in live():
            transport.abortConnection()
        await wait_until(lambda: not live())

    test.addCleanup(lambda: defer.ensureDeferred(drop()))


class Pages(Resource):
    """The test "app" origin: pages registered by the tests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[bytes, bytes] = {}

    def render_GET(self, request: Request) -> bytes:
        body = self.pages.get(b"/".join(request.postpath or []))
        if body is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return body


class BrowserTestCase(unittest.TestCase):
    """Starts the daemon and an app origin; gives pages and JS helpers."""

    timeout = 120

    async def listen(self, site: Any, number: int = 0) -> Any:
        """Serve ``site`` on 127.0.0.1 port ``number`` (0: a free one) until cleanup.

        Returns the listening port, which a test may stop before.
        """
        port = await TCP4ServerEndpoint(reactor, number, interface="127.0.0.1").listen(site)
        self.addCleanup(lambda: port.stopListening() if port.connected else None)
        track_connections(self, port)
        return port

    async def start_daemon(self, **overrides: Any) -> tuple[Any, int]:
        site = build_site(daemon_config(**overrides))
        port = await self.listen(site)
        return site, port.getHost().port

    async def start_app(self) -> tuple[Pages, int]:
        pages = Pages()
        port = await self.listen(Site(pages))
        return pages, port.getHost().port

    async def restartable_daemon(self, number: int = 0) -> Any:
        """A new daemon, ``self.site`` from now on, on ``number`` (0: a free port).

        Returns its listening port, for :meth:`daemon_goes_away`.
        """
        self.site = build_site(daemon_config())
        return await self.listen(self.site, number)

    async def daemon_goes_away(self, port: Any) -> None:
        """``port`` stops listening, and every session of ``self.site`` is dropped."""
        await port.stopListening()
        sessions = self.site.session_factory.sessions
        for session in list(sessions):
            session.transport.abortConnection()
        await wait_until(lambda: not sessions)

    async def setUp(self) -> None:  # type: ignore[override]
        self.site, self.port = await self.start_daemon()
        self.app, self.app_port = await self.start_app()
        self.daemon = f"http://127.0.0.1:{self.port}"

    def script_tags(self, daemon_port: int | None = None) -> str:
        base = f"http://127.0.0.1:{daemon_port or self.port}/api/v1"
        return "".join(
            f'<script src="{base}/{path}"></script>\n'
            for path in ("shared/core.js", "shared/session.js", "apps/service.js")
        )

    def page_url(self, name: str, body: str) -> str:
        """Register an app page and return its URL (another origin than the daemon's)."""
        html = f"<!doctype html>\n<meta charset=utf-8>\n<title>{name}</title>\n{body}"
        self.app.pages[name.encode()] = html.encode()
        return f"http://127.0.0.1:{self.app_port}/{name}"

    async def new_page(self, url: str | None = None) -> Any:
        """A page in a fresh browser context (closed at cleanup), at ``url`` if given."""
        logs: list[str] = []

        def make() -> tuple[Any, Any]:
            context = HOST.browser().new_context()
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            page.add_init_script(FRAME_LOG)
            page.on("console", lambda m: logs.append(f"console.{m.type}: {m.text}"))
            page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
            return context, page

        context, page = await HOST.run(make)
        self.logs = logs

        async def close() -> None:
            await HOST.run(context.close)
            # The sessions of the page end with it.
            await wait_until(lambda: not self.site.session_factory.sessions)

        self.addCleanup(lambda: defer.ensureDeferred(close()))
        if url is not None:
            await HOST.run(page.goto, url)
        return page

    async def harness_page(self, daemon_port: int | None = None) -> Any:
        body = self.script_tags(daemon_port) + f"<script>{HARNESS}</script>\n"
        return await self.new_page(self.page_url("harness.html", body))

    async def js(self, page: Any, expression: str, arg: Any = None) -> Any:
        """Evaluate ``expression`` (a function) in the page; awaits returned promises."""
        return await HOST.run(page.evaluate, expression, arg)

    async def wait_js(self, page: Any, expression: str, arg: Any = None) -> Any:
        """Wait until ``expression`` (a function) is truthy in the page."""
        try:
            handle = await HOST.run(
                page.wait_for_function, expression, arg=arg, timeout=WAIT_MS, polling=20
            )
        except Exception:
            self.fail(f"page condition not met: {expression}\n" + "\n".join(self.logs[-30:]))
        return await HOST.run(handle.json_value)

    async def connected_manager(self, page: Any, token: str = TOKEN) -> None:
        self.assertEqual(
            await self.js(page, "(t) => T.open('localhost', t, false)", token), {"ok": True}
        )
        self.assertEqual(await self.js(page, "() => T.getManager()"), {"ok": 1})

    async def open_socket(self, page: Any, port: int, events: list[int] | None = None) -> int:
        result = await self.js(
            page, "([p, e]) => T.openSocket('127.0.0.1', p, e)", [port, events or []]
        )
        self.assertIn("ok", result, result)
        return int(result["ok"])

    def daemon_socket(self, service_id: int = 1, socket_id: int = 1) -> Any:
        """The daemon's side of a socket of the (only) session."""
        (session,) = self.site.session_factory.sessions
        return session.services[service_id].sockets[socket_id]


class SeedTests(BrowserTestCase):
    async def test_seed_snippet_verbatim(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        tags = self.script_tags()
        page = await self.new_page(
            self.page_url("seed.html", f"{tags}<script>{SEED_SNIPPET}</script>\n")
        )
        await self.wait_js(page, "() => _tcpsocketManager !== null")
        self.assertIn("console.log: TcpSocketManager onsessionconnected", self.logs)
        self.assertIn(
            "console.log: Got TcpSocketManager : #TcpSocketManagerService.service_id}", self.logs
        )
        self.assertEqual(await self.js(page, "() => _tcpsocketManager.service_id"), 1)
        # The seed's event pattern: listeners on the manager; this = the socket.
        received = await self.js(
            page,
            """async (port) => {
              const got = [];
              const socket = await _tcpsocketManager.open({ host: "127.0.0.1", port });
              await new Promise((resolve) => {
                function handleEvent(value) {
                  const text = new TextDecoder().decode(value);
                  got.push(this === socket, value instanceof Uint8Array, text);
                  _tcpsocketManager.removeEventListener(_tcpsocketManager.DATA_EVENT, handleEvent);
                  resolve();
                }
                _tcpsocketManager.addEventListener(_tcpsocketManager.DATA_EVENT, handleEvent);
                socket.send("seed ping");
              });
              return got;
            }""",
            echo_port,
        )
        self.assertEqual(received, [True, True, "seed ping"])
        self.assertEqual(bytes(echo.received), b"seed ping")


class EchoTests(BrowserTestCase):
    async def test_text_round_trip(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        page = await self.harness_page()
        await self.connected_manager(page)
        index = await self.open_socket(page, echo_port, [1])
        self.assertEqual(
            await self.js(page, "(i) => T.call(i, 'send', 'héllo\\r\\n')", index), {"ok": True}
        )
        await self.wait_js(page, "(i) => T.text(i) === 'héllo\\r\\n'", index)
        self.assertEqual(bytes(echo.received), "héllo\r\n".encode())
        self.assertNotIn("bad-data", await self.js(page, "(i) => T.events(i)", index))

    async def test_5mib_random_binary_round_trip(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        page = await self.harness_page()
        await self.connected_manager(page)
        index = await self.open_socket(page, echo_port, [1, 2, 3])
        size = 5 * 1024 * 1024
        sent = await self.js(
            page,
            """async ([i, size]) => {
              const data = new Uint8Array(size);
              for (let o = 0; o < size; o += 65536) {
                crypto.getRandomValues(data.subarray(o, o + 65536));
              }
              window.bigData = data;
              const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
              const result = await T.call(i, "send", data);
              const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0"));
              return { result, digest: hex.join("") };
            }""",
            [index, size],
        )
        self.assertIn("ok", sent["result"])
        await self.wait_js(page, "([i, size]) => T.sockets[i].bytes >= size", [index, size])
        comparison = await self.js(
            page,
            """(i) => {
              const rec = T.sockets[i];
              const all = new Uint8Array(rec.bytes);
              let off = 0;
              for (const c of rec.chunks) { all.set(c, off); off += c.length; }
              const data = window.bigData;
              if (all.length !== data.length) return "length " + all.length;
              for (let k = 0; k < data.length; k++) {
                if (all[k] !== data[k]) return "differs at " + k;
              }
              if (rec.events.includes("bad-data")) return "a DATA value does not own its buffer";
              return "same";
            }""",
            index,
        )
        self.assertEqual(comparison, "same")
        self.assertEqual(len(echo.received), size)
        self.assertEqual(hashlib.sha256(echo.received).hexdigest(), sent["digest"])
        events = await self.js(
            page, "(i) => T.events(i).filter((e) => !e.startsWith('data'))", index
        )
        self.assertEqual([e for e in events if e.startswith("error")], [])
        # send answered false (over the high-water mark), so exactly one DRAIN true follows.
        if sent["result"]["ok"] is False:
            await self.wait_js(page, "(i) => T.events(i).includes('drain:true')", index)

    async def test_es_modules_cross_origin(self) -> None:
        _echo, echo_port = await listen_remote(self, Echo)
        body = f"""<script type="module">
import {{ Session, websocketUrl, scriptUrl }} from "{self.daemon}/api/v1/shared/session.js";
import {{ TcpSocketManager }} from "{self.daemon}/api/v1/apps/service.js";
window.result = (async () => {{
  if ("lib_session" in globalThis || "lib_tcpsocket" in globalThis) {{
    return "module defined a global";
  }}
  const session = new Session();
  await new Promise((resolve, reject) => session.open("websocket", "127.0.0.1", "{TOKEN}",
    {{ onsessionconnected: resolve, onsessionconnectionerror: reject }}, false));
  const manager = await TcpSocketManager.get(session);
  const socket = await manager.open({{ host: "127.0.0.1", port: {echo_port} }});
  const text = await new Promise((resolve) => {{
    socket.addEventListener(socket.DATA_EVENT, (v) => resolve(new TextDecoder().decode(v)));
    socket.send(new TextEncoder().encode("module"));
  }});
  session.close();
  return [scriptUrl, websocketUrl("localhost"), text];
}})().catch((e) => "failed: " + JSON.stringify(e) + String(e));
</script>
"""
        page = await self.new_page(self.page_url("module.html", body))
        await self.wait_js(page, "() => window.result !== undefined")
        result = await self.js(page, "() => window.result")
        self.assertEqual(
            result,
            [
                f"{self.daemon}/api/v1/shared/session.js",
                f"ws://localhost:{self.port}/ws",
                "module",
            ],
        )


class RemoteBehaviourTests(BrowserTestCase):
    async def test_banner_first_with_listener_after_open(self) -> None:
        banner, banner_port = await listen_remote(self, Banner)
        page = await self.harness_page()
        await self.connected_manager(page)
        index = await self.open_socket(page, banner_port)
        # The banner is at the daemon before anyone listens; a round trip proves no DATA left it.
        await wait_until(lambda: self.daemon_socket()._held >= len(Banner.banner))
        self.assertEqual(
            await self.js(page, "() => T.session.has_service('TcpSocketManager')"), True
        )
        self.assertEqual(await self.js(page, "(i) => T.events(i)", index), [])
        await self.js(page, "(i) => T.listen(i, 1)", index)
        await self.wait_js(page, "([i, b]) => T.text(i) === b", [index, Banner.banner.decode()])
        self.assertEqual(len(banner.connections), 1)

    async def test_server_closes_right_after_connecting(self) -> None:
        _factory, port = await listen_remote(self, SendAndClose, b"goodbye\r\n")
        page = await self.harness_page()
        await self.connected_manager(page)
        index = await self.open_socket(page, port)
        for event in (0, 3, 1):  # CLOSE, ERROR, then DATA: the daemon holds events in order
            await self.js(page, "([i, e]) => T.listen(i, e)", [index, event])
        await self.wait_js(page, "(i) => T.events(i).includes('close')", index)
        self.assertEqual(await self.js(page, "(i) => T.events(i)", index), ["data", "close"])
        self.assertEqual(await self.js(page, "(i) => T.text(i)", index), "goodbye\r\n")
        failure = await self.js(page, "(i) => T.call(i, 'send', 'late')", index)
        self.assertEqual(failure["error"]["reason"], "call_failure")
        self.assertEqual(failure["error"]["value"], {})
        self.assertIsInstance(failure["error"]["message"], str)

    async def test_listeners_added_and_removed(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        page = await self.harness_page()
        await self.connected_manager(page)
        index = await self.open_socket(page, echo_port)
        await self.js(
            page,
            """(i) => {
              const s = T.sockets[i].socket;
              window.extra = [];
              window.second = (v) => window.extra.push(v.length);
              s.addEventListener(s.DATA_EVENT, T.sockets[i].handlers[1]);
              s.addEventListener(s.DATA_EVENT, T.sockets[i].handlers[1]);
              s.addEventListener(s.DATA_EVENT, window.second);
            }""",
            index,
        )
        frames = await self.js(
            page, "() => window.__frames.filter((f) => f.endsWith('0403010101'))"
        )
        self.assertEqual(len(frames), 1, "one EnableEvent(1, 1, DATA) for three adds")
        await self.js(page, "(i) => T.call(i, 'send', 'one')", index)
        await self.wait_js(page, "(i) => T.text(i) === 'one' && window.extra.length === 1", index)
        # Removing one of two listeners keeps the event enabled.
        await self.js(page, "(i) => T.unlisten(i, 1)", index)
        await self.js(page, "(i) => T.call(i, 'send', 'two')", index)
        await self.wait_js(page, "() => window.extra.length === 2")
        self.assertEqual(await self.js(page, "(i) => T.text(i)", index), "one")
        # Removing the last one sends DisableEvent(1, 1, DATA).
        await self.js(
            page, "(i) => T.sockets[i].socket.removeEventListener(1, window.second)", index
        )
        disable = await self.js(
            page, "() => window.__frames.filter((f) => f.endsWith('0404010101'))"
        )
        self.assertEqual(len(disable), 1)
        remote = self.daemon_socket()
        await wait_until(lambda: 1 not in {int(e) for e in remote._enabled})
        # Data arriving now is held by the daemon, not sent.
        echo.connections[0].transport.write(b"held")
        await wait_until(lambda: remote._held >= 4)
        self.assertEqual(
            await self.js(page, "() => T.session.has_service('TcpSocketManager')"), True
        )
        self.assertEqual(await self.js(page, "() => window.extra.length"), 2)
        # Listening again delivers it.
        await self.js(page, "(i) => T.listen(i, 1)", index)
        await self.wait_js(page, "(i) => T.text(i) === 'oneheld'", index)


def refused_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OpenFailureTests(BrowserTestCase):
    async def test_open_failures(self) -> None:
        refused = refused_port()
        page = await self.harness_page()
        await self.connected_manager(page)
        cases: list[tuple[str, int, str]] = [
            ("127.0.0.1", refused, "refused"),
            ("bad host!", 80, "invalid host"),
            ("", 80, "invalid host"),
            ("127.0.0.1", 0, "invalid port"),
            ("127.0.0.1", 70000, "invalid port"),
        ]
        for host, port, words in cases:
            result = await self.js(page, "([h, p]) => T.openSocket(h, p)", [host, port])
            self.assertIn("error", result, (host, port))
            error = result["error"]
            self.assertEqual(error["reason"], "call_failure", (host, port))
            self.assertEqual(error["value"], {}, (host, port))
            self.assertIn(words, error["message"].lower(), (host, port))
        # The session is still fine afterwards.
        self.assertTrue(await self.js(page, "() => T.session.has_service('TcpSocketManager')"))

    async def test_token_without_permission(self) -> None:
        page = await self.harness_page()
        self.assertEqual(
            await self.js(page, "(t) => T.open('localhost', t, false)", NO_PERMISSION_TOKEN),
            {"ok": True},
        )
        result = await self.js(page, "() => T.getManager()")
        self.assertEqual(result, {"error": "MissingPermission"})

    async def test_wrong_token(self) -> None:
        page = await self.harness_page()
        await self.js(page, "() => { T.open('localhost', 'not-a-token', true); }")
        await self.wait_js(page, "() => T.connErrors.length === 1")
        self.assertEqual(await self.js(page, "() => T.connErrors"), [{"reason": "token_refused"}])
        self.assertEqual(
            await self.js(page, "() => [T.connected, T.session.connected]"), [0, False]
        )


class ReconnectTests(BrowserTestCase):
    async def test_daemon_restart_under_lazy_reconnect(self) -> None:
        _echo, echo_port = await listen_remote(self, Echo)
        listening = await self.restartable_daemon()
        number = listening.getHost().port
        page = await self.harness_page(daemon_port=number)
        await self.js(page, "() => { T.open('localhost', 'change-this-secret-token', true); }")
        await self.wait_js(page, "() => T.connected === 1")
        self.assertEqual(await self.js(page, "() => T.getManager()"), {"ok": 1})
        index = await self.open_socket(page, echo_port, [1])

        await self.daemon_goes_away(listening)
        await self.wait_js(page, "() => T.disconnected === 1 && !T.session.connected")
        stale = await self.js(page, "(i) => T.call(i, 'send', 'x')", index)
        self.assertEqual(stale["error"]["reason"], "session_closed")
        # Reconnection attempts fail while nobody listens.
        await self.wait_js(page, "() => T.connErrors.length >= 1")

        # It comes back on the same port; the session reconnects by itself.
        await self.restartable_daemon(number)
        await self.wait_js(page, "() => T.connected === 2 && T.session.connected")
        stale = await self.js(page, "(i) => T.call(i, 'send', 'x')", index)
        self.assertEqual(
            stale,
            {"error": {"reason": "session_closed", "value": "an object of an earlier connection"}},
        )
        self.assertEqual(await self.js(page, "() => T.getManager()"), {"ok": 1})
        index2 = await self.open_socket(page, echo_port, [1])
        await self.js(page, "(i) => T.call(i, 'send', 'back again')", index2)
        await self.wait_js(page, "(i) => T.text(i) === 'back again'", index2)
