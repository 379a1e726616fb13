"""A session with the daemon: the WebSocket, the token handshake, requests and events.

One :class:`Session` per WebSocket connection.  Requests get odd ids from 3
(like the JS client) and each is matched with its one response by id; events
go to the object registered for their ``(service, object)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from tcpsocket._private import use_reactor_timers
from tcpsocket.bincode import Buffer, DecodeError, Reader
from tcpsocket.client.errors import (
    GetServiceError,
    PermissionDenied,
    ProtocolError,
    SessionClosed,
    SessionRefused,
    TcpSocketClientError,
)
from tcpsocket.messages import (
    CORE_SERVICE,
    Core,
    GetService,
    GetServiceResult,
    HasService,
    Kind,
    ObjectRef,
    decode_base,
    decode_core_response,
    encode_handshake,
    encode_request,
)

__all__ = ["EventSink", "Session"]

log = Logger()

T = TypeVar("T")

#: The close code and reason the client sends when the application closes.
NORMAL_CLOSE = 1000


class EventSink(Protocol):
    """What :meth:`Session.register` routes events to."""

    def event_received(self, content: Buffer) -> None:
        """One event's content for this object."""

    def session_ended(self, reason: SessionClosed) -> None:
        """The session is over: no more events will come."""


def _kind_name(result: GetServiceResult) -> str:
    return "".join(word.capitalize() for word in result.name.split("_"))


def _decode_get_service(content: Buffer) -> int:
    response = decode_core_response(content)
    if response.op is not Core.GET_SERVICE or response.result is None:
        raise ProtocolError(f"unexpected core response {response.op.name} to GetService")
    if response.result is GetServiceResult.SUCCESS:
        assert isinstance(response.value, int)
        return response.value
    detail = response.value if isinstance(response.value, str) else None
    raise GetServiceError(_kind_name(response.result), detail)


def _bool_decoder(op: Core) -> Callable[[Buffer], bool]:
    def decode(content: Buffer) -> bool:
        response = decode_core_response(content)
        if response.op is not op:
            raise ProtocolError(f"unexpected core response {response.op.name} to {op.name}")
        return response.value is True

    return decode


class Session:
    """An open session; create it with :meth:`connect`."""

    def __init__(self, protocol: Any, url: str, reactor: Any) -> None:
        self.url = url
        self.reactor = reactor
        self._protocol = protocol
        self._next_request = 3
        self._pending: dict[int, tuple[Deferred[Any], Callable[[Buffer], Any]]] = {}
        self._sinks: dict[tuple[int, int], EventSink] = {}
        self._ended: SessionClosed | None = None
        self._gone = False
        self._waiters: list[Deferred[SessionClosed]] = []

    @classmethod
    def connect(
        cls,
        url: str,
        token: str,
        *,
        reactor: Any = None,
        endpoint: IStreamClientEndpoint | None = None,
        origin: str | None = None,
    ) -> Deferred[Session]:
        """Open a session at ``url`` (``ws://host:port/ws``) with ``token``.

        The connection goes through ``endpoint`` if given, else to the URL's
        host and port (TLS for ``wss://``).  Fails with
        :class:`SessionRefused` for a bad token and :class:`SessionClosed` if
        the WebSocket ends before the handshake completes.
        """
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        factory = _SessionFactory(url, token, reactor, origin)
        if endpoint is None:
            endpoint = _endpoint_for(factory, reactor)
        return defer.ensureDeferred(_connect(endpoint, factory))

    # -- state ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether calls can be made (the session neither closed nor lost)."""
        return self._ended is None

    def when_closed(self) -> Deferred[SessionClosed]:
        """Fires, never fails, with a :class:`SessionClosed` once the WebSocket is gone."""
        if self._gone:
            assert self._ended is not None
            return defer.succeed(self._ended)
        waiter: Deferred[SessionClosed] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def close(self) -> Deferred[None]:
        """End the session: pending calls fail with :class:`SessionClosed` at once,
        sockets get CLOSE (the daemon flushes and closes them); fires when the
        WebSocket is gone."""
        if self._ended is None:
            self._end(SessionClosed("session closed", NORMAL_CLOSE, lost=False))
            self._protocol.sendClose(NORMAL_CLOSE, "session closed")
        done = self.when_closed()
        return done.addCallback(lambda _: None)

    # -- requests --------------------------------------------------------------

    def call(
        self, service: int, object_id: int, content: bytes, decode: Callable[[Buffer], T]
    ) -> Deferred[T]:
        """Send one request; fires with ``decode(content)`` of its response.

        ``decode`` may raise a :class:`TcpSocketClientError` to fail the call.
        Cancelling the Deferred only stops waiting for the response.
        """
        if self._ended is not None:
            return defer.fail(_copy(self._ended))
        request = self._next_request
        self._next_request += 2

        def forget(_: Deferred[T]) -> None:
            self._pending.pop(request, None)

        message = encode_request(service, object_id, request, content)
        if self._protocol.state != WebSocketProtocol.STATE_OPEN:
            # The close handshake has started; onClose will end the session.
            return defer.fail(SessionClosed("session closing", lost=True))
        result: Deferred[T] = Deferred(forget)
        self._pending[request] = (result, decode)
        self._protocol.sendMessage(message, isBinary=True)
        return result

    def get_service(self, name: str, fingerprint: str) -> Deferred[int]:
        """GetService: a new service instance's id, or :class:`GetServiceError`."""
        content = GetService(name, fingerprint).encode()
        return self.call(CORE_SERVICE, 0, content, _decode_get_service)

    def has_service(self, name: str) -> Deferred[bool]:
        """HasService: whether the daemon knows the service ``name``."""
        content = HasService(name).encode()
        return self.call(CORE_SERVICE, 0, content, _bool_decoder(Core.HAS_SERVICE))

    def enable_event(self, service: int, object_id: int, event: int) -> Deferred[bool]:
        """EnableEvent: whether the object exists."""
        return self._object_ref(Core.ENABLE_EVENT, service, object_id, event)

    def disable_event(self, service: int, object_id: int, event: int) -> Deferred[bool]:
        """DisableEvent: whether the object exists."""
        return self._object_ref(Core.DISABLE_EVENT, service, object_id, event)

    def release_object(self, service: int, object_id: int) -> Deferred[bool]:
        """ReleaseObject: whether the object existed (object 0 is the service itself)."""
        return self._object_ref(Core.RELEASE_OBJECT, service, object_id, None)

    def _object_ref(
        self, op: Core, service: int, object_id: int, event: int | None
    ) -> Deferred[bool]:
        content = ObjectRef(op, service, object_id, event).encode()
        return self.call(CORE_SERVICE, 0, content, _bool_decoder(op))

    # -- events ----------------------------------------------------------------

    def register(self, service: int, object_id: int, sink: EventSink) -> None:
        """Route the events of ``(service, object_id)`` to ``sink``."""
        if self._ended is None:
            self._sinks[service, object_id] = sink

    def unregister(self, service: int, object_id: int) -> None:
        """Stop routing the events of ``(service, object_id)``."""
        self._sinks.pop((service, object_id), None)

    # -- from the WebSocket ----------------------------------------------------

    def _message(self, payload: bytes) -> None:
        if self._ended is not None:
            return
        try:
            message = decode_base(payload, strict=False)
        except DecodeError as e:
            log.warn("tcpsocket: ignoring a malformed message from the daemon: {e}", e=e)
            return
        if message.kind is Kind.EVENT:
            sink = self._sinks.get((message.service, message.object))
            if sink is not None:
                sink.event_received(message.content)
            return
        if message.kind is Kind.REQUEST or message.request is None:
            return  # our services make no calls to the client
        pending = self._pending.pop(message.request, None)
        if pending is None:
            log.debug("tcpsocket: response to unknown request {id}", id=message.request)
            return
        result, decode = pending
        if message.kind is Kind.PERMISSION_ERROR:
            result.errback(PermissionDenied(message.permission, message.message))
            return
        try:
            value = decode(message.content)
        except TcpSocketClientError as e:
            result.errback(e)
        except DecodeError as e:
            result.errback(ProtocolError(f"malformed response: {e}"))
        else:
            result.callback(value)

    def _connection_closed(self, code: int | None, reason: str | None) -> None:
        self._end(SessionClosed(f"session lost: {reason or 'connection closed'}", code))
        self._gone = True
        assert self._ended is not None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self._ended)

    def _end(self, reason: SessionClosed) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        pending, self._pending = self._pending, {}
        for result, _ in pending.values():
            result.errback(_copy(reason))
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.session_ended(reason)


def _copy(reason: SessionClosed) -> SessionClosed:
    return SessionClosed(reason.reason, reason.code, reason.lost)


# -- the WebSocket -------------------------------------------------------------


class _SessionProtocol(WebSocketClientProtocol):
    """The WebSocket of one session: handshake first, then hands messages to the Session."""

    factory: _SessionFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self._refused = False

    def onOpen(self) -> None:
        self.sendMessage(encode_handshake(self.factory.token), isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            log.warn("tcpsocket: ignoring a text message from the daemon")
        elif self.session is not None:
            self.session._message(payload)
        elif not self._refused:
            self._acknowledged(payload)

    def _acknowledged(self, payload: bytes) -> None:
        try:
            reader = Reader(payload)
            accepted = reader.boolean()
            reader.finish()
        except DecodeError:
            accepted = False
        if accepted:
            self.session = Session(self, self.factory.url, self.factory.reactor)
            self.factory.ready.callback(self.session)
        else:
            # The daemon closes the WebSocket too; the refusal is reported then.
            self._refused = True
            self.sendClose(NORMAL_CLOSE, "token refused")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session._connection_closed(code, reason)
        elif not self.factory.ready.called:
            if self._refused:
                self.factory.ready.errback(SessionRefused(f"token refused ({reason or code})"))
            else:
                why = f"connection closed before the session opened: {reason or code}"
                self.factory.ready.errback(SessionClosed(why, code))


class _SessionFactory(WebSocketClientFactory):
    protocol = _SessionProtocol  # type: ignore[assignment]

    def __init__(self, url: str, token: str, reactor: Any, origin: str | None) -> None:
        super().__init__(url, reactor=reactor, origin=origin)
        self.token = token
        self.reactor = reactor
        self.ready: Deferred[Session] = Deferred()
        self.setProtocolOptions(closeHandshakeTimeout=1.0, autoPingInterval=0)
        use_reactor_timers(self, reactor)


def _endpoint_for(factory: _SessionFactory, reactor: Any) -> IStreamClientEndpoint:
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, factory.host, factory.port)
    if factory.isSecure:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
    return endpoint


async def _connect(endpoint: IStreamClientEndpoint, factory: _SessionFactory) -> Session:
    protocol: Any = await endpoint.connect(factory)
    try:
        return await factory.ready
    except defer.CancelledError:
        protocol.dropConnection(abort=True)
        raise
