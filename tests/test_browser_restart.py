"""A graceful daemon restart (stopService, close 1001) under a Chromium page with lazy reconnect.

``tests/test_browser.py`` restarts the daemon by dropping its connections;
here the daemon stops as on SIGTERM: the page is told 1001, and what it had
sent through a socket still reaches the remote before the daemon is gone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, tcp

from tcpsocket.site import TcpSocketService
from tests.session_helpers import free_port
from tests.support import Echo, listen_remote, wait_until
from tests.test_browser import BrowserTestCase, daemon_config, track_connections


class GracefulRestartTests(BrowserTestCase):
    async def start_service(self, number: int) -> TcpSocketService:
        service = TcpSocketService(daemon_config(), [f"tcp:{number}:interface=127.0.0.1"], reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await wait_until(lambda: _listening_port(number) is not None)
        # The browser's idle keep-alive connections outlive its pages: drop them at cleanup.
        track_connections(self, _listening_port(number))
        return service

    async def test_graceful_stop_and_restart_under_lazy_reconnect(self) -> None:
        echo, echo_port = await listen_remote(self, Echo)
        number = free_port()
        first = await self.start_service(number)
        self.site = first.site
        page = await self.harness_page(daemon_port=number)
        await self.js(page, "() => { T.open('localhost', 'change-this-secret-token', true); }")
        await self.wait_js(page, "() => T.connected === 1")
        self.assertEqual(await self.js(page, "() => T.getManager()"), {"ok": 1})
        index = await self.open_socket(page, echo_port, [1])
        await self.js(page, "(i) => T.call(i, 'send', 'before the stop')", index)
        await self.wait_js(page, "(i) => T.text(i) === 'before the stop'", index)

        await first.stopService()
        self.assertEqual(bytes(echo.received), b"before the stop")
        await wait_until(lambda: not echo.connections)  # the daemon closed its socket
        await self.wait_js(page, "() => T.disconnected === 1 && !T.session.connected")

        second = await self.start_service(number)
        self.site = second.site
        await self.wait_js(page, "() => T.connected === 2 && T.session.connected")
        self.assertEqual(
            await self.js(page, "(i) => T.call(i, 'send', 'x')", index),
            # A socket of the connection before the restart is refused at once.
            {"error": {"reason": "session_closed", "value": "an object of an earlier connection"}},
        )
        self.assertEqual(await self.js(page, "() => T.getManager()"), {"ok": 1})
        index2 = await self.open_socket(page, echo_port, [1])
        await self.js(page, "(i) => T.call(i, 'send', 'back again')", index2)
        await self.wait_js(page, "(i) => T.text(i) === 'back again'", index2)


def _listening_port(number: int) -> Any:
    """The reactor's listening TCP port on ``number``, if there is one."""
    for selectable in reactor.getReaders():  # type: ignore[attr-defined]
        if isinstance(selectable, tcp.Port) and selectable.getHost().port == number:
            return selectable
    return None
