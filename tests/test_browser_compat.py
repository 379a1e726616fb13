"""Apps written for api-daemon's JS runtime, unchanged, on our library and daemon, in Chromium.

Two apps share one scenario each: one in the webpack-era style (classic ``<script src>`` of
the daemon's core.js, session.js and service.js; globals), one in the current style (ES-module
``import`` of the same URLs, from another origin). They use only the original API and check
what api-daemon's own test page checks (resolve values, CLOSE ``{}``, failing opens whose
``value`` deep-equals ``{}``), plus suspend/resume, DRAIN, release, garbage collection of the
manager, 1,024 sockets on one session and lazy reconnect. Reuses the harness of
tests/test_browser.py (in-process daemon, app origin, one shared Chromium).
"""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from tests.session_helpers import only
from tests.support import TOKEN, Echo, RemoteFactory, listen_remote, wait_until
from tests.test_browser import HOST, BrowserTestCase, refused_port

# The app's own helpers, written against the original API only (`API` is what the page
# loaded: the globals or the module exports). deepEquals behaves as api-daemon's testing.js
# deep_equals: it throws on undefined/null unless both sides are the same.
APP = """
window.APP = (() => {
  const A = { connected: 0, disconnected: 0, connErrors: 0, opened: null, session: null };
  A.deepEquals = function deepEquals(a, b) {
    if (a === b) return true;
    if (a === undefined || a === null || b === undefined || b === null) {
      throw new TypeError("deep_equals: undefined or null");
    }
    if (a instanceof URL && b instanceof URL) return a.href === b.href;
    if (typeof a !== "object" || typeof b !== "object") return false;
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    if (ka.length !== kb.length) return false;
    return ka.every((k) => deepEquals(a[k], b[k]));
  };
  A.connect = (host, token, lazy, onConnected) => new Promise((resolve) => {
    const session = new API.Session();
    A.session = session;
    A.opened = session.open("websocket", host, token, {
      onsessionconnected() { A.connected++; if (onConnected) onConnected(session); resolve(true); },
      onsessiondisconnected() { A.disconnected++; },
      onsessionconnectionerror() { A.connErrors++; if (!lazy) resolve(false); },
    }, lazy);
  });
  // Like testing.js's SidlEventHandler: queue the values of one event of one object.
  A.handler = (obj, id) => {
    const h = { values: [], waiting: [] };
    h.fn = (v) => { if (h.waiting.length) h.waiting.shift()(v); else h.values.push(v); };
    h.next = () => h.values.length ? Promise.resolve(h.values.shift())
      : new Promise((resolve) => h.waiting.push(resolve));
    h.stop = () => obj.removeEventListener(id, h.fn);
    obj.addEventListener(id, h.fn);
    return h;
  };
  A.settle = (p) => p.then((ok) => ({ ok }), (error) => ({ error }));
  A.describe = (v) => `${typeof v} ${JSON.stringify(v)}`;
  return A;
})();
"""


if TYPE_CHECKING:
    _Base = BrowserTestCase
else:
    _Base = object


class AppScenarios(_Base):
    """The scenarios, on a page of one style: ``API`` = {Session, TcpSocketManager} and APP."""

    def api_loader(self) -> str:
        raise NotImplementedError

    async def app_page(self) -> Any:
        body = self.api_loader() + f"<script>{APP}</script>\n"
        page = await self.new_page(self.page_url("app.html", body))
        await self.wait_js(page, "() => window.API !== undefined && window.APP !== undefined")
        return page

    async def connected_app(self, lazy: bool = False) -> Any:
        page = await self.app_page()
        host = f"localhost:{self.port}"
        connected = await self.js(page, "([h, t, l]) => APP.connect(h, t, l)", [host, TOKEN, lazy])
        self.assertTrue(connected, "\n".join(self.logs[-20:]))
        self.assertEqual(
            await self.js(page, "() => APP.opened"), {"success": True, "cause": "success"}
        )
        self.assertEqual(await self.js(page, "() => APP.session.is_connected()"), True)
        got = await self.js(
            page,
            """() => APP.settle(API.TcpSocketManager.get(APP.session).then((m) => {
              window.manager = m;
              return [m.id, m.service_id, Object.keys(m)];
            }))""",
        )
        self.assertEqual(
            got,
            {
                "ok": [
                    0,
                    1,
                    ["id", "session", "service_id", "wrapper_payload_message", "event_callbacks"],
                ]
            },
        )
        return page

    async def test_echo_close_and_failing_opens_as_tests_html(self) -> None:
        """The twelve assertions of api-daemon's tcpsocket tests.html, in its order."""
        ports = [(await listen_remote(self, Echo))[1] for _ in range(3)]
        refused = refused_port()
        page = await self.connected_app()
        results = await self.js(
            page,
            """async ([ports, refused]) => {
              const out = [];
              const check = async (desc, run, expected, rejected) => {
                try {
                  const r = await APP.settle(run());
                  const bad = (how, v) => out.push([desc, how + " " + APP.describe(v)]);
                  if (rejected && !("error" in r)) return bad("resolved", r.ok);
                  if (!rejected && !("ok" in r)) return bad("rejected", r.error);
                  const value = rejected ? r.error.value : r.ok;
                  out.push([desc, APP.deepEquals(value, expected) ? true : APP.describe(value)]);
                } catch (e) { out.push([desc, "threw " + e]); }
              };
              const sockets = [], data = [], close = [];
              const words = ["Hello", "KaiOS", "close"];
              for (let i = 0; i < 3; i++) {
                sockets[i] = await manager.open({ host: "127.0.0.1", port: ports[i] });
                data[i] = APP.handler(sockets[i], sockets[i].DATA_EVENT);
                close[i] = APP.handler(sockets[i], sockets[i].CLOSE_EVENT);
                const bytes = new TextEncoder().encode(words[i]);
                await check("Sending Data", () => sockets[i].send(bytes), true);
                await check("Waitting for data event", () => data[i].next(), bytes);
                data[i].stop();
              }
              for (let i = 0; i < 3; i++) {
                sockets[i].close();
                await check("Waitting for close event", () => close[i].next(), {});
                close[i].stop();
              }
              const open = (host, port) => () => manager.open({ host, port });
              await check("Invalid ip address", open("127.0.0", 7870), {}, true);
              await check("Invalid port number", open("127.0.0.1", "abc"), {}, true);
              await check("Remote not available", open("127.0.0.1", refused), {}, true);
              const failure = await APP.settle(open("127.0.0.1", refused)());
              return { out, ids: sockets.map((s) => [s.id, s.service_id]), failure: failure.error };
            }""",
            [ports, refused],
        )
        self.assertEqual(
            results["out"],
            [["Sending Data", True], ["Waitting for data event", True]] * 3
            + [["Waitting for close event", True]] * 3
            + [["Invalid ip address", True], ["Invalid port number", True]]
            + [["Remote not available", True]],
        )
        self.assertEqual(results["ids"], [[1, 1], [2, 1], [3, 1]])
        failure = results["failure"]
        self.assertEqual(
            {k: failure[k] for k in ("method_name", "reason", "value")},
            {"method_name": "Open", "reason": "call_failure", "value": {}},
        )
        self.assertIn("refused", failure["message"])

    async def test_suspend_resume_and_drain(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        page = await self.connected_app()
        await self.js(
            page,
            """async (port) => {
              window.socket = await manager.open({ host: "127.0.0.1", port });
              window.data = APP.handler(socket, socket.DATA_EVENT);
              window.drain = APP.handler(socket, socket.DRAIN_EVENT);
            }""",
            echo_port,
        )
        self.assertEqual(await self.js(page, "() => socket.suspend()"), {})
        remote = self.daemon_socket()
        self.assertEqual(remote._suspends, 1)
        echo.connections[0].transport.write(b"while suspended")
        for _ in range(3):  # round trips: nothing arrives while suspended
            await self.js(page, "() => APP.session.has_service('TcpSocketManager')")
        self.assertEqual(await self.js(page, "() => data.values.length"), 0)
        self.assertEqual(await self.js(page, "() => socket.resume()"), {})
        text = await self.js(page, "async () => new TextDecoder().decode(await data.next())")
        self.assertEqual(text, "while suspended")
        # A send over the high-water mark answers false; one DRAIN (true) follows.
        drained = await self.js(
            page,
            """async () => {
              const more = await socket.send(new Uint8Array(200 * 1024));
              return [more, await drain.next()];
            }""",
        )
        self.assertEqual(drained, [False, True])
        await wait_until(lambda: len(echo.received) == 200 * 1024)

    async def test_release(self) -> None:
        _echo, echo_port = await listen_remote(self, Echo)
        page = await self.connected_app()
        result = await self.js(
            page,
            """async (port) => {
              const socket = await manager.open({ host: "127.0.0.1", port });
              const first = await APP.settle(socket.release());
              const second = await APP.settle(socket.release());
              const service = await APP.settle(manager.release());
              const another = await APP.settle(manager.open({ host: "127.0.0.1", port }));
              return ["ok" in first && first.ok === undefined, second, service, another];
            }""",
            echo_port,
        )
        no_such_object = {"error": {"reason": "call_failure", "value": "No such object"}}
        self.assertIs(result[0], True)  # resolved with undefined
        self.assertEqual(result[1], no_such_object)
        self.assertEqual(result[2], no_such_object)  # the service object is kept
        self.assertIn("ok", result[3])

    async def test_garbage_collection_of_the_manager(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        page = await self.app_page()
        host = f"localhost:{self.port}"
        self.assertTrue(await self.js(page, "([h, t]) => APP.connect(h, t, false)", [host, TOKEN]))
        daemon_session = only(self.site.session_factory.sessions)
        # The app keeps only its socket; the manager is a local of a finished function.
        await self.js(
            page,
            """async (port) => {
              const manager = await API.TcpSocketManager.get(APP.session);
              window.socket = await manager.open({ host: "127.0.0.1", port });
              window.data = APP.handler(socket, socket.DATA_EVENT);
            }""",
            echo_port,
        )
        answer = await self.js(
            page,
            """async () => {
              // ReleaseObject(service 1, object 0): 00 00 00 <id> 03 02 01 00.
              const release = (f) => /^000000[0-9a-f]{2}03020100$/.test(f);
              for (let k = 0; k < 100; k++) {
                gc();
                await new Promise((resolve) => setTimeout(resolve, 20));
                const frame = window.__frames.find(release);
                if (frame === undefined) continue;
                const reply = "000001" + frame.slice(6, 8);
                for (let j = 0; j < 100; j++) {
                  const got = window.__received.find((f) => f.startsWith(reply));
                  if (got !== undefined) return got.slice(8);
                  await new Promise((resolve) => setTimeout(resolve, 20));
                }
                return "no reply";
              }
              return "the manager was not collected";
            }""",
        )
        self.assertEqual(answer, "020200")  # ReleaseObject answered false
        self.assertIn(1, daemon_session.services)
        # The socket still works.
        text = await self.js(
            page,
            """async () => {
              await socket.send(new TextEncoder().encode("after gc"));
              return new TextDecoder().decode(await data.next());
            }""",
        )
        self.assertEqual(text, "after gc")
        self.assertEqual(bytes(echo.received), b"after gc")

    async def test_1024_sockets_on_one_session(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 4096:
            wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        factory = RemoteFactory(Echo, b"")
        endpoint = TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1")
        listening = await endpoint.listen(factory)
        self.addCleanup(listening.stopListening)

        async def drop() -> None:
            for connection in list(factory.connections):
                connection.transport.abortConnection()  # type: ignore[union-attr]
            await wait_until(lambda: all(c.lost.called for c in factory.connections))

        self.addCleanup(drop)
        page = await self.connected_app()
        result = await self.js(
            page,
            """async (port) => {
              const sockets = [];
              for (let batch = 0; batch < 1024; batch += 64) {
                const opens = [];
                for (let k = 0; k < 64; k++) opens.push(manager.open({ host: "127.0.0.1", port }));
                sockets.push(...await Promise.all(opens));
              }
              window.sockets = sockets;
              const more = await APP.settle(manager.open({ host: "127.0.0.1", port }));
              const last = sockets[1023];
              const data = APP.handler(last, last.DATA_EVENT);
              await last.send(new TextEncoder().encode("number 1024"));
              return {
                ids: new Set(sockets.map((s) => s.id)).size,
                max: Math.max(...sockets.map((s) => s.id)),
                echo: new TextDecoder().decode(await data.next()),
                more: more.error,
              };
            }""",
            listening.getHost().port,
        )
        self.assertEqual(result["ids"], 1024)
        self.assertEqual(result["max"], 1024)
        self.assertEqual(result["echo"], "number 1024")
        self.assertEqual(result["more"]["value"], {})
        self.assertIn("too many sockets", result["more"]["message"])
        self.assertEqual(only(self.site.session_factory.sessions).sockets_in_use, 1024)

    async def test_lazy_reconnect_retries_until_the_daemon_is_back(self) -> None:
        _echo, echo_port = await listen_remote(self, Echo)
        listening = await self.restartable_daemon()
        number = listening.getHost().port
        page = await self.app_page()
        # The seed's pattern: get the manager in onsessionconnected, each time.
        await self.js(
            page,
            """([host, token]) => {
              window.managers = [];
              APP.connect(host, token, true, (session) => {
                API.TcpSocketManager.get(session).then((m) => managers.push(m));
              });
            }""",
            [f"localhost:{number}", TOKEN],
        )
        await self.wait_js(page, "() => managers.length === 1")
        await self.js(
            page,
            "async (port) => { window.old = await managers[0].open({ host: '127.0.0.1', port }); }",
            echo_port,
        )
        await self.daemon_goes_away(listening)
        await self.wait_js(page, "() => APP.disconnected === 1 && !APP.session.is_connected()")
        # More than one attempt fails while the daemon is away (the original stops at one).
        await self.wait_js(page, "() => APP.connErrors >= 2")
        stale = await self.js(page, "() => APP.settle(old.send(new Uint8Array([1])))")
        self.assertEqual(stale["error"]["reason"], "session_closed")

        await self.restartable_daemon(number)
        await self.wait_js(page, "() => APP.connected === 2 && managers.length === 2")
        text = await self.js(
            page,
            """async (port) => {
              const socket = await managers[1].open({ host: "127.0.0.1", port });
              const data = APP.handler(socket, socket.DATA_EVENT);
              await socket.send(new TextEncoder().encode("back again"));
              return new TextDecoder().decode(await data.next());
            }""",
            echo_port,
        )
        self.assertEqual(text, "back again")


class WebpackEraApp(AppScenarios, BrowserTestCase):
    """Classic scripts defining ExternalAPI, lib_session and lib_tcpsocket."""

    def api_loader(self) -> str:
        base = f"http://127.0.0.1:{self.port}/api/v1"
        tags = "".join(
            f'<script src="{base}/{path}"></script>\n'
            for path in ("shared/core.js", "shared/session.js", "tcpsocket/service.js")
        )
        return (
            tags
            + "<script>\n"
            + "if (typeof ExternalAPI.core.BaseMessage !== 'function') throw new Error('core');\n"
            + "window.API = { Session: lib_session.Session,"
            + " TcpSocketManager: lib_tcpsocket.TcpSocketManager };\n"
            + "</script>\n"
        )


class CurrentGenerationApp(AppScenarios, BrowserTestCase):
    """ES-module imports of the same URLs, from another origin."""

    def api_loader(self) -> str:
        base = f"http://127.0.0.1:{self.port}/api/v1"
        return f"""<script type="module">
import {{ Session }} from "{base}/shared/session.js";
import {{ TcpSocketManager }} from "{base}/tcpsocket/service.js";
import {{ core }} from "{base}/shared/core.js";
if ("lib_session" in window || "ExternalAPI" in window) throw new Error("a global");
if (typeof core.BaseMessage !== "function") throw new Error("core");
window.API = {{ Session, TcpSocketManager }};
</script>
"""


class BothFormsTests(BrowserTestCase):
    async def test_one_page_loads_both_forms_of_the_same_urls_twice(self) -> None:
        """Classic tags and imports of the same URLs in one page, then a reload (HTTP cache)."""
        base = f"http://127.0.0.1:{self.port}/api/v1"
        body = (
            self.script_tags()
            + f"""<script type="module">
import {{ Session }} from "{base}/shared/session.js";
import {{ TcpSocketManager }} from "{base}/apps/service.js";
window.forms = [
  typeof lib_session.Session, typeof lib_tcpsocket.TcpSocketManager.get,
  typeof Session, Object.keys(TcpSocketManager), Session === lib_session.Session,
];
</script>
"""
        )
        page = await self.new_page(self.page_url("both.html", body))
        expected = ["function", "function", "function", ["get"], False]
        self.assertEqual(await self.wait_js(page, "() => window.forms"), expected)
        await HOST.run(page.reload)
        self.assertEqual(await self.wait_js(page, "() => window.forms"), expected)
