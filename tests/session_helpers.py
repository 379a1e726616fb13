"""A protocol-level test client and extra loopback remotes for the behaviour tests.

:class:`SessionClient` sits on a :class:`tests.support.RawClient` after the
handshake and speaks BaseMessages: it numbers requests like the JS client
(odd, from 3), matches each response to its request, checks that every request
gets exactly one response, and keeps each socket's events in order.
"""

from __future__ import annotations

import fcntl
import hashlib
import random
import socket as stdlib_socket
import struct
import termios
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket._private import use_reactor_timers
from tcpsocket.messages import (
    Core,
    GetService,
    Kind,
    ObjectRef,
    decode_base,
    decode_core_response,
    encode_handshake,
    encode_request,
)
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import (
    Event,
    Method,
    Reply,
    SocketReply,
    decode_socket_reply,
    encode_method,
    encode_open,
    encode_send,
)
from tests.support import (
    TOKEN,
    RawClient,
    Remote,
    RemoteFactory,
    drop_at_cleanup,
    listen_remote,
    listen_remote_port,
    raw_client,
    raw_client_on,
)

KiB = 1024
MiB = 1024 * KiB
#: A kernel socket buffer size small enough that a peer that does not read
#: is felt at once (the kernel doubles it for its bookkeeping).
SMALL_BUFFER = 16 * KiB


def only(items: Any) -> Any:
    """The single element of ``items``."""
    (item,) = list(items)
    return item


def live_sessions(site: Any) -> set[Any]:
    """The daemon's live ``SessionProtocol`` objects."""
    sessions: set[Any] = site.session_factory.sessions
    return sessions


def free_port() -> int:
    """A loopback port nothing listens on (connects to it are refused)."""
    with stdlib_socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def transport_buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds that the kernel has not taken yet.

    Reads ``FileDescriptor`` internals: tests only.
    """
    if transport is None:
        return 0
    return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)


class EventStream:
    """The events of one socket, in arrival order, with an awaitable cursor."""

    def __init__(self) -> None:
        self.events: list[SocketReply] = []
        self._cursor = 0
        self._waiting: deque[defer.Deferred[SocketReply]] = deque()
        #: If set, DATA payloads go here instead of into :attr:`events`.
        self.data_sink: Callable[[bytes], None] | None = None
        self.data = bytearray()

    def add(self, reply: SocketReply) -> None:
        if reply.reply is Reply.DATA_EVENT:
            assert isinstance(reply.value, bytes)
            if self.data_sink is not None:
                self.data_sink(reply.value)
                return
            self.data += reply.value
        self.events.append(reply)
        if self._waiting:
            self._cursor += 1
            self._waiting.popleft().callback(reply)

    def next(self) -> defer.Deferred[SocketReply]:
        """The next event not yet taken."""
        if self._cursor < len(self.events):
            self._cursor += 1
            return defer.succeed(self.events[self._cursor - 1])
        d: defer.Deferred[SocketReply] = defer.Deferred()
        self._waiting.append(d)
        return d

    def kinds(self) -> list[Reply]:
        return [e.reply for e in self.events]

    async def until_close(self) -> None:
        """Take events until CLOSE has arrived."""
        while Reply.CLOSE_EVENT not in self.kinds():
            await self.next()

    def assert_data_then_one_close(self) -> None:
        """Only DATA came, then CLOSE, once and last."""
        kinds = self.kinds()
        assert kinds.count(Reply.CLOSE_EVENT) == 1, kinds
        assert kinds[-1] is Reply.CLOSE_EVENT, kinds
        assert set(kinds[:-1]) <= {Reply.DATA_EVENT}, kinds

    def fail(self, reason: Exception) -> None:
        while self._waiting:
            self._waiting.popleft().errback(reason)


class SessionClient:
    """Requests, responses and events of one session, over a :class:`RawClient`."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self._next_request = 3
        self._pending: dict[int, tuple[int, int, defer.Deferred[bytes]]] = {}
        self.answers: Counter[int] = Counter()
        self.unexpected: list[bytes] = []
        self.streams: dict[tuple[int, int], EventStream] = {}
        #: Called with (service, socket, reply) for every event, before it is stored.
        self.event_hooks: list[Callable[[int, int, SocketReply], None]] = []
        raw.onMessage = self._on_message  # type: ignore[method-assign]
        for message in list(raw.messages):
            assert isinstance(message, bytes)
            self._on_message(message, True)
        raw.messages.clear()
        raw.closed.addBoth(self._on_closed)

    # -- plumbing ------------------------------------------------------------

    def _on_closed(self, result: Any) -> Any:
        error = ConnectionError(f"session closed: {result}")
        for _, _, d in list(self._pending.values()):
            if not d.called:
                d.errback(error)
        for stream in self.streams.values():
            stream.fail(error)
        return result

    def _on_message(self, payload: bytes, is_binary: bool) -> None:
        if not is_binary:
            self.unexpected.append(payload)
            return
        message = decode_base(payload, strict=False)
        if message.kind is Kind.RESPONSE:
            assert message.request is not None
            self.answers[message.request] += 1
            pending = self._pending.pop(message.request, None)
            if pending is None or pending[:2] != (message.service, message.object):
                self.unexpected.append(payload)
                return
            pending[2].callback(message.content)
        elif message.kind is Kind.EVENT:
            reply = decode_socket_reply(message.content)
            for hook in self.event_hooks:
                hook(message.service, message.object, reply)
            self.stream(message.service, message.object).add(reply)
        else:
            self.unexpected.append(payload)

    async def settle(self) -> None:
        """One request round trip: every event the daemon sent before it has arrived."""
        await self.request(0, 0, b"\x01\x00")  # HasService ""

    def stream(self, service: int, socket_id: int) -> EventStream:
        """The events of one socket."""
        return self.streams.setdefault((service, socket_id), EventStream())

    def request(self, service: int, object_id: int, content: bytes) -> defer.Deferred[bytes]:
        """Send a request; fires with the content of its response."""
        request_id = self._next_request
        self._next_request += 2
        d: defer.Deferred[bytes] = defer.Deferred()
        self._pending[request_id] = (service, object_id, d)
        self.raw.send(encode_request(service, object_id, request_id, content))
        return d

    def request_frame(
        self, frame: bytes, service: int, object_id: int, request_id: int
    ) -> defer.Deferred[bytes]:
        """Send a hand-built request ``frame``; fires with the content of its response."""
        d: defer.Deferred[bytes] = defer.Deferred()
        self._pending[request_id] = (service, object_id, d)
        self.raw.send(frame)
        return d

    def assert_one_response_each(self) -> None:
        """Every request so far got exactly one response, and nothing else came."""
        assert not self._pending, f"unanswered requests: {sorted(self._pending)}"
        assert all(n == 1 for n in self.answers.values()), f"answer counts {self.answers}"
        assert not self.unexpected, f"unexpected messages: {self.unexpected!r}"

    # -- core ----------------------------------------------------------------

    async def get_service(self) -> int:
        content = await self.request(
            0, 0, GetService("TcpSocketManager", TCPSOCKET_FINGERPRINT).encode()
        )
        response = decode_core_response(content)
        assert response.result is not None and response.result.value == 0, response
        assert isinstance(response.value, int)
        return response.value

    async def core_bool(self, ref: ObjectRef) -> bool:
        response = decode_core_response(await self.request(0, 0, ref.encode()))
        assert response.op is ref.op, response
        assert isinstance(response.value, bool)
        return response.value

    async def enable(self, service: int, socket_id: int, *events: Event) -> None:
        # Pipelined, as a page that adds its listeners at once sends them: the daemon
        # handles them in one read, so a remote that sends and closes (or resets) at
        # once cannot finish and forget the socket between two of them.
        answers = [
            defer.ensureDeferred(
                self.core_bool(ObjectRef(Core.ENABLE_EVENT, service, socket_id, event))
            )
            for event in events
        ]
        for event, ok in zip(events, await defer.gatherResults(answers), strict=True):
            assert ok, f"enable {event!r} on {service}/{socket_id} failed"

    async def disable(self, service: int, socket_id: int, event: Event) -> bool:
        return await self.core_bool(ObjectRef(Core.DISABLE_EVENT, service, socket_id, event))

    async def release(self, service: int, object_id: int) -> bool:
        return await self.core_bool(ObjectRef(Core.RELEASE_OBJECT, service, object_id))

    # -- TcpSocketManager ----------------------------------------------------

    async def open(self, service: int, host: str, port: int) -> SocketReply:
        return decode_socket_reply(await self.request(service, 0, encode_open(host, port)))

    async def open_ok(
        self, service: int, port: int, host: str = "127.0.0.1", events: tuple[Event, ...] = ()
    ) -> int:
        reply = await self.open(service, host, port)
        assert reply.reply is Reply.OPEN_SUCCESS, reply
        assert isinstance(reply.value, int)
        await self.enable(service, reply.value, *events)
        return reply.value

    def send(self, service: int, socket_id: int, data: bytes) -> defer.Deferred[SocketReply]:
        d = self.request(service, socket_id, encode_send(data))
        return d.addCallback(decode_socket_reply)

    async def call(self, service: int, socket_id: int, method: Method) -> SocketReply:
        return decode_socket_reply(await self.request(service, socket_id, encode_method(method)))


async def session(
    test: Any, port: int, token: str = TOKEN, raw: RawClient | None = None
) -> SessionClient:
    """A session client that has done the handshake (on ``raw`` if given)."""
    if raw is None:
        raw = await raw_client(test, port)
    raw.send(encode_handshake(token))
    ack = await raw.next()
    assert ack == b"\x01", ack
    return SessionClient(raw)


async def manager(test: Any, port: int, raw: RawClient | None = None) -> tuple[SessionClient, int]:
    """A session with one TcpSocketManager; returns it and the service id."""
    client = await session(test, port, raw=raw)
    return client, await client.get_service()


async def unix_manager(test: Any, path: str) -> tuple[SessionClient, int]:
    """:func:`manager` over the daemon's UNIX socket ``path``."""
    return await manager(test, 0, raw=await raw_client_on(test, UNIXClientEndpoint(reactor, path)))


# -- remotes -------------------------------------------------------------------


class Recording(Remote):
    """Takes everything; records how the connection ended."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.reason: Failure | None = None

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        super().connectionLost(reason)

    @property
    def clean_eof(self) -> bool:
        """Whether the connection ended with a FIN (not a reset or an abort)."""
        return self.reason is not None and self.reason.check(error.ConnectionDone) is not None


class PausedSink(Recording):
    """Takes everything, but starts with its reading paused; ``resume()`` it.

    Listen with :func:`listen_small` so that what it does not read backs up
    into the daemon quickly (see also :func:`shrink_send_buffer`).
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.pause()

    def pause(self) -> None:
        self.paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        self.paused = False
        self.transport.resumeProducing()  # type: ignore[union-attr]


class HashingSink(PausedSink):
    """A slow reader for big uploads: hashes what it gets instead of keeping it.

    It reads ``burst`` bytes, then pauses again (calling ``on_pause``) until
    told to ``resume()``.
    """

    burst = 4 * MiB

    def connectionMade(self) -> None:
        self.count = 0
        self.digest = hashlib.sha256()
        self.budget = self.burst
        self.on_pause: Callable[[], None] = lambda: None
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)
        self.budget -= len(data)
        if self.budget <= 0 and not self.paused:
            self.pause()
            self.on_pause()

    def resume(self) -> None:
        self.budget = self.burst
        super().resume()


@implementer(IPushProducer)
class Source(Recording):
    """Streams ``factory.payload`` as fast as its transport takes it, then closes.

    It registers as a streaming producer of its own transport, so ``paused``
    says whether the daemon is keeping up.  With ``autostart`` false it waits
    for :meth:`start`.
    """

    chunk = 256 * KiB
    autostart = True

    def connectionMade(self) -> None:
        super().connectionMade()
        self.offset = 0
        self.started = False
        self.paused = False
        self.pauses = 0
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        if self.autostart:
            reactor.callLater(0, self.start)  # type: ignore[attr-defined]

    def start(self) -> None:
        self.started = True
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.started or self.transport is None:
            return
        payload = self.factory.payload
        while not self.paused and self.offset < len(payload):
            end = self.offset + self.chunk
            self.transport.write(payload[self.offset : end])
            self.offset = min(end, len(payload))
        if self.offset >= len(payload) and not self.paused:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.paused = True


class HeldSource(Source):
    """A :class:`Source` that waits for :meth:`Source.start`."""

    autostart = False


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


async def fill(
    client: SessionClient,
    service: int,
    socket_id: int,
    chunk: int = 256 * KiB,
    limit: int = 128 * MiB,
    seed: int = 1,
) -> bytes:
    """Send distinct chunks until ``send`` answers false; returns the accepted bytes."""
    sent = bytearray()
    rng = random.Random(seed)
    while len(sent) < limit:
        data = rng.randbytes(chunk)
        reply = await client.send(service, socket_id, data)
        assert reply.reply is Reply.SEND_SUCCESS, reply
        sent += data
        if reply.value is False:
            return bytes(sent)
    raise AssertionError(f"send never answered false in {limit} bytes")


def shrink_send_buffer_of(transport: Any, size: int = SMALL_BUFFER) -> None:
    """Fix the kernel send buffer of a connected TCP transport's socket.

    A fixed size also turns off the kernel's autotuning, which would otherwise
    take megabytes from a socket whose peer does not read.  (Only the send
    side can safely shrink on an established connection.)
    """
    transport.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, size)


def shrink_send_buffer(site: Any, service: int, socket_id: int) -> Any:
    """Give a daemon socket a small kernel send buffer; returns the daemon's RemoteSocket."""
    socket = only(live_sessions(site)).services[service].sockets[socket_id]
    shrink_send_buffer_of(socket.transport)
    return socket


def kernel_unread(transport: Any) -> int:
    """Bytes waiting in the kernel receive queue of a TCP transport's socket."""
    raw = fcntl.ioctl(transport.socket.fileno(), termios.FIONREAD, b"\0\0\0\0")
    value: int = struct.unpack("i", raw)[0]
    return value


async def listen_small(
    test: Any, protocol: type[Remote], payload: bytes = b"", rcvbuf: int = SMALL_BUFFER
) -> tuple[RemoteFactory, int]:
    """Like ``listen_remote``, with a small fixed kernel receive buffer on each connection.

    The size is set on the listening socket, so that connections start with
    it (shrinking the buffer of an established connection makes the kernel
    drop segments it already allowed, and TCP then stalls on retransmits).
    """
    factory, port = await listen_remote_port(test, protocol, payload)
    port.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, rcvbuf)
    return factory, port.getHost().port


async def raw_client_small(test: Any, port: int, rcvbuf: int = SMALL_BUFFER) -> RawClient:
    """A raw client whose socket has a small fixed kernel receive buffer from the start."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    use_reactor_timers(factory, reactor)  # as raw_client_on does
    factory.protocol = RawClient
    factory.opened = defer.Deferred()
    with stdlib_socket.socket() as sock:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            sock.fileno(), stdlib_socket.AF_INET, factory
        )
    client: RawClient = await factory.opened
    drop_at_cleanup(test, client)
    return client


async def listen_remote6(test: Any, protocol: type[Remote]) -> tuple[RemoteFactory, int]:
    """Like ``listen_remote`` but on ``::1``."""
    return await listen_remote(test, protocol, interface="::1")


def has_ipv6_loopback() -> bool:
    """Whether ``::1`` can be bound on this machine."""
    if not stdlib_socket.has_ipv6:
        return False
    try:
        with stdlib_socket.socket(stdlib_socket.AF_INET6, stdlib_socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def black_hole(test: Any) -> int:
    """A loopback port whose connects never complete: listen backlog 0, already full.

    Linux drops a SYN while a listener's accept queue is full, so a connect
    to this port hangs until the connector gives up.  Returns the port.
    """
    listener = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    test.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    for _ in range(4):
        filler = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        test.addCleanup(filler.close)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    return port


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
