"""Twisted protocols through the daemon with TLS: ``TcpSocketClientEndpoint(tls=...)``,
``startTLS`` on its transport (Twisted's own IMAP4 client), and ``tcpsocket:`` endpoint strings.
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.mail.imap4 import IMAP4Client, IMAP4Server
from twisted.trial.unittest import TestCase

from tcpsocket.client import Session, TcpSocketClientEndpoint
from tcpsocket.policy import DestinationPolicy
from tests.support import TOKEN, Echo, start_daemon, wait_until
from tests.test_secure_sockets import CA
from tests.tls_support import TLS_NAMES, TLS_RULES, listen_tls


class Receiver(Protocol):
    def connectionMade(self) -> None:
        self.received = bytearray()
        self.waiting: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.waiting.called:
            self.waiting.callback(None)


class SecureEndpointTests(TestCase):
    async def daemon(self) -> int:
        self.site, port = await start_daemon(
            self,
            tls_ca_file=CA.write(self),
            resolver=TLS_NAMES,
            policy=DestinationPolicy(TLS_RULES),
        )
        return port

    async def test_imap4_client_starttls(self) -> None:
        """Twisted's IMAP4Client does STARTTLS on the endpoint's transport, unchanged."""
        servers: list[IMAP4Server] = []

        def build() -> IMAP4Server:
            server = IMAP4Server(contextFactory=CA.issue("imap.test").server_options())
            servers.append(server)
            return server

        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(build)
        )
        self.addCleanup(listening.stopListening)
        daemon = await self.daemon()
        session = await Session.connect(f"ws://127.0.0.1:{daemon}/ws", TOKEN)
        self.addCleanup(session.close)
        endpoint = TcpSocketClientEndpoint(
            session, "imap.test", listening.getHost().port, tls=False
        )
        greeted: defer.Deferred[Any] = defer.Deferred()
        lost: defer.Deferred[None] = defer.Deferred()

        class Client(IMAP4Client):
            def serverGreeting(self, caps: Any) -> None:
                greeted.callback(caps)

            def connectionLost(self, reason: Any) -> None:
                super().connectionLost(reason)
                lost.callback(None)

        client = await endpoint.connect(Factory.forProtocol(Client))
        assert isinstance(client, IMAP4Client)
        await greeted
        self.assertTrue(ITLSTransport.providedBy(client.transport))
        self.assertFalse(ISSLTransport.providedBy(client.transport))
        caps = await client.startTLS(optionsForClientTLS("imap.test"))
        self.assertIn(b"IMAP4rev1", caps)
        self.assertTrue(ISSLTransport.providedBy(client.transport))
        (server,) = servers
        self.assertTrue(server.startedTLS)
        self.assertTrue(ISSLTransport.providedBy(server.transport))
        client.transport.loseConnection()
        await lost

    async def test_endpoint_string_with_tls(self) -> None:
        port = await listen_tls(self, CA.issue("imap.test").server_options(), Echo)
        daemon = await self.daemon()
        description = f"tcpsocket:imap.test:{port}:tls=yes:url=ws\\://127.0.0.1\\:{daemon}/ws"
        with mock.patch.dict(os.environ, {"WS_RUNTIME_TOKEN": TOKEN}):
            endpoint = clientFromString(reactor, description)
        protocol = await endpoint.connect(Factory.forProtocol(Receiver))
        assert isinstance(protocol, Receiver)
        self.assertTrue(ISSLTransport.providedBy(protocol.transport))
        protocol.transport.write(b"through the daemon, over TLS")  # type: ignore[union-attr]
        await protocol.waiting
        self.assertEqual(bytes(protocol.received), b"through the daemon, over TLS")
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        await protocol.lost
        # The endpoint's own session ends with its connection.
        await endpoint.closed()  # type: ignore[attr-defined]
        await wait_until(lambda: not self.site.session_factory.sessions)

    def test_endpoint_string_errors(self) -> None:
        with mock.patch.dict(os.environ, {}, clear=True):
            with self.assertRaisesRegex(ValueError, "no token"):
                clientFromString(reactor, "tcpsocket:imap.test:993")
        with mock.patch.dict(os.environ, {"WS_RUNTIME_TOKEN": TOKEN}):
            with self.assertRaisesRegex(ValueError, "tls is yes"):
                clientFromString(reactor, "tcpsocket:imap.test:993:tls=maybe")
            with self.assertRaisesRegex(ValueError, "needs a host and a port"):
                clientFromString(reactor, "tcpsocket:imap.test")
