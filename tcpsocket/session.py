"""The session WebSocket: the Autobahn adapter of a session.

One :class:`SessionProtocol` per WebSocket connection at ``/ws``.  The first
binary message is the token (protocol.md A.2, B.1); after that every message
is a BaseMessage (A.3).  A malformed message ends this session only (B.2).

The session's transport-free parts live apart: the handshake decision in
:mod:`tcpsocket.handshake`, the core service and the routing to services in
:mod:`tcpsocket.routing`, backpressure towards the client in
:mod:`tcpsocket.fairness`.  This module is what needs Autobahn and a
transport: the front door (admission, origin, pings, idle and non-reading
clients), frames, timers and close codes.
"""

from __future__ import annotations

import itertools
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcpsocket import fastpath
from tcpsocket._private import (
    binary_frame_head,
    cancel_autobahn_timers,
    drop_autobahn_futures,
    drop_message_data,
    feed_frames,
    set_buffer_size,
    set_read_size,
    use_reactor_timers,
)
from tcpsocket.admission import Pending, PendingConnections, RateBudget, TokenBucket, client_address
from tcpsocket.bincode import DecodeError
from tcpsocket.budgets import Budgets
from tcpsocket.config import ServerConfig
from tcpsocket.fairness import FairShare, Waiter
from tcpsocket.handshake import Refusal, authenticate
from tcpsocket.logtext import ClientLog, LogBudget, printable
from tcpsocket.memory import HeapTrimmer
from tcpsocket.messages import (
    decode_base,
    encode_ack,
    encode_event,
    encode_response,
    split_request,
)
from tcpsocket.origins import origin_allowed
from tcpsocket.routing import ServiceRouter
from tcpsocket.services.tcpsocket.messages import data_event_head
from tcpsocket.tracking import ConnectionSet

__all__ = ["SessionFactory", "SessionProtocol"]

log = Logger()


#: WebSocket close codes (RFC 6455).
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

#: Bytes read from a client at once unless its last read filled this much: below
#: glibc's mmap threshold (128 KiB), which a larger buffer that mostly comes back
#: short (requests, echo) would cross on every read: an mmap, mremap and munmap each.
SMALL_READ = 64 * 1024

#: Frames one message may span: Autobahn keeps a list entry per fragment, so a
#: stream of empty fragments would otherwise grow without bound.
MAX_FRAGMENTS = 4096
#: Messages a client may send after its token while the token is checked; they are
#: handled after the ack (each is within the handshake message size).
MAX_EARLY_MESSAGES = 16

#: Bodies under this size are copied behind their frame's header: one ``send`` costs
#: less than a ``sendmsg`` of two pieces.
JOINED_BODY = 2048


def _no_budget() -> None:
    """The log budget of a session whose connection is gone: none."""


class SessionProtocol(WebSocketServerProtocol):
    """One client session."""

    factory: SessionFactory

    def __init__(self) -> None:
        super().__init__()
        self.identity = ""
        #: Numbers the factory's sessions from 1; the ``session`` field of their log events.
        self.session_id = 0
        self.sockets_in_use = 0
        #: The core service and this session's service instances (transport-free).
        self.router = ServiceRouter(self)
        self._authenticated = False
        self._ending = False
        # Told by the WebSocket's transport when the client is not keeping up (B.10).
        self._share = FairShare(self._set_reading)
        self._handshake_timer: IDelayedCall | None = None
        self._peer_name = "?"
        self._origin: str | None = None
        self._origin_allowed = False
        self._address = "?"
        self._admission_key: Any = None
        self._pending: Pending | None = None
        self._pings: TokenBucket | None = None
        self._cut_off = False
        self._idle_timer: IDelayedCall | None = None
        self._last_message = 0.0
        self._fragments = 0
        #: While the token is checked: its answer, and the messages that came after it.
        self._answer: Deferred[Any] | None = None
        self._early: list[bytes] | None = None
        self._last_read = 0
        self._closed_waiters: list[Deferred[None]] = []
        # Autobahn's own log lines quote the client: escaped, and budgeted before the token.
        self.log = ClientLog(log, self._log_budget)

    def _log_budget(self) -> LogBudget | None:
        return None if self._authenticated else self.factory.log_budget

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once this session's WebSocket is closed."""
        waiter: Deferred[None] = Deferred()
        if self.state == self.STATE_CLOSED:
            waiter.callback(None)
        else:
            self._closed_waiters.append(waiter)
        return waiter

    @property
    def services(self) -> dict[int, Any]:
        """This session's service instances by id."""
        return self.router.services

    # -- SessionLink -----------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        return self.factory.config

    @property
    def reactor(self) -> Any:
        return self.factory.reactor

    @property
    def connections(self) -> ConnectionSet:
        return self.factory.connections

    @property
    def congested(self) -> bool:
        return self._share.congested

    @property
    def waiting_for_room(self) -> int:
        return len(self._share)

    def wait_for_room(self, socket: Waiter) -> None:
        self._share.wait(socket)

    def stop_waiting(self, socket: Waiter) -> None:
        self._share.forget(socket)

    @property
    def budgets(self) -> Budgets:
        return self.factory.budgets

    def send_response(self, service: int, object_id: int, request: int, content: bytes) -> None:
        self._write_message(encode_response(service, object_id, request, content))

    def send_event(self, service: int, object_id: int, content: bytes) -> None:
        self._write_message(encode_event(service, object_id, content))

    def send_data_event(self, service: int, object_id: int, data: bytes) -> None:
        self._write_message(data_event_head(service, object_id, len(data)), data)

    # -- WebSocket callbacks -------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # The key of this connection's pending entry (made by the HTTP channel, or in
        # onConnect): released in onClose, however the handshake ends.
        self._admission_key = self.transport

    def onConnect(self, request: ConnectionRequest) -> None:
        self._peer_name = printable(request.peer)
        self.session_id = next(self.factory.session_ids)
        if self.factory.stopping:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "daemon stopping")
        self._address = client_address(self.transport)
        # Autobahn gives "" for no Origin header: a native client, not a web page.
        self._origin = request.origin or None
        host = request.headers.get("host")
        secure = ISSLTransport.providedBy(self.transport)
        if self._origin is not None:
            self._origin_allowed = origin_allowed(self.config, self._origin, host, secure)
            if (
                not self._origin_allowed
                and self._origin.lower() not in self.config.tokens.origins()
            ):
                self.factory.log_budget.warn(
                    log,
                    "refused WebSocket from {peer}: origin mismatch, {origin} is not allowed",
                    peer=self._peer_name,
                    origin=printable(self._origin),
                )
                raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        else:
            self._origin_allowed = True
        if self.factory.authenticated_sessions() >= self.factory.budgets.max_sessions:
            log.warn(
                "refused session from {peer}: too many sessions",
                peer=self._peer_name,
                session=self.session_id,
                reason="too many sessions",
            )
            self.config.metrics.session_refused("capacity")
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many sessions")
        # Until its token is accepted, this connection is pending: capped apart
        # from the session slots, and its first message is tiny.
        admission = self.factory.admission
        self._pending = admission.get(self._admission_key)
        if self._pending is None:
            self._pending = admission.admit(self._admission_key, self._address, self._drop)
        else:
            self._pending.drop = self._drop
        self.maxMessagePayloadSize = self.config.handshake_message_size
        self.maxFramePayloadSize = self.config.handshake_message_size
        self.factory.sessions.add(self)

    def _drop(self) -> None:
        """Make room for a newer pending connection."""
        self.factory.log_budget.warn(
            log, "dropped pending WebSocket from {peer}: too many pending", peer=self._peer_name
        )
        self.dropConnection(abort=True)

    def onPing(self, payload: bytes) -> None:
        if self._pings is None:
            per_minute = self.config.pings_per_minute
            self._pings = TokenBucket(per_minute, per_minute / 60, self.reactor.seconds())
        if not self._pings.take(self.reactor.seconds()):
            self._cut(POLICY_VIOLATION, "too many pings")
            return
        super().onPing(payload)

    def onMessageBegin(self, isBinary: bool) -> None:
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS and not self._cut_off:
            self._cut(MESSAGE_TOO_BIG, f"a message of more than {MAX_FRAGMENTS} fragments")
            drop_message_data(self)

    def next_read_size(self) -> int:
        """Bytes to read from the client next: ``read_size`` after a full small read."""
        return self.config.read_size if self._last_read >= SMALL_READ else SMALL_READ

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own formats a debug message for every read, even when
        # debug logging is off.  The replies to one read leave in one write.
        # A whole small binary message goes straight to onMessage (feed_frames):
        # onMessageBegin and onMessageFrameBegin below only count fragments, which
        # matters for fragmented messages only.
        self._last_read = len(data)
        fastpath.begin()
        try:
            feed_frames(self, data, fastpath.unmask)
        finally:
            fastpath.end()

    def onFrameData(self, payload: bytes) -> bool | None:
        # The factory sets applyMask=False: Autobahn hands over client frames
        # still masked, and they are unmasked here, without a masker per frame.
        mask: Any = self.current_frame.mask
        if mask and payload:
            offset = self.current_frame_masker.pointer() - len(payload)
            payload = fastpath.unmask(payload, mask, offset)
        result: bool | None = super().onFrameData(payload)
        return result

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own frames (pong, close) go behind the replies gathered so far.
        fastpath.flush(self.transport)
        super().sendData(data, sync, chopsize)

    def onOpen(self) -> None:
        transport: Any = self.transport
        if ITCPTransport.providedBy(transport):
            # Responses and events are small and latency-bound.
            transport.setTcpNoDelay(True)
        # Twisted Web registered its HTTP channel as the producer; the session
        # takes over, so that a slow client pauses reading from its remotes.
        transport.unregisterProducer()
        set_buffer_size(transport, self.config.session_buffer)
        # Reads apart from the buffer size (the congestion threshold): large only in bulk.
        set_read_size(transport, self)
        transport.registerProducer(self._share, True)
        # The deadline runs from TCP accept to the session's ack.
        accepted = self._pending.accepted if self._pending is not None else self.reactor.seconds()
        remaining = self.config.handshake_timeout - (self.reactor.seconds() - accepted)
        self._handshake_timer = self.reactor.callLater(
            max(0.0, remaining), self._handshake_timed_out
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._ending:
            return
        if not isBinary:
            self._fail(UNSUPPORTED_DATA, "text messages are not part of the protocol")
            return
        try:
            if self._authenticated:
                self._last_message = self.factory.reactor.seconds()
                request = split_request(payload)
                if request is not None:
                    self.router.request(*request)
                else:
                    self.router.dispatch(decode_base(payload))
            else:
                self._handshake(payload)
        except DecodeError as e:
            if not self._authenticated:
                self.config.metrics.handshake_failed("malformed")
            self._fail(PROTOCOL_ERROR, f"malformed message: {e}")
        except Exception:
            self._internal_error()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._ending = True
        # Autobahn leaves these armed when the peer drops the connection.
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._idle_timer = None
        cancel_autobahn_timers(self)
        if self._answer is not None:
            # Nobody waits for the token's answer any more: a check not started yet never is.
            self._answer.cancel()
        if self._admission_key is not None:
            self.factory.admission.release(self._admission_key)
        if self in self.factory.sessions:
            self.factory.sessions.discard(self)
            ender = "the daemon" if self.closedByMe else "the client"
            self.router.stop(by=ender)
            if self._authenticated:
                log.info(
                    "session of {identity} from {peer} ended ({how})",
                    identity=self.identity,
                    peer=self._peer_name,
                    session=self.session_id,
                    how=self._how_it_ended(wasClean, code, reason),
                    close_code=self.localCloseCode if self.closedByMe else self.remoteCloseCode,
                    closed_by=ender if wasClean or self.closedByMe else "the network",
                )
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        # Autobahn's futures hold this protocol as their result, and it holds
        # them: a cycle that would keep the session (and the buffers of its
        # transport) until the garbage collector runs.
        drop_autobahn_futures(self)
        # So are the bound methods that the shared WebSocket's turns and the
        # client log call back.
        self._share.stopProducing()
        self.router.detach()
        self.log = ClientLog(log, _no_budget)
        self.factory.trimmer.session_ended(len(self.factory.sessions))

    def _how_it_ended(self, was_clean: bool, code: int | None, reason: str | None) -> str:
        """The close code and reason really sent or received, and who closed first.

        Autobahn's ``onClose`` reports the code of the client's close frame
        (which may only echo ours, or be 1000); the daemon's own is kept apart.
        """
        if self.closedByMe and self.localCloseCode is not None:
            sent = self.localCloseReason
            text = f"code {self.localCloseCode}"
            if sent:
                text += f": {sent.decode('utf-8', 'replace')}"
            text += "; closed by the daemon"
            if not was_clean:
                text += ", the client did not complete the close handshake"
            return text
        if not was_clean:
            return f"connection lost without a close frame: {printable(reason)}"
        # The client's reason is client text: quoted and cut for the log.
        said = f": {printable(reason)}" if reason else ""
        text = f"code {code}{said}" if code is not None else "no code"
        return text + "; closed by the client"

    def end(self, code: int, reason: str) -> None:
        """Close the session with a WebSocket close ``code`` and ``reason``."""
        self._ending = True
        if self.state == self.STATE_CONNECTING:
            # Not a WebSocket yet: no close frame to send.
            self.dropConnection(abort=True)
            return
        if self.state != self.STATE_OPEN:
            return
        # sendClose() only takes application codes; protocol codes go in the
        # frame directly.  A close reason is at most 123 bytes of UTF-8.
        raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        self.sendCloseFrame(code, raw, isReply=False)

    # -- internals -----------------------------------------------------------

    def _write_message(self, head: bytes, body: bytes = b"") -> None:
        """Send ``head + body`` as one binary message, without copying a large ``body``.

        This writes the frame itself rather than through ``sendMessage``,
        which copies a DATA payload several times: a server frame is just a
        header (FIN, opcode 2, unmasked length) before the payload.  Sessions
        negotiate no extensions and never fragment, so the frames are the
        ones Autobahn would write.
        """
        if self._ending or self.state != self.STATE_OPEN:
            return
        frame = binary_frame_head(len(head) + len(body))
        if len(body) < JOINED_BODY:
            fastpath.write(self.transport, (frame + head + body,))
        else:
            fastpath.write(self.transport, (frame + head, body))

    def _fail(self, code: int, reason: str) -> None:
        budget = self._log_budget()
        line = "closing session from {peer}: {reason}"
        if budget is None:
            log.warn(line, peer=self._peer_name, reason=printable(reason), session=self.session_id)
        else:
            budget.warn(
                log, line, peer=self._peer_name, reason=printable(reason), session=self.session_id
            )
        self.end(code, reason)

    def _cut(self, code: int, reason: str) -> None:
        """Close with ``code`` and read nothing more from this client (it misbehaves)."""
        if not self._ending:
            self._fail(code, reason)
        self._cut_off = True
        self._set_reading(False)

    def _set_reading(self, reading: bool) -> None:
        """Read the client's frames, or stop (TCP back-pressure does the rest)."""
        transport: Any = self.transport
        if transport is None or (reading and self._cut_off):
            return
        if reading:
            transport.resumeProducing()
        else:
            transport.pauseProducing()

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self.config.metrics.handshake_failed("timeout")
        if self._early is not None:
            self._fail(POLICY_VIOLATION, "the token could not be checked in time")
        else:
            self._fail(POLICY_VIOLATION, "no session handshake in time")

    def _refuse(self, refusal: Refusal) -> None:
        """Answer the handshake with a negative ack, then close (log lines are budgeted)."""
        self._write_message(encode_ack(False))
        if refusal.cause is None:
            self.factory.log_budget.warn(
                log,
                "closing session from {peer}: {reason}",
                peer=self._peer_name,
                reason=printable(refusal.reason),
            )
        else:
            self.factory.log_budget.emit(
                log,
                "error",
                "closing session from {peer}: {reason}: {cause}",
                peer=self._peer_name,
                reason=refusal.reason,
                cause=printable(refusal.cause),
                session=self.session_id,
            )
        self.end(refusal.code, refusal.reason)

    def _sessions_full(self) -> bool:
        return self.factory.authenticated_sessions() >= self.factory.budgets.max_sessions

    def _handshake(self, payload: bytes) -> None:
        if self._early is not None:
            # The token is being checked: what follows it waits for the answer.
            if len(self._early) >= MAX_EARLY_MESSAGES:
                self._cut(POLICY_VIOLATION, "too many messages before the session's ack")
            else:
                self._early.append(payload)
            return
        factory = self.factory
        answer = authenticate(
            payload,
            config=self.config,
            failures=factory.failures,
            address=self._address,
            origin=self._origin,
            origin_allowed=self._origin_allowed,
            sessions_full=self._sessions_full,
        )
        # Until it fires (at once, unless the store must wait) the session stays
        # pending: its admission entry, the handshake deadline and a close still apply.
        self._early = []
        self._answer = answer
        answer.addCallback(self._answered).addErrback(self._internal_error)

    def _internal_error(self, failure: Failure | None = None) -> None:
        """Log ``failure`` (the exception being handled, if None) and close with 1011."""
        log.failure(
            "internal error in session from {peer}",
            failure,
            peer=self._peer_name,
            session=self.session_id,
        )
        self._fail(INTERNAL_ERROR, "internal error")

    def _answered(self, granted: Any) -> None:
        """Apply the handshake's answer, unless the session ended while it was awaited."""
        early, self._early = self._early or [], None
        self._answer = None
        if self._ending or self.state != self.STATE_OPEN:
            return  # closed by the client, the deadline or the daemon stopping: no ack
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None
        with fastpath.batch():
            if isinstance(granted, Refusal):
                self._refuse(granted)
                return
            self._accept(granted)
            for payload in early:
                self.onMessage(payload, True)

    def _accept(self, token: Any) -> None:
        self._authenticated = True
        self.identity = token.identity
        self.router.permissions = frozenset(token.permissions)
        self.maxMessagePayloadSize = self.factory.maxMessagePayloadSize
        self.maxFramePayloadSize = self.factory.maxFramePayloadSize
        self.factory.admission.release(self._admission_key)
        self._pending = None
        self._write_message(encode_ack(True))
        self.config.metrics.session_started()
        log.info(
            "session of {identity} from {peer} started",
            identity=printable(self.identity),
            peer=self._peer_name,
            session=self.session_id,
        )
        if self.config.idle_timeout:
            self._last_message = self.reactor.seconds()
            self._idle_timer = self.reactor.callLater(self.config.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        """Close the session once it has had no socket and no message for the idle timeout."""
        timeout = self.config.idle_timeout
        quiet = self.reactor.seconds() - self._last_message
        if quiet < timeout or self.sockets_in_use:
            self._idle_timer = self.reactor.callLater(
                timeout - quiet if quiet < timeout else timeout, self._idle_check
            )
            return
        self._idle_timer = None
        self._fail(GOING_AWAY, "idle timeout")


class SessionFactory(WebSocketServerFactory):
    """Creates sessions; holds the configuration and the live sessions."""

    protocol = SessionProtocol  # type: ignore[assignment]

    def __init__(self, config: ServerConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(reactor=reactor)
        self.config = config
        self.reactor = reactor
        use_reactor_timers(self, reactor)
        self.sessions: set[SessionProtocol] = set()
        #: What the sessions share: socket, byte and lookup budgets, own endpoints.
        self.budgets = Budgets(config, reactor)
        #: Remote connections still open, also those flushing after their session ended.
        self.connections = ConnectionSet()
        #: Set when the daemon stops: new sessions are refused.
        self.stopping = False
        self.trimmer = HeapTrimmer(reactor)
        self.session_ids = itertools.count(1)
        config.metrics.watch_sessions(self.sessions)
        #: Connections without a session yet (shared with the Site's HTTP channels).
        self.admission = PendingConnections(
            reactor, config.max_pending, config.max_pending_per_address
        )
        #: Failed handshakes per client address.
        self.failures = RateBudget(reactor, config.failed_handshakes_per_minute)
        #: Bounds the log lines clients can cause before they are authenticated.
        self.log_budget = LogBudget(reactor)
        self.setProtocolOptions(
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            openHandshakeTimeout=config.handshake_timeout,
            closeHandshakeTimeout=1.0,
            autoPingInterval=config.keepalive_interval,
            autoPingTimeout=config.keepalive_timeout,
            webStatus=False,
            # Client frames are unmasked by SessionProtocol.onFrameData (fastpath.unmask).
            applyMask=False,
            # Protocol errors Autobahn finds itself (an oversize message: 1009,
            # a bad frame: 1002) close with that code and a reason (B.2), not
            # by dropping the TCP connection.
            failByDrop=False,
        )

    def listening_on(self, address: IAddress) -> None:
        """Tell the sessions that the daemon listens at ``address`` (a port's ``getHost()``).

        Sessions may never open the daemon's own endpoints.
        """
        self.budgets.own_endpoints.add(address)

    def authenticated_sessions(self) -> int:
        """Sessions whose token was accepted (what ``max_sessions`` counts)."""
        return sum(1 for session in self.sessions if session._authenticated)

    def websocket_resource(self) -> WebSocketResource:
        """A ``twisted.web`` resource serving this factory's sessions (mount it at ``/ws``)."""
        return WebSocketResource(self)
