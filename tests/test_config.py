"""ServerConfig: validation, and how remotes are reached."""

from __future__ import annotations

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.config import ServerConfig, remote_endpoint
from tcpsocket.tokens import TokenStore


class ValidationTests(SynchronousTestCase):
    def test_rejects_nonsense(self) -> None:
        tokens = TokenStore()
        for field in ("connect_timeout", "handshake_timeout", "close_timeout"):
            self.assertRaises(ValueError, ServerConfig, tokens, **{field: 0})
        for field in (
            "max_sockets_per_session",
            "max_sessions",
            "max_message_size",
            "high_water_mark",
            "max_send_buffer",
            "session_buffer",
        ):
            self.assertRaises(ValueError, ServerConfig, tokens, **{field: 0})
        self.assertRaises(ValueError, ServerConfig, tokens, high_water_mark=10, max_send_buffer=5)


class RemoteEndpointTests(SynchronousTestCase):
    def test_literals_skip_name_resolution(self) -> None:
        reactor = MemoryReactorClock()
        self.assertIsInstance(remote_endpoint(reactor, "127.0.0.1", 1, 1.0), TCP4ClientEndpoint)
        self.assertIsInstance(remote_endpoint(reactor, "::1", 1, 1.0), TCP6ClientEndpoint)
        self.assertIsInstance(remote_endpoint(reactor, "localhost", 1, 1.0), HostnameEndpoint)

    def test_timeout_is_passed_on(self) -> None:
        reactor = MemoryReactorClock()
        remote_endpoint(reactor, "127.0.0.1", 7, 2.5).connect(None)  # type: ignore[arg-type]
        host, port, _, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 7, 2.5))
