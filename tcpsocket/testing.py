"""Test code that uses :mod:`tcpsocket.client` without a network (like ``treq.testing``).

:class:`MemoryDaemon` runs the real daemon (the same ``Site``, ``SessionProtocol``
and ``RemoteSocket`` as ``twistd tcpsocket``) with every connection in memory:

* the client's session WebSocket reaches the daemon through an in-memory
  endpoint (:meth:`MemoryDaemon.session`, :meth:`MemoryDaemon.endpoint`);
* the daemon reaches "remotes" that the test registered with
  :meth:`MemoryDaemon.add_remote`: any ``IProtocolFactory`` acts as the server
  at that host and port.  Any other host and port refuse the connection;
* every timer (handshake, connect and close timeouts, the client's own) runs
  on a :class:`~twisted.internet.task.Clock` that the test moves.

Nothing happens until the test calls :meth:`MemoryDaemon.flush`, which moves
bytes and runs due timers until everything is quiet (``StubTreq.flush`` in
treq): a coroutine run with ``ensureDeferred`` gets as far as it can without
the clock moving::

    daemon = MemoryDaemon(tokens=["app-secret-for-tests"])
    daemon.add_remote("imap.example", 143, IMAPServerFactory())

    async def scenario() -> bytes:
        session = await daemon.session("app-secret-for-tests")
        ...

    d = ensureDeferred(scenario())
    daemon.flush()
    self.assertEqual(self.successResultOf(d), b"* OK")

The in-memory connections behave like TCP as Twisted shows it: a transport
pauses its registered streaming producer while more than ``bufferSize``
written bytes wait, and resumes it once the peer has read them all;
``pauseProducing()`` stops reading (the peer's bytes wait);
``loseConnection`` writes what is buffered, then FIN (a half-closeable peer
gets ``readConnectionLost``); ``abortConnection`` is a reset
(``ConnectionLost`` for the peer).  There is no kernel buffer: bytes wait in
the writer's transport until the reader reads them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    NoProtocol,
)
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket.client.session import Session
from tcpsocket.config import ServerConfig
from tcpsocket.policy import AllowAll, DestinationPolicy
from tcpsocket.resolve import FixedResolver
from tcpsocket.services.tcpsocket.service import check_address
from tcpsocket.session import SessionProtocol
from tcpsocket.site import TcpSocketSite
from tcpsocket.tokens import Token, TokenStore

__all__ = ["MemoryDaemon", "MemoryTransport", "RemoteServer"]

log = Logger()

#: The URL sessions are opened with (only the HTTP request sees it).
DEFAULT_URL = "ws://127.0.0.1:8081/ws"
_Address = IPv4Address | IPv6Address
_DAEMON_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8081)
_LOCAL_HOST = "127.0.0.1"
#: The address every name resolves to in memory (TEST-NET-1, RFC 5737).
_STAND_IN = "192.0.2.1"
#: Read size and write-buffer limit of a transport, as in Twisted's FileDescriptor.
_BUFFER_SIZE = 64 * 1024


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


def _remote_key(host: str, port: int) -> tuple[str, int]:
    host, invalid = check_address(host, port)
    if invalid is not None:
        raise ValueError(invalid)
    return host.lower(), port


# -- in-memory TCP -------------------------------------------------------------


@implementer(ITCPTransport, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of an in-memory TCP connection (made by :class:`MemoryDaemon`).

    It keeps what its protocol writes until the peer reads it, when
    :meth:`MemoryDaemon.flush` pumps the connection.
    """

    def __init__(
        self, connection: _Connection, protocol: IProtocol, host: _Address, peer: _Address
    ) -> None:
        #: Replaceable, as Autobahn's WebSocketResource does when it takes over.
        self.protocol: Any = protocol
        self.bufferSize = _BUFFER_SIZE
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self.producer: Any = None
        self.streamingProducer = False
        self.other: MemoryTransport | None = None
        self._connection = connection
        self._host = host
        self._peer = peer
        self._buffer = bytearray()
        self._writing = False  # FileDescriptor.startWriting: a flush is due
        self._producer_paused = False
        self._reading_paused = False
        self._eof = False  # the peer's FIN, not read yet
        self._read_closed = False
        self._write_closing = False
        self._write_closed = False
        self._aborting = False
        self._no_delay = False
        self._keep_alive = False

    def __repr__(self) -> str:
        return f"<MemoryTransport {self._host} -> {self._peer} of {self.protocol!r}>"

    @property
    def buffered(self) -> int:
        """Bytes written and not yet read by the peer."""
        return len(self._buffer)

    @property
    def reading(self) -> bool:
        """Whether the protocol would be given the bytes that arrive."""
        return (
            self.connected
            and not self._reading_paused
            and not self.disconnecting
            and not self._read_closed
            and not self._aborting
        )

    # -- ITransport --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if not self.connected or self._write_closed or self._aborting or not data:
            return
        self._buffer += data
        self._writing = True
        if (
            self.producer is not None
            and self.streamingProducer
            and not self._producer_paused
            and len(self._buffer) > self.bufferSize
        ):
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self._writing = True

    def abortConnection(self) -> None:
        if not self.disconnected:
            self._aborting = True
            self._buffer.clear()

    def loseWriteConnection(self) -> None:
        if self.connected:
            self._write_closing = True
            self._writing = True

    def getPeer(self) -> _Address:
        return self._peer

    def getHost(self) -> _Address:
        return self._host

    def getTcpNoDelay(self) -> bool:
        return self._no_delay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._no_delay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self._keep_alive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keep_alive = bool(enabled)

    # -- IConsumer -----------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, "
                f"because producer {self.producer!r} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        self._producer_paused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False
        if self.connected and self.disconnecting:
            self._writing = True

    # -- IPushProducer (reading) ---------------------------------------------------

    def pauseProducing(self) -> None:
        self._reading_paused = True

    def resumeProducing(self) -> None:
        if self.connected and not self.disconnecting:
            self._reading_paused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- pumping -----------------------------------------------------------------

    def _pump(self) -> bool:
        """Move what this end wrote to the peer, and the peer's FIN to this end.

        Returns whether anything happened.
        """
        peer = self.other
        assert peer is not None
        if self.disconnected:
            return False
        if self._aborting:
            self._lose(Failure(ConnectionAborted()))
            peer._buffer.clear()
            peer._lose(Failure(ConnectionLost("Connection reset by peer")))
            return True
        moved = False
        if self._eof and self.reading:
            moved = True
            self._eof = False
            self._read_closed = True
            half_closeable = IHalfCloseableProtocol(self.protocol, None)
            if self._write_closed or half_closeable is None:
                self._lose(Failure(ConnectionDone()))
            else:
                self._call(half_closeable.readConnectionLost)
            if self.disconnected:
                return True
        if not self._writing:
            return moved
        while self._buffer and (peer.reading or peer.disconnected):
            moved = True
            if peer.disconnected:
                self._buffer.clear()  # nobody will ever read it
                break
            chunk = bytes(self._buffer[: max(1, peer.bufferSize)])
            del self._buffer[: len(chunk)]
            peer._call(peer.protocol.dataReceived, chunk)
            if self.disconnected or self._aborting:
                return True
        if self._buffer:
            return moved
        self._writing = False
        # FileDescriptor.doWrite once its buffer is empty:
        if self.producer is not None and (not self.streamingProducer or self._producer_paused):
            self._producer_paused = False
            self._call(self.producer.resumeProducing)
        elif self.disconnecting:
            self._write_closed = True
            self._lose(Failure(ConnectionDone()))
            peer._fin()
        elif self._write_closing and not self._write_closed:
            self._write_closed = True
            peer._fin()
            half_closeable = IHalfCloseableProtocol(self.protocol, None)
            if half_closeable is not None:
                self._call(half_closeable.writeConnectionLost)
            if self._read_closed:
                self._lose(Failure(ConnectionDone()))
        return True

    def _fin(self) -> None:
        if not self.disconnected and not self._read_closed:
            self._eof = True

    def _call(self, function: Callable[..., object], *args: Any) -> None:
        """Call into the protocol; an exception drops the connection, as a reactor does."""
        try:
            function(*args)
        except BaseException:
            failure = Failure()
            log.failure("unhandled error in {protocol!r}", failure, protocol=self.protocol)
            if not self.disconnected:
                self._lose(failure)
                if self.other is not None:
                    self.other._fin()

    def _lose(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self._buffer.clear()
        self._writing = False
        self._eof = False
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except BaseException:
                log.failure("error stopping {producer!r}", producer=producer)
        try:
            self.protocol.connectionLost(reason)
        except BaseException:
            log.failure("error in connectionLost of {protocol!r}", protocol=self.protocol)
        self._connection.transport_lost()


class _Connection:
    """A client and a server protocol joined by two :class:`MemoryTransport` ends."""

    def __init__(
        self,
        client: IProtocol,
        server: IProtocol,
        client_address: _Address,
        server_address: _Address,
        on_closed: Callable[[], object],
    ) -> None:
        self.client = MemoryTransport(self, client, client_address, server_address)
        self.server = MemoryTransport(self, server, server_address, client_address)
        self.client.other = self.server
        self.server.other = self.client
        self._on_closed: Callable[[], object] | None = on_closed

    @property
    def closed(self) -> bool:
        return self.client.disconnected and self.server.disconnected

    def start(self) -> None:
        self.server._call(self.server.protocol.makeConnection, self.server)
        self.client._call(self.client.protocol.makeConnection, self.client)

    def pump(self) -> bool:
        moved = self.client._pump()
        return self.server._pump() or moved

    def transport_lost(self) -> None:
        if self.closed and self._on_closed is not None:
            on_closed, self._on_closed = self._on_closed, None
            on_closed()


# -- endpoints -----------------------------------------------------------------


class _Attempt:
    """A connect that completes at the next flush (or never, to a black hole)."""

    def __init__(
        self, daemon: MemoryDaemon, target: tuple[str, int] | None, factory: IProtocolFactory
    ) -> None:
        self.daemon = daemon
        #: ``None`` is the daemon itself.
        self.target = target
        self.factory = factory
        self.address = _DAEMON_ADDRESS if target is None else _address(*target)
        self.result: Deferred[IProtocol] = Deferred(self._cancel)

    def _cancel(self, result: Deferred[IProtocol]) -> None:
        self.daemon._forget(self)
        self.factory.doStop()
        result.errback(ConnectingCancelledError(self.address))


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, daemon: MemoryDaemon, target: tuple[str, int] | None) -> None:
        self._daemon = daemon
        self._target = target

    def __repr__(self) -> str:
        where = "the daemon" if self._target is None else "{} port {}".format(*self._target)
        return f"<in-memory endpoint to {where}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._daemon._connect(_Attempt(self._daemon, self._target, protocolFactory))


# -- the daemon ----------------------------------------------------------------


@dataclass
class RemoteServer:
    """A fake remote registered with :meth:`MemoryDaemon.add_remote`."""

    host: str
    port: int
    factory: IProtocolFactory
    #: The protocols the factory built, one per connection, in order.
    protocols: list[Any] = field(default_factory=list)


class MemoryDaemon:
    """The daemon, its clients and its remotes, all in memory.

    ``tokens`` are accepted session tokens (strings or :class:`~tcpsocket.Token`);
    or give a whole ``config`` (a :class:`~tcpsocket.ServerConfig`, for limits
    such as ``high_water_mark``), whose ``connect`` is replaced.  ``clock``
    is what every timer runs on; by default a new
    :class:`~twisted.internet.task.Clock`.
    """

    #: :meth:`flush` gives up after this many rounds without getting quiet.
    max_rounds = 100_000

    def __init__(
        self,
        tokens: Iterable[str | Token] = (),
        *,
        config: ServerConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(tokens, str):
            raise TypeError("tokens is a list of tokens, e.g. tokens=['app-secret-for-tests']")
        tokens = list(tokens)
        if config is None:
            store = TokenStore(t if isinstance(t, Token) else Token(t) for t in tokens)
            config = ServerConfig(tokens=store)
        elif tokens:
            raise TypeError("give tokens, or a config with its tokens, not both")
        self.clock = clock if clock is not None else Clock()
        # Every name "resolves" to a documentation address; the connect then
        # goes to the remote registered under the name.  Without rules of its
        # own, the policy allows every remote (nothing here reaches a network).
        policy = config.policy
        if isinstance(policy, DestinationPolicy) and not (policy.rules or policy.per_identity):
            policy = AllowAll()
        #: The daemon's configuration (its ``connect`` opens in-memory remotes).
        self.config = replace(
            config,
            connect=self._remote_endpoint,
            resolver=FixedResolver(None, [_STAND_IN]),
            policy=policy,
        )
        #: The daemon's web site (``/``, ``/ws``, ``/api/v1/``).
        self.site = TcpSocketSite(self.config, reactor=self.clock)
        #: The URL given to :meth:`Session.connect` by :meth:`session`.
        self.url = DEFAULT_URL
        self._remotes: dict[tuple[str, int], RemoteServer | None] = {}
        self._attempts: list[_Attempt] = []
        self._connections: list[_Connection] = []
        self._ports = itertools.count(49152)

    def __repr__(self) -> str:
        return f"<MemoryDaemon with {len(self._remotes)} remotes at {self.clock.seconds():g} s>"

    # -- set-up ------------------------------------------------------------------

    def add_remote(self, host: str, port: int, factory: IProtocolFactory) -> RemoteServer:
        """Serve ``host``:``port`` with ``factory`` (as if it listened there)."""
        key = _remote_key(host, port)
        if key in self._remotes:
            raise ValueError(f"something is already at {host} port {port}")
        factory.doStart()
        remote = RemoteServer(key[0], port, factory)
        self._remotes[key] = remote
        return remote

    def add_blackhole(self, host: str, port: int) -> None:
        """Make connects to ``host``:``port`` never complete (until the connect timeout)."""
        key = _remote_key(host, port)
        if key in self._remotes:
            raise ValueError(f"something is already at {host} port {port}")
        self._remotes[key] = None

    # -- clients -----------------------------------------------------------------

    def session(self, token: str, *, origin: str | None = None) -> Deferred[Session]:
        """Open a :class:`~tcpsocket.client.Session` with ``token`` (fires during a flush)."""
        return Session.connect(
            self.url, token, reactor=self.clock, endpoint=self.endpoint(), origin=origin
        )

    def endpoint(self) -> IStreamClientEndpoint:
        """An endpoint to the daemon's web port, for ``Session.connect(..., endpoint=)``."""
        return _MemoryEndpoint(self, None)

    @property
    def sessions(self) -> set[SessionProtocol]:
        """The daemon's live sessions."""
        return self.site.session_factory.sessions

    # -- running -----------------------------------------------------------------

    def flush(self) -> None:
        """Deliver every byte and run every timer that is due, until nothing moves.

        Raises :class:`RuntimeError` if that never happens (the protocols keep
        sending each other data).
        """
        for _ in range(self.max_rounds):
            self.clock.advance(0)
            busy = self._pump()
            now = self.clock.seconds()
            if not busy and not any(c.getTime() <= now for c in self.clock.getDelayedCalls()):
                return
        raise RuntimeError(f"flush() gave up after {self.max_rounds} rounds: data keeps moving")

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, flushing after each timer that fires."""
        target = self.clock.seconds() + seconds
        self.flush()
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= target]
            if not due:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
            self.flush()
        self.clock.advance(max(0.0, target - self.clock.seconds()))
        self.flush()

    # -- internals -----------------------------------------------------------------

    def _remote_endpoint(
        self, reactor: Any, host: str, port: int, timeout: float
    ) -> IStreamClientEndpoint:
        # ServerConfig.connect: the daemon opening a remote.
        return _MemoryEndpoint(self, (host.lower(), port))

    def _connect(self, attempt: _Attempt) -> Deferred[IProtocol]:
        attempt.factory.doStart()
        self._attempts.append(attempt)
        return attempt.result

    def _forget(self, attempt: _Attempt) -> None:
        if attempt in self._attempts:
            self._attempts.remove(attempt)

    def _pump(self) -> bool:
        busy = False
        for attempt in list(self._attempts):
            if attempt in self._attempts:  # not cancelled by an earlier one's callbacks
                busy = self._complete(attempt) or busy
        for connection in list(self._connections):
            busy = connection.pump() or busy
            if connection.closed:
                self._connections.remove(connection)
        return busy

    def _complete(self, attempt: _Attempt) -> bool:
        """Connect ``attempt``; False if it waits (a black hole)."""
        server_factory: IProtocolFactory
        remote: RemoteServer | None = None
        if attempt.target is None:
            server_factory = self.site
        else:
            if attempt.target not in self._remotes:
                self._attempts.remove(attempt)
                attempt.factory.doStop()
                host, port = attempt.target
                attempt.result.errback(ConnectionRefusedError(f"{host} port {port}"))
                return True
            remote = self._remotes[attempt.target]
            if remote is None:
                return False
            server_factory = remote.factory
        self._attempts.remove(attempt)
        local = IPv4Address("TCP", _LOCAL_HOST, next(self._ports))
        client = attempt.factory.buildProtocol(attempt.address)
        if client is None:
            attempt.factory.doStop()
            attempt.result.errback(NoProtocol())
            return True
        server = server_factory.buildProtocol(local)
        refuse = server is None
        if server is None:
            server = Protocol()  # a factory that declines closes the accepted connection
        elif remote is not None:
            remote.protocols.append(server)
        connection = _Connection(client, server, local, attempt.address, attempt.factory.doStop)
        self._connections.append(connection)
        connection.start()
        if refuse:
            connection.server.loseConnection()
        attempt.result.callback(client)
        return True
