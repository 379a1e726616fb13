"""TcpSocketClientEndpoint: unchanged Twisted protocols through the daemon, on loopback."""

from __future__ import annotations

import io
import random
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import (
    ConnectError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    NoProtocol,
)
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.mail import imap4
from twisted.protocols.basic import FileSender, LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tcpsocket.client import (
    TcpSocketAddress,
    TcpSocketClientEndpoint,
    TcpSocketManager,
    TcpSocketTransport,
)
from tests.support import (
    Banner,
    Echo,
    LineEcho,
    Remote,
    Reset,
    SendAndClose,
    Sink,
    listen_remote,
    wait_until,
)
from tests.test_client import daemon_socket, free_port, open_session

# -- remotes and protocols -----------------------------------------------------


class LineClient(LineReceiver):
    """Collects lines; ``lost`` fires with the reason of connectionLost."""

    def connectionMade(self) -> None:
        self.lines: list[bytes] = []
        self.waiting: list[tuple[int, defer.Deferred[None]]] = []
        self.lost: defer.Deferred[BaseException] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        for entry in list(self.waiting):
            if len(self.lines) >= entry[0]:
                self.waiting.remove(entry)
                entry[1].callback(None)

    def wait_lines(self, count: int) -> defer.Deferred[None]:
        if len(self.lines) >= count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((count, d))
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reason.value)


class Collector(Protocol):
    """Collects bytes; ``lost`` fires with the reason of connectionLost."""

    def connectionMade(self) -> None:
        self.received = bytearray()
        self.lost: defer.Deferred[BaseException] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(reason.value)


class SlowSink(Remote):
    """Takes everything, but only reads once told to: a slow consumer."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def start_reading(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]


@implementer(IPushProducer)
class Uploader:
    """A push producer: writes ``payload`` a chunk per reactor turn unless paused."""

    def __init__(self, transport: Any, payload: bytes, chunk: int) -> None:
        self.transport = transport
        self.payload = payload
        self.chunk = chunk
        self.sent = 0
        self.pauses = 0
        self.resumes = 0
        self.sent_at_first_pause: int | None = None
        self.done: defer.Deferred[None] = defer.Deferred()
        self._paused = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not self._paused and not self.done.called:
            self._call = reactor.callLater(0, self._produce)  # type: ignore[attr-defined]

    def _produce(self) -> None:
        self._call = None
        if self._paused:
            return
        self.transport.write(self.payload[self.sent : self.sent + self.chunk])
        self.sent += self.chunk
        if self.sent >= len(self.payload):
            self.transport.unregisterProducer()
            self.done.callback(None)
        else:
            self._schedule()

    def pauseProducing(self) -> None:
        self.pauses += 1
        if self.sent_at_first_pause is None:
            self.sent_at_first_pause = self.sent
        self._paused = True

    def resumeProducing(self) -> None:
        self.resumes += 1
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if not self.done.called:
            self.done.errback(ConnectionLost("producer stopped"))


def factory_of(protocol: type[Protocol]) -> Factory:
    return Factory.forProtocol(protocol)


async def listen(test: TestCase, factory: Factory) -> int:
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    test.addCleanup(port.stopListening)
    number: int = port.getHost().port
    return number


# -- IMAP4 ---------------------------------------------------------------------


@implementer(IRealm)
class MemoryRealm:
    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> Any:
        if imap4.IAccount in interfaces:
            return imap4.IAccount, imap4.MemoryAccount(avatarId), lambda: None
        raise NotImplementedError()


class IMAPServerFactory(Factory):
    def __init__(self) -> None:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        self.portal = Portal(MemoryRealm(), [checker])
        self.servers: list[imap4.IMAP4Server] = []

    def buildProtocol(self, addr: Any) -> imap4.IMAP4Server:
        server = imap4.IMAP4Server()
        server.portal = self.portal
        server.factory = self
        self.servers.append(server)
        return server


class IMAPClient(imap4.IMAP4Client):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.greeted: defer.Deferred[Any] = defer.Deferred()
        self.lost: defer.Deferred[BaseException] = defer.Deferred()

    def serverGreeting(self, caps: Any) -> None:
        self.greeted.callback(caps)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.lost.callback(reason.value)


# -- tests -------------------------------------------------------------------


class EndpointTests(TestCase):
    async def manager(self, **config: Any) -> TcpSocketManager:
        self.site, self.session = await open_session(self, **config)
        return await TcpSocketManager.get(self.session)

    async def connect(self, port: int, protocol: type[Protocol], **config: Any) -> Any:
        endpoint = TcpSocketClientEndpoint(await self.manager(**config), "127.0.0.1", port)
        connected = await endpoint.connect(factory_of(protocol))

        async def close() -> None:
            if connected.transport.connected:
                connected.transport.loseConnection()
                await connected.lost

        self.addCleanup(lambda: defer.ensureDeferred(close()))
        return connected

    async def test_line_receiver(self) -> None:
        port = await listen(self, factory_of(LineEcho))
        line_client: LineClient = await self.connect(port, LineClient)
        line_client.sendLine(b"hello")
        line_client.sendLine(b"world")
        await line_client.wait_lines(2)
        self.assertEqual(line_client.lines, [b"HELLO", b"WORLD"])
        line_client.sendLine(b"QUIT")
        self.assertIsInstance(await line_client.lost, ConnectionDone)
        self.assertEqual(line_client.lines[-1], b"BYE")

    async def test_endpoint_from_session(self) -> None:
        port = await listen(self, factory_of(LineEcho))
        _, session = await open_session(self)
        endpoint = TcpSocketClientEndpoint(session, "127.0.0.1", port)
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        line_client = await endpoint.connect(factory_of(LineClient))
        line_client.sendLine(b"once")
        await line_client.wait_lines(1)
        second = await endpoint.connect(factory_of(LineClient))
        second.sendLine(b"twice")
        await second.wait_lines(1)
        self.assertEqual((line_client.lines, second.lines), ([b"ONCE"], [b"TWICE"]))
        for each in (line_client, second):
            each.transport.loseConnection()
            self.assertIsInstance(await each.lost, ConnectionDone)

    async def test_imap4(self) -> None:
        server_factory = IMAPServerFactory()
        port = await listen(self, server_factory)
        imap: IMAPClient = await self.connect(port, IMAPClient)
        caps = await imap.greeted
        self.assertIn(b"IMAP4rev1", caps)
        with self.assertRaises(imap4.IMAP4Exception):
            await imap.login(b"alice", b"wrong")
        await imap.login(b"alice", b"secret")
        self.assertEqual(server_factory.servers[0].state, "auth")
        self.assertEqual(await imap.list(b"", b"*"), [])
        await imap.noop()
        await imap.logout()
        self.assertIsInstance(await imap.lost, ConnectionDone)

    async def test_transport_interfaces(self) -> None:
        remote, port = await listen_remote(self, Banner)
        collector = await self.connect(port, Collector)
        transport = collector.transport
        self.assertIsInstance(transport, TcpSocketTransport)
        for interface in (ITransport, IConsumer, IPushProducer):
            self.assertTrue(verifyObject(interface, transport))
        url = self.session.url
        self.assertEqual(transport.getPeer(), TcpSocketAddress("127.0.0.1", port, url))
        self.assertEqual(transport.getHost(), TcpSocketAddress("", 0, url))
        await wait_until(lambda: collector.received == bytearray(Banner.banner))
        transport.writeSequence([b"a", b"b", b"c"])
        await wait_until(lambda: remote.received == bytearray(b"abc"))
        with self.assertRaises(TypeError):
            transport.write("text")

    async def test_refused(self) -> None:
        manager = await self.manager()
        endpoint = TcpSocketClientEndpoint(manager, "127.0.0.1", await free_port())
        with self.assertRaises(ConnectionRefusedError) as caught:
            await endpoint.connect(factory_of(Collector))
        self.assertIn("connection refused", str(caught.exception))
        bad = TcpSocketClientEndpoint(manager, "127.0.0.1", 0)
        with self.assertRaises(ConnectError) as invalid:
            await bad.connect(factory_of(Collector))
        self.assertIn("invalid port", str(invalid.exception))

    async def test_remote_closes(self) -> None:
        _, port = await listen_remote(self, SendAndClose)
        collector = await self.connect(port, Collector)
        self.assertIsInstance(await collector.lost, ConnectionDone)
        self.assertEqual(bytes(collector.received), SendAndClose.payload)

    async def test_remote_resets(self) -> None:
        _, port = await listen_remote(self, Reset)
        collector = await self.connect(port, Collector)
        collector.transport.write(b"boom")
        reason = await collector.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertIn("reset", str(reason))

    async def test_lose_connection(self) -> None:
        remote, port = await listen_remote(self, Sink)
        collector = await self.connect(port, Collector)
        collector.transport.write(b"last words")
        collector.transport.loseConnection()
        self.assertTrue(collector.transport.disconnecting)
        self.assertIsInstance(await collector.lost, ConnectionDone)
        await wait_until(lambda: remote.closed == 1)
        self.assertEqual(bytes(remote.received), b"last words")

    async def test_abort_connection(self) -> None:
        remote, port = await listen_remote(self, Sink)
        collector = await self.connect(port, Collector)
        collector.transport.abortConnection()
        self.assertIsInstance(await collector.lost, ConnectionAborted)
        await wait_until(lambda: remote.closed == 1)

    async def test_session_lost(self) -> None:
        _, port = await listen_remote(self, Sink)
        collector = await self.connect(port, Collector)
        for daemon_session in list(self.site.session_factory.sessions):
            daemon_session.dropConnection(abort=True)
        reason = await collector.lost
        self.assertIsInstance(reason, ConnectionLost)
        self.assertIn("session lost", str(reason))

    async def test_session_closed(self) -> None:
        _, port = await listen_remote(self, Sink)
        collector = await self.connect(port, Collector)
        await self.session.close()
        self.assertIsInstance(await collector.lost, ConnectionDone)

    async def test_pause_resume_reading(self) -> None:
        remote, port = await listen_remote(self, Echo)
        collector = await self.connect(port, Collector)
        transport = collector.transport
        transport.write(b"one")
        await wait_until(lambda: collector.received == bytearray(b"one"))
        transport.pauseProducing()
        transport.pauseProducing()  # not nested, like a TCP transport
        daemon = daemon_socket(self.site, transport.socket)
        await wait_until(lambda: daemon.reading_paused)
        transport.write(b"two")
        await wait_until(lambda: remote.received == bytearray(b"onetwo"))
        await self.session.has_service("TcpSocketManager")
        self.assertEqual(collector.received, bytearray(b"one"))
        transport.resumeProducing()
        await wait_until(lambda: collector.received == bytearray(b"onetwo"))
        await wait_until(lambda: not daemon.reading_paused)

    async def test_push_producer_paused_and_resumed(self) -> None:
        remote, port = await listen_remote(self, SlowSink)
        collector = await self.connect(port, Collector, high_water_mark=16 * 1024)
        payload = random.Random(3).randbytes(4 * 1024 * 1024)
        uploader = Uploader(collector.transport, payload, 32 * 1024)
        uploader.start()
        await wait_until(lambda: uploader.pauses >= 1)
        assert uploader.sent_at_first_pause is not None
        self.assertLess(uploader.sent_at_first_pause, len(payload))
        (sink,) = remote.connections
        assert isinstance(sink, SlowSink)
        sink.start_reading()
        await uploader.done
        await wait_until(lambda: len(remote.received) == len(payload), timeout=30)
        self.assertTrue(remote.received == payload)
        self.assertGreaterEqual(uploader.resumes, 1)
        self.assertLessEqual(uploader.resumes, uploader.pauses)

    async def test_pull_producer_file_sender(self) -> None:
        remote, port = await listen_remote(self, Sink)
        collector = await self.connect(port, Collector, high_water_mark=8 * 1024)
        payload = random.Random(5).randbytes(300_000)
        await FileSender().beginFileTransfer(io.BytesIO(payload), collector.transport)
        collector.transport.loseConnection()
        self.assertIsInstance(await collector.lost, ConnectionDone)
        await wait_until(lambda: remote.closed == 1)
        self.assertTrue(remote.received == payload)

    async def test_lose_connection_waits_for_producer(self) -> None:
        remote, port = await listen_remote(self, Sink)
        collector = await self.connect(port, Collector)
        uploader = Uploader(collector.transport, b"z" * 100_000, 10_000)
        uploader.start()
        collector.transport.loseConnection()
        await uploader.done
        self.assertIsInstance(await collector.lost, ConnectionDone)
        await wait_until(lambda: remote.closed == 1)
        self.assertEqual(bytes(remote.received), b"z" * 100_000)

    async def test_no_protocol(self) -> None:
        remote, port = await listen_remote(self, Sink)
        manager = await self.manager()

        class Refuses(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        endpoint = TcpSocketClientEndpoint(manager, "127.0.0.1", port)
        with self.assertRaises(NoProtocol):
            await endpoint.connect(Refuses())
        await wait_until(lambda: remote.closed == 1)
