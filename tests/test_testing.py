"""tcpsocket.testing: the real daemon in memory, used the way an application's tests would."""

from __future__ import annotations

import unittest
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket import ServerConfig, Token, TokenStore
from tcpsocket.client import (
    CLOSE_EVENT,
    DATA_EVENT,
    DRAIN_EVENT,
    ERROR_EVENT,
    Session,
    SessionRefused,
    TcpSocket,
    TcpSocketClientEndpoint,
    TcpSocketError,
    TcpSocketManager,
)
from tcpsocket.testing import MemoryDaemon, MemoryTransport
from tests import support

T = TypeVar("T")

TOKEN = "app-secret-for-tests"

# -- remotes -------------------------------------------------------------------


class LineEcho(support.LineEcho):
    """The line server of the other tests, remembering how its connection ended."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.lost: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost = reason


class Banner(Protocol):
    """Speaks first, like SMTP, IMAP or SSH."""

    def connectionMade(self) -> None:
        self.transport.write(b"* OK IMAP4rev1 ready\r\n")  # type: ignore[union-attr]


class SlowReader(Protocol):
    """Does not read until the test resumes its transport."""

    def connectionMade(self) -> None:
        self.received = b""
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class Chat(LineReceiver):
    """A line client for TcpSocketClientEndpoint."""

    def connectionMade(self) -> None:
        self.lines: list[bytes] = []
        self.lost: Failure | None = None
        self.sendLine(b"hello")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class Events:
    """Records a socket's events in order."""

    def __init__(self, socket: TcpSocket) -> None:
        self.events: list[tuple[str, Any]] = []
        for event, name in (
            (DATA_EVENT, "data"),
            (DRAIN_EVENT, "drain"),
            (ERROR_EVENT, "error"),
            (CLOSE_EVENT, "close"),
        ):
            socket.add_event_listener(event, self._recorder(name))

    def _recorder(self, name: str) -> Callable[[Any], None]:
        return lambda value: self.events.append((name, value))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    @property
    def data(self) -> bytes:
        return b"".join(value for name, value in self.events if name == "data")


class MemoryTestCase(SynchronousTestCase):
    """A daemon per test, and a way to run coroutines on it."""

    def setUp(self) -> None:
        self.daemon = MemoryDaemon(tokens=[TOKEN])

    def run_until_quiet(self, coroutine: Coroutine[Any, Any, T] | defer.Deferred[T]) -> T:
        """Run ``coroutine`` as far as it gets without the clock moving; its result."""
        d = defer.ensureDeferred(coroutine)
        self.daemon.flush()
        return self.successResultOf(d)

    async def open(self, host: str, port: int) -> TcpSocket:
        session = await self.daemon.session(TOKEN)
        manager = await TcpSocketManager.get(session)
        return await manager.open(host=host, port=port)


# -- tests ---------------------------------------------------------------------


class SocketTests(MemoryTestCase):
    def test_echo(self) -> None:
        remote = self.daemon.add_remote("echo.example", 7, Factory.forProtocol(LineEcho))

        async def scenario() -> tuple[TcpSocket, Events]:
            socket = await self.open("echo.example", 7)
            events = Events(socket)
            self.assertIs(await socket.send(b"hello\r\n"), True)
            await socket.send(b"world\r\n")
            return socket, events

        socket, events = self.run_until_quiet(scenario())
        self.assertEqual(events.data, b"HELLO\r\nWORLD\r\n")
        (server,) = remote.protocols
        assert isinstance(server, LineEcho)
        self.assertIsNone(server.lost)

        close = socket.close()
        self.daemon.flush()
        self.successResultOf(close)
        self.assertEqual(events.names, ["data", "data", "close"])
        self.assertTrue(socket.closed)
        assert server.lost is not None
        server.lost.trap(ConnectionDone)

    def test_remote_closes(self) -> None:
        self.daemon.add_remote("echo.example", 7, Factory.forProtocol(LineEcho))

        async def scenario() -> Events:
            socket = await self.open("echo.example", 7)
            events = Events(socket)
            await socket.send(b"QUIT\r\n")
            return events

        events = self.run_until_quiet(scenario())
        self.assertEqual(events.events, [("data", b"BYE\r\n"), ("close", None)])

    def test_banner_first(self) -> None:
        self.daemon.add_remote("imap.example", 143, Factory.forProtocol(Banner))
        socket = self.run_until_quiet(self.open("imap.example", 143))
        # The daemon holds the banner until a DATA listener is enabled.
        self.daemon.flush()
        received: list[bytes] = []
        socket.add_event_listener(DATA_EVENT, received.append)
        self.daemon.flush()
        self.assertEqual(received, [b"* OK IMAP4rev1 ready\r\n"])

    def test_refused(self) -> None:
        self.daemon.add_remote("imap.example", 143, Factory.forProtocol(Banner))

        async def scenario() -> TcpSocketError:
            session = await self.daemon.session(TOKEN)
            manager = await TcpSocketManager.get(session)
            with self.assertRaises(TcpSocketError) as caught:
                await manager.open(host="imap.example", port=993)
            error: TcpSocketError = caught.exception
            return error

        error = self.run_until_quiet(scenario())
        self.assertEqual(error.reason, "connection refused (imap.example port 993)")

    def test_host_names_ignore_case(self) -> None:
        remote = self.daemon.add_remote("IMAP.Example.", 143, Factory.forProtocol(Banner))
        self.assertEqual(remote.host, "imap.example")
        self.run_until_quiet(self.open("imap.EXAMPLE", 143))
        self.assertEqual(len(remote.protocols), 1)

    def test_ipv6_literal(self) -> None:
        remote = self.daemon.add_remote("::1", 25, Factory.forProtocol(Banner))
        socket = self.run_until_quiet(self.open("[::1]", 25))
        self.assertEqual(socket.host, "[::1]")
        (server,) = remote.protocols
        self.assertEqual(server.transport.getHost().host, "::1")

    def test_remote_reset(self) -> None:
        remote = self.daemon.add_remote("imap.example", 143, Factory.forProtocol(Banner))

        async def scenario() -> Events:
            return Events(await self.open("imap.example", 143))

        events = self.run_until_quiet(scenario())
        (server,) = remote.protocols
        server.transport.abortConnection()
        self.daemon.flush()
        self.assertEqual(
            events.events,
            [
                ("data", b"* OK IMAP4rev1 ready\r\n"),
                ("error", "connection reset by peer"),
                ("close", None),
            ],
        )

    def test_session_close_closes_remotes(self) -> None:
        remote = self.daemon.add_remote("echo.example", 7, Factory.forProtocol(LineEcho))
        socket = self.run_until_quiet(self.open("echo.example", 7))
        self.assertEqual(len(self.daemon.sessions), 1)
        closed = socket.session.close()
        self.daemon.flush()
        self.successResultOf(closed)
        self.assertEqual(self.daemon.sessions, set())
        (server,) = remote.protocols
        assert isinstance(server, LineEcho) and server.lost is not None
        server.lost.trap(ConnectionDone)


class FlowControlTests(SynchronousTestCase):
    def test_bulk_download(self) -> None:
        payload = bytes(range(256)) * 4096  # 1 MiB

        class Bulk(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(payload)  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        daemon = MemoryDaemon(tokens=[TOKEN])
        daemon.add_remote("files.example", 80, Factory.forProtocol(Bulk))

        async def scenario() -> TcpSocket:
            session = await daemon.session(TOKEN)
            manager = await TcpSocketManager.get(session)
            return await manager.open(host="files.example", port=80)

        d = defer.ensureDeferred(scenario())
        daemon.flush()
        socket = self.successResultOf(d)
        # No DATA listener yet: the daemon holds a little, then stops reading.
        (session,) = daemon.sessions
        held = session.services[socket.service_id].sockets[socket.object_id]
        self.assertTrue(held.reading_paused)
        self.assertLess(held.held_downstream, len(payload))
        events = Events(socket)
        daemon.flush()
        self.assertEqual(events.data, payload)
        self.assertEqual(events.names[-1], "close")
        self.assertNotIn("error", events.names)

    def test_send_false_then_drain(self) -> None:
        config = ServerConfig(tokens=TokenStore([Token(TOKEN)]), high_water_mark=1024)
        daemon = MemoryDaemon(config=config)
        remote = daemon.add_remote("slow.example", 9, Factory.forProtocol(SlowReader))

        async def scenario() -> tuple[TcpSocket, list[bool]]:
            session = await daemon.session(TOKEN)
            manager = await TcpSocketManager.get(session)
            socket = await manager.open(host="slow.example", port=9)
            answers = [await socket.send(b"a" * 600), await socket.send(b"b" * 600)]
            return socket, answers

        d = defer.ensureDeferred(scenario())
        daemon.flush()
        socket, answers = self.successResultOf(d)
        self.assertEqual(answers, [True, False])
        drains: list[bool] = []
        socket.add_event_listener(DRAIN_EVENT, drains.append)
        daemon.flush()
        self.assertEqual(drains, [])
        (server,) = remote.protocols
        assert isinstance(server, SlowReader) and server.transport is not None
        self.assertEqual(server.received, b"")

        server.transport.resumeProducing()  # type: ignore[attr-defined]
        daemon.flush()
        self.assertEqual(server.received, b"a" * 600 + b"b" * 600)
        self.assertEqual(drains, [True])
        sent = socket.send(b"c")
        daemon.flush()
        self.assertIs(self.successResultOf(sent), True)

    def test_close_timeout(self) -> None:
        config = ServerConfig(tokens=TokenStore([Token(TOKEN)]), high_water_mark=1024)
        daemon = MemoryDaemon(config=config)
        daemon.add_remote("slow.example", 9, Factory.forProtocol(SlowReader))

        async def scenario() -> Events:
            session = await daemon.session(TOKEN)
            manager = await TcpSocketManager.get(session)
            socket = await manager.open(host="slow.example", port=9)
            events = Events(socket)
            await socket.send(b"x" * 4096)
            await socket.close()
            return events

        d = defer.ensureDeferred(scenario())
        daemon.flush()
        events = self.successResultOf(d)
        daemon.advance(config.close_timeout - 1)
        self.assertEqual(events.names, [])
        daemon.advance(1)
        self.assertEqual(events.events, [("error", "close timed out after 30 s"), ("close", None)])


class EndpointTests(MemoryTestCase):
    def test_line_receiver(self) -> None:
        remote = self.daemon.add_remote("chat.example", 6667, Factory.forProtocol(LineEcho))

        async def scenario() -> Chat:
            session = await self.daemon.session(TOKEN)
            endpoint = TcpSocketClientEndpoint(session, "chat.example", 6667)
            chat = await endpoint.connect(Factory.forProtocol(Chat))
            assert isinstance(chat, Chat)
            return chat

        chat = self.run_until_quiet(scenario())
        self.assertEqual(chat.lines, [b"HELLO"])
        chat.sendLine(b"QUIT")
        self.daemon.flush()
        self.assertEqual(chat.lines, [b"HELLO", b"BYE"])
        assert chat.lost is not None
        chat.lost.trap(ConnectionDone)
        (server,) = remote.protocols
        assert isinstance(server, LineEcho) and server.lost is not None
        server.lost.trap(ConnectionDone)

    def test_refused(self) -> None:
        async def scenario() -> None:
            session = await self.daemon.session(TOKEN)
            endpoint = TcpSocketClientEndpoint(session, "chat.example", 6667)
            await endpoint.connect(Factory.forProtocol(Chat))

        d = defer.ensureDeferred(scenario())
        self.daemon.flush()
        failure = self.failureResultOf(d, ConnectionRefusedError)
        self.assertIn("chat.example port 6667", str(failure.value))


class TimeoutTests(MemoryTestCase):
    def test_handshake_timeout(self) -> None:
        closes: list[tuple[int | None, str | None]] = []

        class Silent(WebSocketClientProtocol):
            """Opens the WebSocket and never sends the session token."""

            def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
                closes.append((code, reason))

        factory = WebSocketClientFactory(self.daemon.url, reactor=self.daemon.clock)
        factory.protocol = Silent
        connecting = self.daemon.endpoint().connect(factory)
        self.daemon.flush()
        self.successResultOf(connecting)
        self.assertEqual(len(self.daemon.sessions), 1)
        self.daemon.advance(self.daemon.config.handshake_timeout - 0.5)
        self.assertEqual(closes, [])
        self.daemon.advance(0.5)
        self.assertEqual(closes, [(1008, "no session handshake in time")])
        self.assertEqual(self.daemon.sessions, set())

    def test_connect_timeout(self) -> None:
        self.daemon.add_blackhole("firewalled.example", 22)

        async def scenario() -> None:
            await self.open("firewalled.example", 22)

        d = defer.ensureDeferred(scenario())
        self.daemon.flush()
        self.assertNoResult(d)
        self.daemon.advance(self.daemon.config.connect_timeout)
        failure = self.failureResultOf(d, TcpSocketError)
        self.assertEqual(failure.value.reason, "connect timeout (firewalled.example port 22)")

    def test_client_timeouts_use_the_clock(self) -> None:
        session = self.run_until_quiet(self.daemon.session(TOKEN))
        (daemon_session,) = self.daemon.sessions
        transport: Any = daemon_session.transport
        transport.pauseProducing()  # a daemon that hangs
        closed = session.close()
        self.daemon.flush()
        self.assertNoResult(closed)
        # The client's close handshake timeout (1 s) gives up waiting.
        self.daemon.advance(1)
        self.successResultOf(closed)
        self.assertEqual(self.daemon.sessions, set())


class DaemonTests(SynchronousTestCase):
    def test_bad_token(self) -> None:
        daemon = MemoryDaemon(tokens=[TOKEN])
        d = daemon.session("wrong")
        daemon.flush()
        self.failureResultOf(d, SessionRefused)
        self.assertEqual(daemon.sessions, set())

    def test_origin_and_token_objects(self) -> None:
        daemon = MemoryDaemon(tokens=[Token(TOKEN, origins=frozenset({"https://app.example"}))])
        refused = daemon.session(TOKEN)
        accepted = daemon.session(TOKEN, origin="https://app.example")
        daemon.flush()
        self.failureResultOf(refused, SessionRefused)
        self.assertIsInstance(self.successResultOf(accepted), Session)

    def test_clock(self) -> None:
        clock = Clock()
        daemon = MemoryDaemon(tokens=[TOKEN], clock=clock)
        self.assertIs(daemon.clock, clock)
        session = daemon.session(TOKEN)
        daemon.flush()
        self.assertIs(self.successResultOf(session).reactor, clock)

    def test_arguments(self) -> None:
        daemon = MemoryDaemon()
        factory = Factory.forProtocol(Protocol)
        with self.assertRaises(TypeError):
            MemoryDaemon(tokens=TOKEN)
        with self.assertRaises(TypeError):
            MemoryDaemon(tokens=[TOKEN], config=ServerConfig(tokens=TokenStore()))
        with self.assertRaises(ValueError):
            daemon.add_remote("example.org", 0, factory)
        with self.assertRaises(ValueError):
            daemon.add_remote("bad host", 80, factory)
        daemon.add_remote("example.org", 80, factory)
        with self.assertRaises(ValueError):
            daemon.add_remote("Example.org", 80, factory)
        with self.assertRaises(ValueError):
            daemon.add_blackhole("example.org", 80)

    def test_flush_gives_up(self) -> None:
        daemon = MemoryDaemon(tokens=[TOKEN])
        daemon.max_rounds = 50
        daemon.add_remote("echo.example", 7, Factory.forProtocol(LineEcho))

        async def scenario() -> None:
            session = await daemon.session(TOKEN)
            manager = await TcpSocketManager.get(session)
            socket = await manager.open(host="echo.example", port=7)
            # Sends every line back: the two sides talk forever.
            socket.add_event_listener(DATA_EVENT, socket.send)
            await socket.send(b"ping\r\n")

        defer.ensureDeferred(scenario())
        with self.assertRaises(RuntimeError):
            daemon.flush()

    def test_transports(self) -> None:
        daemon = MemoryDaemon(tokens=[TOKEN])
        remote = daemon.add_remote("echo.example", 7, Factory.forProtocol(LineEcho))

        async def scenario() -> TcpSocket:
            session = await daemon.session(TOKEN)
            manager = await TcpSocketManager.get(session)
            return await manager.open(host="echo.example", port=7)

        d = defer.ensureDeferred(scenario())
        daemon.flush()
        self.successResultOf(d)
        (server,) = remote.protocols
        transport = server.transport
        assert isinstance(transport, MemoryTransport)
        self.assertEqual((transport.getHost().host, transport.getHost().port), ("echo.example", 7))
        self.assertEqual(transport.getPeer().host, "127.0.0.1")
        self.assertTrue(transport.reading)
        self.assertEqual(transport.buffered, 0)


class DocumentationTests(SynchronousTestCase):
    def test_python_md_example(self) -> None:
        """The example of "Testing without a network" in doc/python.md passes."""
        doc = Path(__file__).parent.parent / "doc" / "python.md"
        section = doc.read_text(encoding="utf-8").split("## Testing without a network")[1]
        code = section.split("```python\n")[1].split("```")[0]
        namespace: dict[str, Any] = {"__name__": "doc_example"}
        exec(compile(code, str(doc), "exec"), namespace)
        result = unittest.TestResult()
        namespace["GreetingTests"]("test_greeting").run(result)
        self.assertEqual((result.testsRun, result.errors, result.failures), (1, [], []))
