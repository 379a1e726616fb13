"""doc/javascript.md's examples (doc/examples/js_*) in Chromium against the real daemon.

The app origin of the test serves each example as printed, with one change: the daemon's
address ``127.0.0.1:8081`` becomes this test's daemon. The daemon sends ``imap.example.org``
to a loopback IMAP-like server (:func:`tests.support.to_loopback`), so nothing leaves the
machine and no name is looked up in the DNS.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.site import build_site
from tests.support import temp_dir, to_loopback, wait_until
from tests.support import test_config as daemon_config
from tests.test_browser import HOST, OUTPUT_HAS, BrowserTestCase, track_connections
from tests.test_demo_page import listen_factory
from tests.test_doc_examples import EXAMPLES, ROOT, FakeImap, code_blocks

DAEMON = "127.0.0.1:8081"
#: The globals a page defines beyond those of an empty page of the same origin.
ADDED_GLOBALS = "(base) => Object.getOwnPropertyNames(window).filter((n) => !base.includes(n))"


class JavaScriptExamplesTests(BrowserTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.imap = Factory.forProtocol(FakeImap)
        imap_port = await listen_factory(self, self.imap)
        config = daemon_config(**to_loopback({("imap.example.org", 143): imap_port}))
        self.site = build_site(config)
        self.listening = await self.listen_daemon(0)
        self.port = self.listening.getHost().port
        self.daemon = f"http://127.0.0.1:{self.port}"
        self.app, self.app_port = await self.start_app()

    async def listen_daemon(self, port: int) -> Any:
        """The daemon listens on ``port`` (0: any) until it stops or the test ends."""
        endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        listening = await endpoint.listen(self.site)
        self.addCleanup(lambda: listening.stopListening() if listening.connected else None)
        track_connections(self, listening)
        return listening

    def served(self, name: str, uses: int) -> str:
        """Example ``name``, talking to this test's daemon (``uses`` mentions of its address)."""
        text = (EXAMPLES / name).read_text(encoding="utf-8")
        self.assertEqual(text.count(DAEMON), uses, name)
        return text.replace(DAEMON, f"127.0.0.1:{self.port}")

    async def open_example(self, name: str, uses: int = 3) -> Any:
        """A page of the app origin: the HTML example ``name``, or the script example ``name``
        after the three classic scripts."""
        if name.endswith(".js"):
            body = self.script_tags() + f"<script>\n{self.served(name, 0)}</script>\n"
            return await self.new_page(self.page_url(name + ".html", body))
        self.app.pages[name.encode()] = self.served(name, uses).encode()
        return await self.new_page(f"http://127.0.0.1:{self.app_port}/{name}")

    async def console(self, page: Any, text: str, times: int = 1) -> list[str]:
        """Wait until ``times`` console messages contain ``text``; all messages so far."""
        logs = self.logs

        def seen() -> int:
            return sum(text in line for line in logs)

        def wait() -> None:
            # Playwright hands over console messages while the browser thread waits on it.
            while seen() < times:
                page.wait_for_event("console", timeout=30_000)

        try:
            await HOST.run(wait)
        except Exception:
            self.fail(f"no console message {text!r} (x{times}):\n" + "\n".join(logs[-30:]))
        return list(logs)

    async def empty_page_globals(self) -> list[str]:
        """The window properties of an empty page of the app origin (open it first: a page
        closes before those opened earlier, and only then are its sessions gone)."""
        empty = await self.new_page(self.page_url("empty.html", ""))
        return list(await self.js(empty, "() => Object.getOwnPropertyNames(window)"))

    async def test_classic_scripts(self) -> None:
        base = await self.empty_page_globals()
        page = await self.open_example("js_classic_scripts.html")
        await self.console(page, "console.log: TcpSocketManager ready (service 1)")
        added = sorted(await self.js(page, ADDED_GLOBALS, base))
        self.assertEqual(added, ["ExternalAPI", "lib_session", "lib_tcpsocket"])
        self.assertEqual(len(self.site.session_factory.sessions), 1)

    async def test_module_import(self) -> None:
        base = await self.empty_page_globals()
        page = await self.open_example("js_module_import.html", uses=2)
        await self.console(page, "console.log: TcpSocketManager ready (service 1)")
        self.assertEqual(await self.js(page, ADDED_GLOBALS, base), [])

    async def test_session_callbacks_across_a_lost_connection(self) -> None:
        page = await self.open_example("js_session.js")
        await self.console(page, "console.log: connected: true")
        self.assertIn('console.log: open: {"success":true,"cause":"success"}', self.logs)

        # The daemon goes away: it stops listening and drops the session's connection.
        await self.listening.stopListening()
        for session in list(self.site.session_factory.sessions):
            session.transport.abortConnection()
        await self.console(page, "console.log: disconnected (code 1006); a new session follows")
        await self.console(page, "console.log: connection error: connection_failed")

        # It comes back on the same port; the session reconnects by itself.
        self.listening = await self.listen_daemon(self.port)
        logs = await self.console(page, "console.log: connected: true", times=2)
        await wait_until(lambda: len(self.site.session_factory.sessions) == 1)
        self.assertEqual(sum("open:" in line for line in logs), 1)
        self.assertFalse([line for line in logs if line.startswith("pageerror")], logs)

    async def test_events(self) -> None:
        page = await self.open_example("js_events.js")
        logs = await self.console(page, "console.log: closed after:")
        self.assertIn(
            "console.log: closed after:\n"
            "* OK IMAP4rev1 ready\r\n"
            "* CAPABILITY IMAP4rev1 IDLE\r\n"
            "a1 OK CAPABILITY completed\r\n",
            logs,
        )
        failed = ("pageerror", "console.log: error")  # a page error, or the example's ERROR
        self.assertFalse([line for line in logs if line.startswith(failed)], logs)

    async def run_example_page(self, name: str, uses: int) -> None:
        page = await self.open_example(name, uses)

        def drive() -> None:
            page.wait_for_function(OUTPUT_HAS, arg="[session ready]")
            page.click("#connect")  # imap.example.org, port 143: the fields' initial values
            page.wait_for_function(OUTPUT_HAS, arg="* OK IMAP4rev1 ready\r\n")
            page.wait_for_selector("#send:not([disabled])")
            page.fill("#line", "x7 CAPABILITY")
            page.click("#send")
            page.wait_for_function(OUTPUT_HAS, arg="x7 OK CAPABILITY completed\r\n")
            page.click("#close")
            page.wait_for_function(OUTPUT_HAS, arg="[closed]")

        try:
            await HOST.run(drive)
        except Exception:
            self.fail("the example page did not work:\n" + "\n".join(self.logs[-30:]))
        output = await self.js(page, "() => document.querySelector('#output').textContent")
        self.assertEqual(
            output,
            "[session ready]\n"
            "* OK IMAP4rev1 ready\r\n"
            "* CAPABILITY IMAP4rev1 IDLE\r\n"
            "x7 OK CAPABILITY completed\r\n"
            "[closed]\n",
        )
        self.assertTrue(await self.js(page, "() => document.querySelector('#line').disabled"))

    async def test_example_page(self) -> None:
        await self.run_example_page("js_example_page.html", uses=3)

    async def test_example_page_with_modules(self) -> None:
        await self.run_example_page("js_example_page_module.html", uses=2)


class ModuleDiffTests(SynchronousTestCase):
    def test_the_diff_turns_the_classic_page_into_the_module_page(self) -> None:
        diff = (EXAMPLES / "js_example_page_module.diff").read_text(encoding="utf-8")
        self.assertIn(("diff", diff), code_blocks(ROOT / "doc" / "javascript.md"))
        work = temp_dir(self)
        shutil.copy(EXAMPLES / "js_example_page.html", work / "js_example_page.html")
        subprocess.run(
            ["patch", "--quiet", "--output=patched.html", "js_example_page.html"],
            input=diff.encode(),
            cwd=work,
            check=True,
        )
        self.assertEqual(
            (work / "patched.html").read_text(encoding="utf-8"),
            (EXAMPLES / "js_example_page_module.html").read_text(encoding="utf-8"),
        )
