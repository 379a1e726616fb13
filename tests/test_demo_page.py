"""The demo page (``/``) and README's page example in Chromium, with screenshots.

Screenshots go to each test's temporary directory (``self.shots``); the assertions are on the
DOM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory

from tcpsocket.policy import AllowList
from tests.support import (
    TOKEN,
    Echo,
    LineEcho,
    RemoteFactory,
    SendAndClose,
    listen_remote,
    temp_dir,
    to_loopback,
)
from tests.test_browser import HOST, OUTPUT_HAS, BrowserTestCase
from tests.test_doc_examples import EXAMPLES, FakeImap

STATE = "(state) => document.querySelector('#status').dataset.state === state"
STATUS_HAS = "(text) => document.querySelector('#status').textContent.includes(text)"


async def listen_factory(test: Any, factory: Any) -> int:
    """Listen on loopback with ``factory`` until cleanup; the port number."""
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    test.addCleanup(listening.stopListening)
    return int(listening.getHost().port)


class DemoPageTests(BrowserTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.shots: Path = temp_dir(self)

    async def demo(self, query: str = "") -> Any:
        return await self.new_page(f"{self.daemon}/{query}")

    def connect(self, page: Any, port: int, token: str = TOKEN, host: str = "127.0.0.1") -> None:
        """Fill the form and connect (browser thread)."""
        page.fill("#host", host)
        page.fill("#port", str(port))
        page.fill("#token", token)
        page.click("#connect")

    async def text(self, page: Any, selector: str) -> str:
        return str(await self.js(page, f"() => document.querySelector('{selector}').textContent"))

    async def test_transcript_reconnect_clear(self) -> None:
        _, port = await listen_remote(self, LineEcho)  # type: ignore[arg-type]
        page = await self.demo()

        def drive() -> None:
            self.connect(page, port)
            page.wait_for_function(STATE, arg="connected")
            page.fill("#line", "hello from the demo")
            page.press("#line", "Enter")
            page.wait_for_function(OUTPUT_HAS, arg="HELLO FROM THE DEMO\r\n")
            page.fill("#line", "second")
            page.click("#send")
            page.wait_for_function(OUTPUT_HAS, arg="SECOND\r\n")
            page.screenshot(path=str(self.shots / "transcript.png"))
            page.click("#close")
            page.wait_for_function(OUTPUT_HAS, arg="[connection closed]")
            page.wait_for_selector("#reconnect:not([disabled])")
            page.click("#reconnect")
            page.wait_for_function(STATE, arg="connected")

        await HOST.run(drive)
        sent = await self.js(
            page, "() => [...document.querySelectorAll('#output .sent')].map((e) => e.textContent)"
        )
        self.assertEqual(sent, ["hello from the demo\r\n", "second\r\n"])
        self.assertTrue((self.shots / "transcript.png").stat().st_size > 0)
        status = await self.text(page, "#status")
        self.assertEqual(status, f"connected to 127.0.0.1:{port}")
        await HOST.run(page.click, "#clear")
        self.assertEqual(await self.text(page, "#output"), "")

    async def test_human_errors(self) -> None:
        page = await self.demo()
        _, closed_port = await listen_remote(self, Echo)
        await self.stop_remote_listening(closed_port)

        async def attempt(port: int, token: str, expected: str, host: str = "127.0.0.1") -> None:
            await HOST.run(self.connect, page, port, token, host)
            await self.wait_js(page, STATUS_HAS, expected)
            state = await self.js(page, "() => document.querySelector('#status').dataset.state")
            self.assertEqual(state, "error")
            classes = await self.js(
                page, "() => document.querySelector('#output').lastChild.className"
            )
            self.assertEqual(classes, "error")

        await attempt(closed_port, "wrong", "the daemon refused the token")
        await attempt(closed_port, TOKEN, f"127.0.0.1:{closed_port} refused the connection")
        await HOST.run(page.screenshot, path=str(self.shots / "refused.png"))
        await attempt(closed_port, TOKEN, "not a valid host or port", host="bad host!")

    async def stop_remote_listening(self, port: int) -> None:
        """Nothing listens on ``port`` any more (the remote of listen_remote is stopped)."""
        for reader in list(reactor.getReaders()):  # type: ignore[attr-defined]
            host = getattr(reader, "getHost", None)
            if host is not None and getattr(host(), "port", None) == port:
                await reader.stopListening()

    async def test_policy_denial_and_daemon_down(self) -> None:
        site, port = await self.start_daemon(policy=AllowList(["mail.example.org:993"]))
        self.site = site
        page = await self.new_page(f"http://127.0.0.1:{port}/")
        await HOST.run(self.connect, page, 25)
        await self.wait_js(page, STATUS_HAS, "the daemon's policy does not allow 127.0.0.1:25")
        # The daemon goes away: the next connect cannot reach it.
        for session in list(site.session_factory.sessions):
            session.dropConnection(abort=True)
        for reader in list(reactor.getReaders()):  # type: ignore[attr-defined]
            if getattr(reader, "factory", None) is site:
                await reader.stopListening()
        await self.wait_js(page, STATE, "error")
        await HOST.run(page.click, "#connect")
        await self.wait_js(page, STATUS_HAS, "cannot reach the tcpsocket daemon")
        await HOST.run(page.screenshot, path=str(self.shots / "down.png"))

    async def test_token_never_in_a_url(self) -> None:
        _, port = await listen_remote(self, Echo)
        page = await self.demo(f"?token={TOKEN}&host=127.0.0.1&port={port}")
        self.assertEqual(await self.js(page, "() => document.querySelector('#token').value"), "")
        self.assertEqual(
            await self.js(page, "() => location.search"), f"?host=127.0.0.1&port={port}"
        )

        def drive() -> None:
            page.fill("#token", TOKEN)
            page.check("#remember")
            page.click("#connect")
            page.wait_for_function(STATE, arg="connected")

        await HOST.run(drive)
        urls = await self.js(
            page,
            "() => [location.href, ...performance.getEntriesByType('resource').map((e) => e.name)]",
        )
        # The address the test opened had the token; the page took it out, and fetched
        # nothing with it.
        self.assertEqual(len(urls), 6, urls)
        self.assertFalse([url for url in urls if TOKEN in url], urls)
        # Remembered in this tab only: a reload fills it in again.
        await HOST.run(page.reload)
        self.assertEqual(await self.js(page, "() => document.querySelector('#token').value"), TOKEN)
        await HOST.run(page.uncheck, "#remember")
        stored = await self.js(page, "() => sessionStorage.length")
        self.assertEqual(stored, 0)

    async def test_output_is_bounded_and_hex_view(self) -> None:
        big = RemoteFactory(SendAndClose, payload=b"x" * (600 * 1024))
        port = await listen_factory(self, big)
        page = await self.demo()
        limit = await self.js(page, "() => window.tcpsocketDemo.OUTPUT_LIMIT")

        def drive() -> None:
            self.connect(page, port)
            page.wait_for_function(OUTPUT_HAS, arg="[connection closed]")

        await HOST.run(drive)
        length = await self.js(page, "() => document.querySelector('#output').textContent.length")
        self.assertLessEqual(length, limit)
        self.assertGreater(length, limit - 100)
        self.assertIn("older output dropped", await self.text(page, "#kept"))

        binary = RemoteFactory(SendAndClose, payload=b"\x00\x01AB\xff")
        port = await listen_factory(self, binary)
        await HOST.run(page.click, "#clear")
        await HOST.run(page.check, "#hex")
        await HOST.run(self.connect, page, port)
        await self.wait_js(page, OUTPUT_HAS, "00 01 41 42 ff")
        self.assertIn("..AB.", await self.text(page, "#output"))
        await HOST.run(page.screenshot, path=str(self.shots / "hex.png"))


class ReadmePageTests(BrowserTestCase):
    async def test_readme_page(self) -> None:
        """README's page (doc/examples/readme_page.html), pointed at this test's daemon."""
        imap_port = await listen_factory(self, Factory.forProtocol(FakeImap))
        site, port = await self.start_daemon(**to_loopback({("imap.example.org", 143): imap_port}))
        self.site = site
        html = (EXAMPLES / "readme_page.html").read_text()
        self.assertEqual(html.count("127.0.0.1:8081"), 3)
        self.app.pages[b"readme.html"] = html.replace(
            "127.0.0.1:8081", f"127.0.0.1:{port}"
        ).encode()
        page = await self.new_page(f"http://127.0.0.1:{self.app_port}/readme.html")
        logs = self.logs

        def replied() -> None:
            # Playwright hands over console messages while the browser thread waits on it.
            while not any("a1 OK" in line for line in logs):
                page.wait_for_event("console", timeout=30_000)

        await HOST.run(replied)
        text = "\n".join(logs)
        self.assertIn("* OK IMAP4rev1 ready", text)
        self.assertIn("a1 OK CAPABILITY completed", text)


class DemoTLSTests(BrowserTestCase):
    """The TLS checkbox: the daemon opens the socket with TLS and verifies the certificate."""

    async def start_daemon(self, **overrides: Any) -> tuple[Any, int]:
        from tcpsocket.policy import DestinationPolicy
        from tests.test_secure_sockets import CA
        from tests.tls_support import TLS_NAMES, TLS_RULES

        return await super().start_daemon(
            tls_ca_file=CA.write(self),
            resolver=TLS_NAMES,
            policy=DestinationPolicy(TLS_RULES),
            **overrides,
        )

    async def test_tls_checkbox(self) -> None:
        from tests.test_secure_sockets import CA
        from tests.tls_support import listen_tls

        port = await listen_tls(self, CA.issue("imap.test").server_options(), LineEcho)
        page = await self.new_page(f"{self.daemon}/")

        def drive() -> None:
            page.fill("#host", "imap.test")
            page.fill("#port", str(port))
            page.check("#tls")
            page.fill("#token", TOKEN)
            page.click("#connect")
            page.wait_for_function(STATE, arg="connected")
            page.fill("#line", "over tls")
            page.press("#line", "Enter")
            page.wait_for_function(OUTPUT_HAS, arg="OVER TLS\r\n")

        await HOST.run(drive)
        status = await self.js(page, "() => document.querySelector('#status').textContent")
        self.assertEqual(status, f"connected to imap.test:{port} (TLS)")
        output = await self.js(page, "() => document.querySelector('#output').textContent")
        self.assertIn("certificate CN=imap.test", output)
