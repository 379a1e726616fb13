"""One TCP connection to a remote host, seen from the session that opened it.

:class:`RemoteSocket` is the Twisted protocol of the connection and owns its
flow control (protocol.md B.5-B.8):

* upstream, ``send`` queues bytes behind the transport, which tells us through
  an :class:`~twisted.internet.interfaces.IPushProducer` when its buffer is
  full and when it has drained; ``send`` answers whether the unsent bytes are
  under the high-water mark and one DRAIN follows a ``False``;
* downstream, reading from the remote pauses while the client has suspended
  the socket, or while held (undelivered) DATA exceeds the high-water mark;
  DATA is also held while the session's WebSocket is congested, and the
  socket then waits for a turn (:mod:`tcpsocket.fairness`);
* events leave in the order they happened; DATA waits for a DATA listener,
  and CLOSE is always last and sent once.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket import fastpath
from tcpsocket._private import set_buffer_size, set_read_size, transport_unsent
from tcpsocket.services.tcpsocket.messages import (
    Event,
    Reply,
    encode_data_event,
    encode_drain_event,
    encode_error_event,
    encode_reply,
)

if TYPE_CHECKING:
    from tcpsocket.config import ServerConfig
    from tcpsocket.tracking import ConnectionSet

__all__ = ["RemoteSocket", "SocketError", "SocketOwner", "describe_failure"]

log = Logger()

_CLOSE_EVENT = encode_reply(Reply.CLOSE_EVENT)
_DRAIN_EVENT = encode_drain_event(True)


class SocketError(Exception):
    """A socket request cannot be done; the message is the reason for the client."""


class _State(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


def describe_failure(failure: Failure) -> str:
    """A short human-readable reason for a connection failure."""
    value = failure.value
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, error.DNSLookupError):
        return "host name lookup failed"
    # HostnameEndpoint fails a cancelled connect (our connect timeout) with
    # ConnectingCancelledError, which is not a CancelledError.
    timeouts = (
        error.TimeoutError,
        error.TCPTimedOutError,
        error.ConnectingCancelledError,
        defer.TimeoutError,
        defer.CancelledError,
    )
    if isinstance(value, timeouts):
        return "connect timeout"
    if isinstance(value, error.NoRouteError):
        return "host unreachable"
    if isinstance(value, error.ConnectionLost):
        return "connection reset by peer"
    if isinstance(value, error.ConnectionDone):
        return "connection closed"
    text = str(value).strip() or type(value).__name__
    return text.rstrip(".")


class SocketOwner:
    """Where a socket's events go: a session's service (or nowhere once released)."""

    #: Its sockets whose last read filled the high-water mark (bulk transfers);
    #: kept by the sockets.  Only a sole one reads ``read_size`` at once.
    bulk_readers = 0

    def send_event(self, socket: RemoteSocket, content: bytes) -> None:
        """Deliver one event of ``socket`` to the client."""

    def send_data(self, socket: RemoteSocket, data: bytes) -> None:
        """Deliver a DATA event of ``socket`` (owners may avoid copying ``data``)."""
        self.send_event(socket, encode_data_event(data))

    def socket_finished(self, socket: RemoteSocket) -> None:
        """CLOSE of ``socket`` was delivered: nothing more will come from it."""

    @property
    def congested(self) -> bool:
        """Whether the client's WebSocket has too much queued."""
        return False

    @property
    def waiting_for_room(self) -> int:
        """How many sockets hold DATA because of congestion."""
        return 0

    def wait_for_room(self, socket: RemoteSocket) -> None:
        """``socket`` holds DATA because of congestion: ``serve_turn`` it when there is room."""

    def stop_waiting(self, socket: RemoteSocket) -> None:
        """``socket`` no longer waits for room (released or finished)."""


#: Events go nowhere once the owner lets go of a socket.
DETACHED = SocketOwner()


@implementer(IPushProducer)
class _TransportFlow:
    """Told by the TCP transport when its write buffer is full or drained."""

    def __init__(self, socket: RemoteSocket) -> None:
        self._socket = socket

    def pauseProducing(self) -> None:
        self._socket._transport_full()

    def resumeProducing(self) -> None:
        self._socket._transport_drained()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class RemoteSocket(Protocol):
    """A client's TCP connection to a remote, with its buffers and events."""

    def __init__(
        self,
        config: ServerConfig,
        owner: SocketOwner,
        clock: Any,
        connections: ConnectionSet | None = None,
    ) -> None:
        self.config = config
        self.owner = owner
        self._connections = connections
        self.socket_id = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._clock = clock
        self._state = _State.CONNECTING
        # upstream
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._writable = True
        self._drain_owed = False
        self._drain_pending = False
        # downstream
        # A DATA event cut by a shared turn keeps its rest as a view (not copied).
        self._events: deque[tuple[Event, bytes | memoryview]] = deque()
        self._held = 0
        self._bulk = False
        self._small = min(config.read_size, config.high_water_mark)
        self._enabled: set[Event] = set()
        self._suspends = 0
        self._reading_paused = False
        self._close_delivered = False
        self._close_timer: IDelayedCall | None = None
        self._error: str | None = None
        #: Who closed first: "the client", "the remote" or "the daemon".
        self.closed_by: str | None = None
        self._lost_in_transport = 0

    # -- introspection -------------------------------------------------------

    @property
    def state(self) -> str:
        """``connecting``, ``open``, ``closing`` or ``closed``."""
        return self._state.value

    @property
    def queued_upstream(self) -> int:
        """Accepted bytes not yet handed to the TCP transport."""
        return self._queued

    @property
    def held_downstream(self) -> int:
        """Received bytes not yet delivered to the client."""
        return self._held

    @property
    def reading_paused(self) -> bool:
        """Whether reading from the remote is paused."""
        return self._reading_paused

    @property
    def finished(self) -> bool:
        """Whether the connection is gone and CLOSE was delivered."""
        return self._close_delivered

    # -- Protocol ------------------------------------------------------------

    def connectionMade(self) -> None:
        self._state = _State.OPEN
        if self._connections is not None:
            self._connections.add(self)
        self.config.metrics.socket_connected(self)
        transport: Any = self.transport
        # The transport's buffer size is where it pauses us as a producer (a
        # contract of send); it reads apart from it, as next_read_size() says.
        set_buffer_size(transport, self.config.high_water_mark)
        set_read_size(transport, self)
        transport.registerProducer(_TransportFlow(self), True)
        if ITCPTransport.providedBy(transport):
            # Interactive protocols (SSH, IRC) must not wait for Nagle.
            transport.setTcpNoDelay(True)
        self._update_reading()

    def next_read_size(self) -> int:
        """How many bytes to read from the remote at once (asked before every read).

        ``read_size`` for the one bulk transfer of its owner (its last read
        filled the high-water mark, and no other socket's did) that the client
        takes (DATA enabled, not suspended): while DATA goes straight to the
        client, or, on a congested session, while it holds nothing and no other
        socket waits for a turn.  Else at most the mark: held DATA stays under
        twice the mark, concurrent transfers share the WebSocket in turns of
        equal size, and small exchanges (echo) allocate no large read buffer.
        """
        owner = self.owner
        if not self._bulk or owner.bulk_readers > 1 or not self._waits_for_room():
            return self._small
        if owner.congested and (self._held or owner.waiting_for_room):
            return self._small
        return self.config.read_size

    def dataReceived(self, data: bytes) -> None:
        size = len(data)
        self.bytes_received += size
        if (size >= self._small) is not self._bulk:
            self._set_bulk(not self._bulk)
        events = self._events
        if not events:
            if self._data_flows():
                if self.owner.bulk_readers > 1:
                    # Concurrent bulk transfers: their reads of this reactor turn
                    # reach the WebSocket in one system call, not one each.
                    fastpath.gather_this_turn(self._clock)
                self.owner.send_data(self, data)
                return
            if self._waits_for_room():
                # Only congestion holds it: take a turn when the WebSocket drains.
                self.owner.wait_for_room(self)
        events.append((Event.DATA, data))
        self._held += len(data)
        if self._held > self.config.high_water_mark:
            self._update_reading()

    def readConnectionLost(self) -> None:
        # The remote sent FIN: write what is still queued, then close.
        self.close(by="the remote")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._set_bulk(False)
        self._state = _State.CLOSED
        self.config.metrics.socket_closed(self)
        self._cancel_close_timer()
        if self.closed_by is None:
            self.closed_by = "the remote"
        unsent = self._queued + self._lost_in_transport + transport_unsent(self.transport)
        self._queue.clear()
        self._queued = 0
        if self._error is None and not reason.check(error.ConnectionDone):
            self._error = describe_failure(reason)
        if self._error is None and unsent:
            self._error = "connection closed by the remote"
        if self._error is not None:
            text = self._error
            if unsent:
                text += f"; {unsent} accepted bytes were not delivered"
            self._events.append((Event.ERROR, encode_error_event(text)))
        self._events.append((Event.CLOSE, _CLOSE_EVENT))
        emit = log.error if unsent else log.info
        emit(
            "socket {id} to {peer} closed by {closer}: {sent} bytes sent, "
            "{received} received{why}{lost}",
            id=self.socket_id,
            peer=self._peer(),
            closer=self.closed_by,
            sent=self.bytes_sent,
            received=self.bytes_received,
            why=f" ({self._error})" if self._error else "",
            lost=f"; {unsent} accepted bytes were NOT delivered" if unsent else "",
            undelivered=unsent,
            reason=self._error,
            remote=self._peer(),
        )
        if self._connections is not None:
            self._connections.discard(self, unsent)
        self._pump()

    # -- requests from the client -------------------------------------------

    def send(self, data: bytes) -> bool:
        """Accept ``data`` for the remote; return whether we are under the high-water mark."""
        if self._state is not _State.OPEN:
            raise SocketError(f"socket is {self._state.value}")
        if self._queued + len(data) > self.config.max_send_buffer:
            raise SocketError(
                f"send buffer full: {self._queued} bytes waiting, "
                f"limit {self.config.max_send_buffer}"
            )
        self.bytes_sent += len(data)
        if data:
            if self._writable and not self._queue:
                fastpath.write(self.transport, (data,))
            else:
                self._queue.append(data)
                self._queued += len(data)
        below = self._writable and self._queued <= self.config.high_water_mark
        if not below:
            self._drain_owed = True
        return below

    def suspend(self) -> None:
        """Stop reading from the remote and hold DATA; suspends nest.

        This works until CLOSE is delivered, even once the connection is gone.
        """
        self._suspends += 1
        self._update_reading()

    def resume(self) -> None:
        """Undo one :meth:`suspend`."""
        if not self._suspends:
            raise SocketError("socket is not suspended")
        self._suspends -= 1
        self._pump()

    def close(self, by: str = "the client") -> None:
        """Write what is queued, then close; idempotent.  ``by``: who asked, for the log."""
        if self._state in (_State.CLOSING, _State.CLOSED):
            return
        if self.closed_by is None:
            self.closed_by = by
        self._state = _State.CLOSING
        self._close_timer = self._clock.callLater(self.config.close_timeout, self._close_timed_out)
        self._finish_close()

    def abort(self, reason: str) -> None:
        """Drop the connection now, reporting ``reason``."""
        if self._state is _State.CLOSED:
            return
        if self._error is None:
            self._error = reason
        if self.closed_by is None:
            self.closed_by = "the daemon"
        self._state = _State.CLOSING
        # The transport drops what it holds: count it as not delivered.
        lost = fastpath.discard(self.transport)
        self._lost_in_transport = transport_unsent(self.transport) + lost
        self.transport.abortConnection()  # type: ignore[union-attr]

    def detach(self, by: str = "the client") -> None:
        """The owner lets go: drop undelivered events, flush what was accepted, close."""
        self.owner.stop_waiting(self)
        self._set_bulk(False)
        self.owner = DETACHED
        self._events.clear()
        self._held = 0
        self._enabled = set(Event)
        self._suspends = 0
        self._update_reading()
        self.close(by)

    def set_event_enabled(self, event: Event, enabled: bool) -> None:
        """EnableEvent/DisableEvent for this socket."""
        if enabled:
            self._enabled.add(event)
            if event is Event.DRAIN and self._drain_pending:
                self._drain_pending = False
                self.owner.send_event(self, _DRAIN_EVENT)
            self._pump()
        else:
            self._enabled.discard(event)

    def serve_turn(self, shared: bool = False) -> bool:
        """The WebSocket has room: deliver one held DATA event (and what follows it up
        to the next DATA); return whether more DATA waits for the client.

        ``shared``: other sockets wait for a turn too, so a DATA event over the
        high-water mark gives only that many bytes this turn (turns stay fair by
        bytes when one large read was held).
        """
        events = self._events
        quantum = self.config.high_water_mark
        if shared and events and events[0][0] is Event.DATA and len(events[0][1]) > quantum:
            if not self._data_flows():
                return False
            content = memoryview(events[0][1])
            events[0] = (Event.DATA, content[quantum:])
            self._held -= quantum
            self.owner.send_data(self, bytes(content[:quantum]))
            self._update_reading()
            return self._waits_for_room()
        self._pump(data_events=1)
        return bool(self._events) and self._events[0][0] is Event.DATA and self._waits_for_room()

    # -- internals -----------------------------------------------------------

    def _set_bulk(self, bulk: bool) -> None:
        if bulk is not self._bulk and self.owner is not DETACHED:
            self.owner.bulk_readers += 1 if bulk else -1
        self._bulk = bulk

    def _transport_full(self) -> None:
        self._writable = False

    def _transport_drained(self) -> None:
        self._writable = True
        queue = self._queue
        write = self.transport.write  # type: ignore[union-attr]
        while queue and self._writable:
            chunk = queue.popleft()
            self._queued -= len(chunk)
            write(chunk)
        if self._state is _State.CLOSING:
            self._finish_close()
        elif self._drain_owed and self._writable and not queue:
            self._drain_owed = False
            if Event.DRAIN in self._enabled:
                self.owner.send_event(self, _DRAIN_EVENT)
            else:
                self._drain_pending = True

    def _finish_close(self) -> None:
        if not self._queue and self.transport is not None:
            # A transport with a registered producer does not close until the
            # producer is unregistered; it writes what it holds, then FIN.
            fastpath.flush(self.transport)
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()

    def _close_timed_out(self) -> None:
        self._close_timer = None
        self.abort(f"close timed out after {self.config.close_timeout:g} s")

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None

    def _waits_for_room(self) -> bool:
        """Whether the client takes DATA, so that only congestion may hold it."""
        return Event.DATA in self._enabled and not self._suspends

    def _data_flows(self) -> bool:
        """Whether DATA may go to the client now."""
        return self._waits_for_room() and not self.owner.congested

    def _pump(self, data_events: int = -1) -> None:
        """Deliver queued events in order, as far as listeners and flow control allow.

        At most ``data_events`` DATA events go (all if negative).
        """
        events = self._events
        enabled = self._enabled
        while events:
            event, content = events[0]
            if event is Event.DATA:
                if not data_events:
                    break
                if not self._data_flows():
                    if self._waits_for_room():
                        self.owner.wait_for_room(self)
                    break
                data_events -= 1
            if event not in enabled:
                if event is Event.ERROR and Event.CLOSE in enabled:
                    # Nobody listens for ERROR; CLOSE must not wait for it.
                    events.popleft()
                    continue
                break
            events.popleft()
            # bytes() of bytes is the same object: only a cut event's rest is copied.
            if event is Event.DATA:
                self._held -= len(content)
                self.owner.send_data(self, bytes(content))
                continue
            if event is Event.CLOSE:
                self._close_delivered = True
            self.owner.send_event(self, bytes(content))
            if event is Event.CLOSE:
                self.owner.socket_finished(self)
        self._update_reading()

    def _update_reading(self) -> None:
        if self._state not in (_State.OPEN, _State.CLOSING) or self.transport is None:
            return
        # A congested session does not pause its sockets: each one stops at
        # its own high-water mark (and waits for a turn, see fairness.py).
        paused = self._suspends > 0 or self._held > self.config.high_water_mark
        if paused != self._reading_paused:
            self._reading_paused = paused
            transport: Any = self.transport
            if paused:
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    def _peer(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host, port = getattr(peer, "host", "?"), getattr(peer, "port", "?")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
