"""Attacks on the HTTP front door, each against a real daemon on loopback.

Host checks (DNS rebinding), request bodies (413 before a byte is stored),
slowloris (absolute header deadline), idle HTTP connection caps, and the
headers of served pages.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests.security_helpers import (
    LogCapture,
    http_exchange,
    raw_tcp,
    status,
    upgrade_request,
)
from tests.session_helpers import session
from tests.support import start_daemon, wait_until


def get(path: bytes, host: bytes | None) -> bytes:
    head = b"GET " + path + b" HTTP/1.1\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    return head + b"Connection: close\r\n\r\n"


class HostTests(TestCase):
    async def test_rebinding_name_gets_421_everywhere(self) -> None:
        _, port = await start_daemon(self)
        logs = LogCapture(self)
        for path in (b"/", b"/api/v1/shared/core.js", b"/demo.js"):
            response = await http_exchange(self, port, get(path, b"rebind.attacker.example:8081"))
            self.assertEqual(status(response), 421, response)
        response = await http_exchange(self, port, upgrade_request(host=b"rebind.attacker.example"))
        self.assertEqual(status(response), 421, response)
        self.assertTrue(logs.matching("Host rebind.attacker.example"))

    async def test_head_gets_421_without_a_body(self) -> None:
        _, port = await start_daemon(self)
        logs = LogCapture(self)
        response = await http_exchange(
            self, port, b"HEAD / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(status(response), 421)
        self.assertFalse(logs.matching("is returning a message body"))

    async def test_missing_host_refused(self) -> None:
        _, port = await start_daemon(self)
        response = await http_exchange(self, port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(status(response), 421, response)

    async def test_local_names_served(self) -> None:
        _, port = await start_daemon(self)
        for host in (b"localhost", b"127.0.0.1", f"127.0.0.1:{port}".encode(), b"[::1]:80"):
            response = await http_exchange(self, port, get(b"/", host))
            self.assertEqual(status(response), 200, (host, response[:200]))
        response = await http_exchange(self, port, upgrade_request(host=b"localhost"))
        self.assertEqual(status(response), 101, response)

    async def test_server_name(self) -> None:
        _, port = await start_daemon(self, server_names=frozenset({"Daemon.Example"}))
        response = await http_exchange(self, port, get(b"/", b"daemon.example:8443"))
        self.assertEqual(status(response), 200, response[:200])
        response = await http_exchange(self, port, get(b"/", b"other.example"))
        self.assertEqual(status(response), 421)
        _, any_port = await start_daemon(self, server_names=frozenset({"*"}))
        response = await http_exchange(self, any_port, get(b"/", b"other.example"))
        self.assertEqual(status(response), 200)


class BodyTests(TestCase):
    async def test_one_gib_post_refused_before_the_body(self) -> None:
        site, port = await start_daemon(self)
        client = await raw_tcp(self, port)
        client.write(b"POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1073741824\r\n\r\n")
        # Not one byte of the body is sent: the answer comes from the header alone.
        await wait_until(lambda: client.closed)
        self.assertEqual(status(bytes(client.received)), 413, client.received)
        self.assertEqual(len(site.admission), 0)

    async def test_chunked_body_refused(self) -> None:
        _, port = await start_daemon(self)
        client = await raw_tcp(self, port)
        client.write(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"10\r\n0123456789abcdef\r\n"
        )
        await wait_until(lambda: client.closed)
        self.assertEqual(status(bytes(client.received)), 413, client.received)

    async def test_empty_body_allowed(self) -> None:
        _, port = await start_daemon(self)
        response = await http_exchange(
            self, port, b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(status(response), 200, response[:200])


class SlowlorisTests(TestCase):
    async def test_one_byte_at_a_time_is_cut_at_the_deadline(self) -> None:
        _, port = await start_daemon(self, handshake_timeout=1.0)
        client = await raw_tcp(self, port)
        header = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
        sent = 0
        # Each byte resets Twisted's idle timeout; only an absolute deadline cuts this.
        while not client.closed and sent < len(header):
            client.write(header[sent : sent + 1])
            sent += 1
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.25, d.callback, None)  # type: ignore[attr-defined]
            await d
        self.assertTrue(client.closed, "still connected after the whole header")
        self.assertLess(sent, len(header))
        self.assertEqual(bytes(client.received), b"", "dropped, not answered")

    async def test_keep_alive_connection_gets_a_new_deadline_per_request(self) -> None:
        _, port = await start_daemon(self, handshake_timeout=1.0)
        client = await raw_tcp(self, port)
        client.write(get(b"/", b"localhost").replace(b"Connection: close\r\n", b""))
        await wait_until(lambda: b"</html>" in client.received)
        # Then idle: the next request's deadline closes it.
        await wait_until(lambda: client.closed, timeout=10)


class IdleCapTests(TestCase):
    async def test_idle_connections_capped_per_address_oldest_dropped(self) -> None:
        site, port = await start_daemon(self, max_pending_per_address=5, max_pending=20)
        idle = [await raw_tcp(self, port) for _ in range(8)]
        await wait_until(lambda: sum(c.closed for c in idle) == 3)
        self.assertEqual([c.closed for c in idle], [True] * 3 + [False] * 5)
        self.assertEqual(len(site.admission), 5)
        # A client that speaks still gets its answer.
        response = await http_exchange(self, port, get(b"/", b"localhost"))
        self.assertEqual(status(response), 200)

    async def test_idle_connections_capped_in_total(self) -> None:
        site, port = await start_daemon(self, max_pending_per_address=50, max_pending=4)
        a = [await raw_tcp(self, port, bind="127.0.0.2") for _ in range(3)]
        b = [await raw_tcp(self, port, bind="127.0.0.3") for _ in range(3)]
        await wait_until(lambda: len(site.admission) == 4 and sum(c.closed for c in a) == 2)
        self.assertFalse(any(c.closed for c in b))

    async def test_failed_upgrade_leaves_the_pending_count(self) -> None:
        site, port = await start_daemon(self)
        bad = upgrade_request().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 99")
        response = await http_exchange(self, port, bad)
        self.assertEqual(status(response), 400, response)
        await wait_until(lambda: len(site.admission) == 0)

    async def test_session_leaves_the_pending_count(self) -> None:
        site, port = await start_daemon(self)
        client = await session(self, port)
        self.assertEqual(len(site.admission), 0)
        await client.settle()


class HeaderTests(TestCase):
    async def test_served_pages_send_no_referrer(self) -> None:
        _, port = await start_daemon(self)
        for path in (b"/", b"/api/v1/shared/core.js"):
            response = await http_exchange(self, port, get(path, b"localhost"))
            self.assertIn(b"referrer-policy: no-referrer", response.lower(), path)
