"""Shared pieces for the tests: loopback servers, a daemon, and a raw client."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver

from tcpsocket.config import ServerConfig
from tcpsocket.site import build_site
from tcpsocket.tokens import Token, TokenStore

TOKEN = "change-this-secret-token"
NO_PERMISSION_TOKEN = "no-permission-token"


def temp_dir(test: Any) -> Path:
    """A fresh short directory (UNIX socket paths must stay short), removed at cleanup."""
    path = Path(tempfile.mkdtemp(prefix="tcpsocket-"))
    test.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def test_config(**overrides: Any) -> ServerConfig:
    """A config with the test tokens; web pages of any origin may connect."""
    tokens = TokenStore(
        [Token(TOKEN, "test"), Token(NO_PERMISSION_TOKEN, "nobody", permissions=frozenset())]
    )
    overrides.setdefault("allowed_origins", frozenset({"*"}))
    return ServerConfig(tokens=tokens, **overrides)


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.005) -> None:
    """Poll ``predicate`` on the reactor until it is true (an event, not a fixed sleep)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(interval, d.callback, None)  # type: ignore[attr-defined]
        await d
        waited += interval


# -- loopback remotes --------------------------------------------------------


class Remote(Protocol):
    """Base of the test servers: records what it received and its connections."""

    factory: RemoteFactory

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = bytearray()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.factory.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.remove(self)
        self.factory.closed += 1
        self.lost.callback(None)


class Echo(Remote):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)  # type: ignore[union-attr]


class Banner(Remote):
    """Speaks first, like SMTP, IMAP, SSH and IRC servers."""

    banner = b"220 loopback ESMTP ready\r\n"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.banner)  # type: ignore[union-attr]


class SendAndClose(Remote):
    """Sends a payload and closes at once."""

    payload = b"bye\r\n"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.factory.payload or self.payload)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class Reset(Remote):
    """Aborts the connection (RST) as soon as it gets data."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.abortConnection()  # type: ignore[union-attr]


class Sink(Remote):
    """Takes everything and says nothing."""


class LineEcho(LineReceiver):
    """A line server: answers each line upper-cased; QUIT closes."""

    def lineReceived(self, line: bytes) -> None:
        if line == b"QUIT":
            self.sendLine(b"BYE")
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.sendLine(line.upper())


class RemoteFactory(Factory):
    def __init__(self, protocol: type[Remote], payload: bytes = b"") -> None:
        self.protocol = protocol
        self.payload = payload
        self.connections: list[Remote] = []
        self.received = bytearray()
        self.closed = 0


async def listen_remote_port(
    test: Any, protocol: type[Remote], payload: bytes = b"", interface: str = "127.0.0.1"
) -> tuple[RemoteFactory, Any]:
    """Listen on ``interface`` with ``protocol``; returns the factory and the listening port.

    The port stops, and the connections it accepted are dropped, at test cleanup.
    """
    factory = RemoteFactory(protocol, payload)
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    port = await endpoint_type(reactor, 0, interface=interface).listen(factory)
    test.addCleanup(port.stopListening)

    async def drop_connections() -> None:
        for connection in list(factory.connections):
            connection.transport.abortConnection()  # type: ignore[union-attr]
            await connection.lost

    test.addCleanup(lambda: defer.ensureDeferred(drop_connections()))
    return factory, port


async def listen_remote(
    test: Any, protocol: type[Remote], payload: bytes = b"", interface: str = "127.0.0.1"
) -> tuple[RemoteFactory, int]:
    """Listen on ``interface`` with ``protocol``, until test cleanup; returns the port number."""
    factory, port = await listen_remote_port(test, protocol, payload, interface)
    return factory, port.getHost().port


async def start_daemon(test: Any, **overrides: Any) -> tuple[Any, int]:
    """Run the daemon on 127.0.0.1; returns the site and its port.

    ``site.session_factory.sessions`` is the set of live ``SessionProtocol``s
    (note: ``site.sessions`` is twisted.web's own, unrelated dict).
    """
    site = build_site(test_config(**overrides))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    test.addCleanup(port.stopListening)
    return site, port.getHost().port


# -- a raw session client ----------------------------------------------------


class RawClient(WebSocketClientProtocol):  # type: ignore[misc]
    """A WebSocket client that hands over each message through Deferreds."""

    def onOpen(self) -> None:
        self.messages: deque[bytes | str] = deque()
        self.waiting: deque[defer.Deferred[bytes | str]] = deque()
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message: bytes | str = payload if isBinary else payload.decode()
        if self.waiting:
            self.waiting.popleft().callback(message)
        else:
            self.messages.append(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
            return
        self.closed.callback((code, reason))
        while self.waiting:
            self.waiting.popleft().errback(ConnectionError(f"closed {code}: {reason}"))

    def next(self) -> defer.Deferred[bytes | str]:
        """The next message."""
        if self.messages:
            return defer.succeed(self.messages.popleft())
        d: defer.Deferred[bytes | str] = defer.Deferred()
        self.waiting.append(d)
        return d

    def send(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=True)


async def raw_client(test: Any, port: int) -> RawClient:
    """A raw client connected to the daemon on 127.0.0.1; dropped at test cleanup."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await raw_client_on(test, endpoint, f"ws://127.0.0.1:{port}/ws")


async def raw_client_on(
    test: Any, endpoint: Any, url: str = "ws://localhost/ws", origin: str | None = None
) -> RawClient:
    """A raw client connected through any client endpoint; dropped at test cleanup."""
    factory = WebSocketClientFactory(url, origin=origin)
    factory.protocol = RawClient
    factory.opened = defer.Deferred()
    await endpoint.connect(factory)
    client: RawClient = await factory.opened
    drop_at_cleanup(test, client)
    return client


def drop_at_cleanup(test: Any, client: RawClient) -> None:
    """Drop ``client``'s connection at test cleanup if it is still open."""

    async def drop() -> None:
        if not client.closed.called:
            client.dropConnection(abort=True)
            await client.closed

    test.addCleanup(lambda: defer.ensureDeferred(drop()))
