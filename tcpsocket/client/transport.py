"""An ``ITransport`` over a :class:`TcpSocket`, so Twisted protocols run unchanged.

Writes are pipelined (one ``send`` per chunk; the WebSocket keeps them in
order).  A ``send`` answered False pauses a registered producer until DRAIN.
``pauseProducing``/``resumeProducing`` map to ``suspend``/``resume``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    ISSLTransport,
    ITLSTransport,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from tcpsocket.client.errors import SessionClosed, TcpSocketError
from tcpsocket.client.events import CLOSE_EVENT, DATA_EVENT, DRAIN_EVENT, ERROR_EVENT
from tcpsocket.client.socket import TcpSocket

__all__ = ["CHUNK_SIZE", "TcpSocketAddress", "TcpSocketTransport"]

#: Writes are sent in requests of at most this many bytes.
CHUNK_SIZE = 64 * 1024


def _ignore(_: object) -> None:
    return None


@implementer(IAddress)
@dataclass(frozen=True)
class TcpSocketAddress:
    """One end of a connection made through the daemon at ``daemon`` (the session URL).

    The peer is the host and port that were opened; the local end is on the
    daemon's machine and not known: ``host`` is ``""`` and ``port`` 0.
    """

    host: str
    port: int
    daemon: str


@implementer(ITransport, IConsumer, IPushProducer)
class TcpSocketTransport:
    """The transport of ``protocol``, writing to and reading from ``socket``."""

    def __init__(
        self, socket: TcpSocket, protocol: IProtocol, clock: Any, server_name: str = ""
    ) -> None:
        self.socket = socket
        #: The name ``startTLS`` verifies (default: the host that was opened).
        self.server_name = server_name
        self.protocol = protocol
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self._clock = clock
        self._lost_callbacks: list[Callable[[], object]] = []
        # reading
        self._reading_paused = False
        self._held: deque[bytes] = deque()
        self._close_held = False
        self._error: str | None = None
        self._aborted = False
        # writing
        self._congested = False
        self._in_flight = 0
        self._producer: Any = None
        self._streaming = False
        self._producer_paused = False
        self._close_after_producer = False
        self._close_sent = False
        if hasattr(socket, "upgrade_to_secure"):
            # A SecureTcpSocketManager socket: STARTTLS works (ITLSTransport).
            alsoProvides(self, ITLSTransport)
            if getattr(socket, "tls", None) is not None and socket.tls.secure:  # type: ignore[attr-defined]
                alsoProvides(self, ISSLTransport)
        self._pull_call: IDelayedCall | None = None
        self._handlers: tuple[tuple[int, Callable[[Any], None]], ...] = (
            (DATA_EVENT, self._on_data),
            (DRAIN_EVENT, self._on_drain),
            (ERROR_EVENT, self._on_error),
            (CLOSE_EVENT, self._on_close),
        )

    def start(self) -> None:
        """Listen to the socket's events and connect the protocol."""
        for event, handler in self._handlers:
            self.socket.add_event_listener(event, handler)
        self.protocol.makeConnection(self)

    def notify_lost(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` after the protocol's ``connectionLost``."""
        self._lost_callbacks.append(callback)

    # -- ITransport ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send ``data``, in order (ignored once the close was sent)."""
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if self._close_sent or self._aborted or self.disconnected:
            return
        for start in range(0, len(data), CHUNK_SIZE):
            self._in_flight += 1
            sent = self.socket.send(data[start : start + CHUNK_SIZE])
            sent.addCallbacks(self._sent, self._send_failed)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Send each of ``data``, in order."""
        self.write(b"".join(data))

    def startTLS(self, contextFactory: Any = None, normal: bool = True) -> None:
        """``ITLSTransport.startTLS``: the daemon upgrades the connection (STARTTLS).

        What was written before goes in the clear, what follows encrypted: the
        upgrade request travels in order between the writes.  The daemon does
        TLS, verifying the certificate with its own trust store for
        :attr:`server_name`; ``contextFactory``'s settings are not used.  If the
        handshake fails, the daemon closes the connection with the reason.
        """
        upgrade = getattr(self.socket, "upgrade_to_secure", None)
        if upgrade is None:
            raise TypeError("this socket was not opened through SecureTcpSocketManager")
        alsoProvides(self, ISSLTransport)
        upgrade(self.server_name).addErrback(_ignore)

    def loseConnection(self) -> None:
        """Close after what was written (and after a registered producer unregisters)."""
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        if self._producer is not None:
            self._close_after_producer = True
        else:
            self._close()

    def abortConnection(self) -> None:
        """Drop the connection now: release the socket; ``connectionLost(ConnectionAborted)``.

        The wire protocol has no abortive close: the daemon closes the socket
        after writing what it had already accepted.
        """
        if self.disconnected or self._aborted:
            return
        self._aborted = True
        self.disconnecting = True
        self.socket.release().addErrback(_ignore)
        self._clock.callLater(0, self._connection_lost)

    def getPeer(self) -> TcpSocketAddress:
        """The remote host and port, as opened through the daemon."""
        return TcpSocketAddress(self.socket.host, self.socket.port, self.socket.session.url)

    def getHost(self) -> TcpSocketAddress:
        """The local end: on the daemon's machine, address unknown."""
        return TcpSocketAddress("", 0, self.socket.session.url)

    # -- IConsumer -------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register a push (``streaming``) or pull producer of what we write."""
        if self._producer is not None:
            raise RuntimeError(f"{self._producer!r} is already registered")
        if self.disconnected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if streaming:
            if self._congested:
                self._pause_producer()
        else:
            self._schedule_pull()

    def unregisterProducer(self) -> None:
        """Forget the producer; a pending ``loseConnection`` proceeds."""
        self._producer = None
        self._producer_paused = False
        self._cancel_pull()
        if self._close_after_producer:
            self._close_after_producer = False
            self._close()

    # -- IPushProducer (reading) -----------------------------------------------

    def pauseProducing(self) -> None:
        """Stop delivering data: the daemon suspends reading from the remote."""
        if self._reading_paused or self.disconnected:
            return
        self._reading_paused = True
        self.socket.suspend().addErrback(_ignore)

    def resumeProducing(self) -> None:
        """Deliver data again: what came meanwhile first."""
        if not self._reading_paused or self.disconnected:
            return
        self._reading_paused = False
        self.socket.resume().addErrback(_ignore)
        while self._held and not self._reading_paused and not self.disconnected:
            self.protocol.dataReceived(self._held.popleft())
        if self._close_held and not self._held:
            self._connection_lost()

    def stopProducing(self) -> None:
        """Close the connection."""
        self.loseConnection()

    # -- socket events -----------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self.disconnected:
            return
        if self._reading_paused or self._held:
            self._held.append(data)
        else:
            self.protocol.dataReceived(data)

    def _on_drain(self, _: bool) -> None:
        self._congested = False
        if self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()
        self._schedule_pull()

    def _on_error(self, reason: str) -> None:
        if self._error is None:
            self._error = reason

    def _on_close(self, _: None) -> None:
        if self._held and self._reading_paused and not self.disconnecting:
            self._close_held = True  # delivered after the held data, on resume
        else:
            self._connection_lost()

    # -- writing ---------------------------------------------------------------

    def _sent(self, below_high_water: bool) -> None:
        self._in_flight -= 1
        if not below_high_water:
            self._congested = True
            self._pause_producer()
        self._schedule_pull()

    def _send_failed(self, failure: Failure) -> None:
        self._in_flight -= 1
        if failure.check(SessionClosed) or self.disconnected:
            return  # CLOSE comes from the session's end
        if self._error is None:
            value = failure.value
            reason = value.reason if isinstance(value, TcpSocketError) else str(value)
            self._error = f"send failed: {reason}"
        self.disconnecting = True
        self._close()

    def _close(self) -> None:
        """Ask the daemon for a graceful close (once); nothing is written after it."""
        if not self._close_sent and not self.disconnected:
            self._close_sent = True
            self.socket.close().addErrback(_ignore)

    def _pause_producer(self) -> None:
        if self._producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _schedule_pull(self) -> None:
        """Ask a pull producer for more once the previous writes are answered."""
        if (
            self._producer is None
            or self._streaming
            or self._congested
            or self._in_flight
            or self._pull_call is not None
            or self.disconnected
        ):
            return
        self._pull_call = self._clock.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_call = None
        if self._producer is not None and not self._streaming and not self._congested:
            self._producer.resumeProducing()

    def _cancel_pull(self) -> None:
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None

    # -- the end -----------------------------------------------------------------

    def _connection_lost(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self.disconnecting = False
        self._held.clear()
        self._cancel_pull()
        for event, handler in self._handlers:
            self.socket.remove_event_listener(event, handler)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        reason: Exception
        if self._aborted:
            reason = ConnectionAborted()
        elif self._error is not None:
            reason = ConnectionLost(self._error)
        else:
            reason = ConnectionDone()
        self.protocol.connectionLost(Failure(reason))
        callbacks, self._lost_callbacks = self._lost_callbacks, []
        for callback in callbacks:
            callback()
