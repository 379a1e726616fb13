"""``/metrics`` and ``/healthz`` of a real daemon after real traffic, who may read them, HEAD."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from tcpsocket.client import DATA_EVENT, Session, SessionRefused, TcpSocketError, TcpSocketManager
from tcpsocket.observability import Access
from tcpsocket.site import TcpSocketService
from tests.support import (
    TOKEN,
    Echo,
    listen_remote,
    raw_client,
    start_daemon,
    temp_dir,
    test_config,
    wait_until,
)
from tests.test_web import read_body


async def fetch(
    url: str, method: bytes = b"GET", headers: dict[bytes, list[bytes]] | None = None
) -> tuple[int, Headers, bytes]:
    agent = Agent(reactor)
    response = await agent.request(method, url.encode(), Headers(headers or {}))
    body = await read_body(response)
    return response.code, response.headers, body


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


class MetricsTests(TestCase):
    async def scrape(self, port: int) -> dict[Any, float]:
        code, headers, body = await fetch(f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(code, 200)
        self.assertIn("text/plain", headers.getRawHeaders("content-type")[0])
        return samples(body)

    async def test_counts_after_real_traffic(self) -> None:
        site, port = await start_daemon(self)
        _, echo_port = await listen_remote(self, Echo)
        _, closed_port = await listen_remote(self, Echo)
        url = f"ws://127.0.0.1:{port}/ws"

        with self.assertRaises(SessionRefused):
            await Session.connect(url, "wrong-token")
        session = await Session.connect(url, TOKEN)
        self.addCleanup(lambda: session.close() if session.is_open else None)
        manager = await TcpSocketManager.get(session)
        received = bytearray()
        socket = await manager.open(host="127.0.0.1", port=echo_port)
        socket.add_event_listener(DATA_EVENT, lambda data: received.extend(data))
        await socket.send(b"hello")
        await wait_until(lambda: bytes(received) == b"hello")
        with self.assertRaises(TcpSocketError):
            await manager.open(host="no such host!", port=1)

        scraped = await self.scrape(port)
        self.assertEqual(value(scraped, "tcpsocket_sessions_total"), 1)
        self.assertEqual(value(scraped, "tcpsocket_sessions_open"), 1)
        self.assertEqual(
            value(scraped, "tcpsocket_sessions_refused_total", reason="invalid-token"), 1
        )
        self.assertEqual(value(scraped, "tcpsocket_sessions_refused_total", reason="capacity"), 0)
        self.assertEqual(
            value(scraped, "tcpsocket_handshake_failures_total", reason="invalid-token"), 1
        )
        self.assertEqual(value(scraped, "tcpsocket_sockets_opened_total"), 1)
        self.assertEqual(value(scraped, "tcpsocket_sockets_open"), 1)
        self.assertEqual(value(scraped, "tcpsocket_sockets_connecting"), 0)
        self.assertEqual(value(scraped, "tcpsocket_sockets_failed_total", reason="invalid"), 1)
        self.assertEqual(value(scraped, "tcpsocket_bytes_total", direction="to_remote"), 5)
        self.assertEqual(value(scraped, "tcpsocket_bytes_total", direction="from_remote"), 5)

        # Held bytes: a socket without a DATA listener; the remote's reply waits in the daemon.
        quiet = await manager.open(host="127.0.0.1", port=echo_port)
        await quiet.send(b"held back")
        await wait_until(lambda: _held(site) == 9)
        scraped = await self.scrape(port)
        self.assertEqual(value(scraped, "tcpsocket_held_bytes"), 9)
        self.assertEqual(value(scraped, "tcpsocket_queued_bytes"), 0)
        self.assertEqual(value(scraped, "tcpsocket_sockets_open"), 2)
        await quiet.close()
        await socket.send(b"more")
        await wait_until(lambda: len(received) == 9)

        # A refused connection, then the socket closes: its bytes stay counted.
        await closed_port_refuses(self, manager, closed_port)
        await socket.close()
        await wait_until(lambda: not site.session_factory.config.metrics.live_sockets())
        scraped = await self.scrape(port)
        self.assertEqual(value(scraped, "tcpsocket_sockets_failed_total", reason="refused"), 1)
        self.assertEqual(value(scraped, "tcpsocket_sockets_open"), 0)
        self.assertEqual(value(scraped, "tcpsocket_bytes_total", direction="to_remote"), 18)
        self.assertEqual(value(scraped, "tcpsocket_bytes_total", direction="from_remote"), 18)
        await session.close()

    async def test_capacity_and_timeout_refusals(self) -> None:
        site, port = await start_daemon(self, max_sessions=1, handshake_timeout=0.2)
        url = f"ws://127.0.0.1:{port}/ws"
        session = await Session.connect(url, TOKEN)
        with self.assertRaises(Exception):  # noqa: B017 - the HTTP 503 of the upgrade
            await Session.connect(url, TOKEN)
        await session.close()
        await wait_until(lambda: not site.session_factory.sessions)
        silent = await raw_client(self, port)  # sends no token: times out
        self.assertEqual((await silent.closed)[0], 1008)
        garbled = await raw_client(self, port)
        garbled.send(b"\xff")  # not a SessionHandshake
        self.assertEqual((await garbled.closed)[0], 1002)
        scraped = await self.scrape(port)
        self.assertEqual(value(scraped, "tcpsocket_sessions_refused_total", reason="capacity"), 1)
        for reason in ("timeout", "malformed"):
            self.assertEqual(value(scraped, "tcpsocket_sessions_refused_total", reason=reason), 1)
            self.assertEqual(value(scraped, "tcpsocket_handshake_failures_total", reason=reason), 1)
        self.assertEqual(value(scraped, "tcpsocket_sessions_total"), 1)

    async def test_daemons_keep_apart(self) -> None:
        _, first = await start_daemon(self)
        _, second = await start_daemon(self)
        session = await Session.connect(f"ws://127.0.0.1:{first}/ws", TOKEN)
        await session.close()
        self.assertEqual(value(await self.scrape(first), "tcpsocket_sessions_total"), 1)
        self.assertEqual(value(await self.scrape(second), "tcpsocket_sessions_total"), 0)

    async def test_healthz_and_head(self) -> None:
        _, port = await start_daemon(self)
        code, _, body = await fetch(f"http://127.0.0.1:{port}/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            text = str(event.get("log_format") or "")
            if "HEAD request" in text:
                warnings.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for path in ("/", "/demo.js", "/nothing-here", "/metrics", "/healthz"):
            code, headers, body = await fetch(f"http://127.0.0.1:{port}{path}", b"HEAD")
            self.assertEqual(body, b"", path)
            self.assertGreater(int(headers.getRawHeaders("content-length")[0]), 0, path)
        self.assertEqual(warnings, [])


async def closed_port_refuses(test: TestCase, manager: TcpSocketManager, port: int) -> None:
    """Open a port nothing listens on any more."""
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory

    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
    free = listening.getHost().port
    await listening.stopListening()
    with test.assertRaises(TcpSocketError):
        await manager.open(host="127.0.0.1", port=free)


def _held(site: Any) -> int:
    return sum(s.held_downstream for s in site.session_factory.config.metrics.live_sockets())


class AccessTests(SynchronousTestCase):
    def request(self, address: Any, authorization: bytes | None = None) -> DummyRequest:
        request = DummyRequest([b""])
        request.client = address
        if authorization is not None:
            request.requestHeaders.addRawHeader(b"authorization", authorization)
        return request

    def test_loopback_only_by_default(self) -> None:
        access = Access()
        self.assertTrue(access.allows(self.request(IPv4Address("TCP", "127.0.0.1", 1))))
        self.assertTrue(access.allows(self.request(IPv4Address("TCP", "127.9.9.9", 1))))
        self.assertTrue(access.allows(self.request(IPv6Address("TCP", "::1", 1))))
        self.assertTrue(access.allows(self.request(IPv6Address("TCP", "::ffff:127.0.0.1", 1))))
        self.assertTrue(access.allows(self.request(UNIXAddress(b"/run/t.sock"))))
        self.assertFalse(access.allows(self.request(IPv4Address("TCP", "10.0.0.1", 1))))
        self.assertFalse(access.allows(self.request(IPv6Address("TCP", "2001:db8::1", 1))))

    def test_token_needed_from_everyone(self) -> None:
        access = Access(token="s3cret")
        remote = IPv4Address("TCP", "10.0.0.1", 1)
        self.assertTrue(access.allows(self.request(remote, b"Bearer s3cret")))
        self.assertFalse(access.allows(self.request(remote, b"Bearer wrong")))
        self.assertFalse(access.allows(self.request(IPv4Address("TCP", "127.0.0.1", 1))))

    def test_open_listener(self) -> None:
        access = Access(local_only=False)
        self.assertTrue(access.allows(self.request(IPv4Address("TCP", "10.0.0.1", 1))))


class ListenerTests(TestCase):
    async def start(self, **kwargs: Any) -> tuple[str, str]:
        directory = temp_dir(self)
        main, metrics = str(directory / "main.sock"), str(directory / "metrics.sock")
        service = TcpSocketService(
            test_config(), [f"unix:{main}"], metrics_listen=f"unix:{metrics}", **kwargs
        )
        service.startService()
        self.addCleanup(service.stopService)
        await wait_until(lambda: os.path.exists(main) and os.path.exists(metrics))
        return main, metrics

    async def get(self, path: str, url: str, token: str | None = None) -> tuple[int, bytes]:
        agent = Agent.usingEndpointFactory(reactor, _UnixEndpoints(path))
        headers = Headers({b"authorization": [f"Bearer {token}".encode()]} if token else {})
        response = await agent.request(b"GET", url.encode(), headers)
        return response.code, await read_body(response)

    async def test_own_listener(self) -> None:
        main, metrics = await self.start()
        code, body = await self.get(metrics, "http://localhost/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"tcpsocket_sessions_total 0.0", body)
        self.assertEqual((await self.get(main, "http://localhost/metrics"))[0], 404)
        self.assertEqual((await self.get(main, "http://localhost/healthz"))[0], 404)

    async def test_own_listener_with_token(self) -> None:
        _, metrics = await self.start(metrics_token="s3cret")
        self.assertEqual((await self.get(metrics, "http://localhost/metrics"))[0], 403)
        self.assertEqual((await self.get(metrics, "http://localhost/healthz", "s3cret"))[0], 200)


class _UnixEndpoints:
    def __init__(self, path: str) -> None:
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, self.path)


class FailureReasonTests(SynchronousTestCase):
    def test_connect_failures_by_kind(self) -> None:
        from twisted.internet import defer, error
        from twisted.python.failure import Failure

        from tcpsocket.metrics import SOCKET_FAILURES, failure_reason

        for exception, reason in (
            (error.ConnectionRefusedError(), "refused"),
            (error.TCPTimedOutError(), "timeout"),
            (defer.TimeoutError(), "timeout"),
            (error.DNSLookupError(), "dns"),
            (defer.CancelledError(), "released"),
            (error.NoRouteError(), "unreachable"),
            (ValueError(), "error"),
        ):
            self.assertEqual(failure_reason(Failure(exception)), reason, exception)
            self.assertIn(reason, SOCKET_FAILURES)


class PolicyFailureTests(TestCase):
    async def test_denied_and_limit(self) -> None:
        from tcpsocket.policy import AllowList

        _, echo_port = await listen_remote(self, Echo)
        _, port = await start_daemon(
            self, policy=AllowList([f"127.0.0.1:{echo_port}"]), max_sockets_per_session=1
        )
        session = await Session.connect(f"ws://127.0.0.1:{port}/ws", TOKEN)
        manager = await TcpSocketManager.get(session)
        await manager.open(host="127.0.0.1", port=echo_port)
        with self.assertRaises(TcpSocketError):
            await manager.open(host="127.0.0.1", port=echo_port)  # over the limit
        with self.assertRaises(TcpSocketError):
            await manager.open(host="127.0.0.1", port=1)  # not allowed
        scraped = await MetricsTests.scrape(self, port)  # type: ignore[arg-type]
        self.assertEqual(value(scraped, "tcpsocket_sockets_failed_total", reason="limit"), 1)
        self.assertEqual(value(scraped, "tcpsocket_sockets_failed_total", reason="denied"), 1)
        await session.close()
