"""A TCP client socket opened through the daemon (the JS ``TcpSocket``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from tcpsocket.bincode import Buffer, DecodeError
from tcpsocket.client.errors import ProtocolError, SessionClosed, TcpSocketError
from tcpsocket.client.events import EventConstants, Listeners, check_event
from tcpsocket.services.tcpsocket.messages import (
    EVENT_OF_REPLY,
    REPLIES,
    Event,
    Method,
    decode_socket_reply,
    encode_method,
    encode_send,
)

if TYPE_CHECKING:
    from tcpsocket.client.manager import TcpSocketManager

__all__ = ["SocketListener", "TcpSocket", "reply_value"]

log = Logger()

#: A socket's listener: called with the event's value (DATA ``bytes``,
#: DRAIN ``bool``, ERROR ``str``, CLOSE ``None``).
SocketListener: TypeAlias = Callable[[Any], object]


def reply_value(method: Method, content: Buffer) -> object:
    """The value of ``method``'s success reply, or raise :class:`TcpSocketError` with the reason."""
    success, failure = REPLIES[method]
    reply = decode_socket_reply(content)
    if reply.reply is success:
        return reply.value
    if reply.reply is failure:
        raise TcpSocketError(reply.detail or f"{method.name.lower()} failed")
    raise ProtocolError(f"unexpected reply {reply.reply.name} to {method.name.lower()}")


def _decode_send(content: Buffer) -> bool:
    return reply_value(Method.SEND, content) is True


def _void_decoder(method: Method) -> Callable[[Buffer], None]:
    def decode(content: Buffer) -> None:
        reply_value(method, content)

    return decode


def _ignore(_: object) -> None:
    return None


class TcpSocket(EventConstants):
    """One connection to ``host``:``port``, made by :meth:`TcpSocketManager.open`.

    Methods return Deferreds that fail with :class:`TcpSocketError` (the
    daemon's reason) or :class:`SessionClosed`.
    """

    def __init__(self, manager: TcpSocketManager, object_id: int, host: str, port: int) -> None:
        self.manager = manager
        self.session = manager.session
        self.service_id = manager.service_id
        self.object_id = object_id
        self.host = host
        self.port = port
        self._listeners: Listeners[SocketListener] = Listeners()
        self._enabled: set[Event] = set()
        self._closed = False
        self._released = False

    def __repr__(self) -> str:
        return f"<TcpSocket {self.service_id}/{self.object_id} to {self.host} port {self.port}>"

    @property
    def closed(self) -> bool:
        """Whether CLOSE was seen (or the socket was released, or its session ended)."""
        return self._closed or self._released

    # -- methods ---------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> Deferred[bool]:
        """Queue ``data`` for the remote: True while under the daemon's high-water mark.

        After a False, one DRAIN event (True) follows once the daemon's buffer
        for this socket is empty.  One call is one WebSocket message: keep
        ``data`` well under the daemon's message size limit (16 MiB).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send() needs bytes, not {type(data).__name__}")
        return self._call(encode_send(bytes(data)), _decode_send)

    def suspend(self) -> Deferred[None]:
        """Stop reading from the remote; n suspends need n resumes."""
        return self._call(encode_method(Method.SUSPEND), _void_decoder(Method.SUSPEND))

    def resume(self) -> Deferred[None]:
        """Undo one :meth:`suspend`; fails if the socket is not suspended."""
        return self._call(encode_method(Method.RESUME), _void_decoder(Method.RESUME))

    def close(self) -> Deferred[None]:
        """Graceful close: what was sent is written, then FIN; CLOSE follows."""
        return self._call(encode_method(Method.CLOSE), _void_decoder(Method.CLOSE))

    def release(self) -> Deferred[bool]:
        """Forget the socket on both sides (the daemon closes it); no events follow.

        Fires with whether the daemon still knew it (False when already released).
        """
        if self._released:
            return defer.succeed(False)
        self._released = True
        self._detach()
        return self.session.release_object(self.service_id, self.object_id)

    # -- events ----------------------------------------------------------------

    def add_event_listener(self, event: int, listener: SocketListener) -> Deferred[None]:
        """Call ``listener(value)`` on each ``event`` of this socket; adding twice is a no-op.

        The first listener of an event enables it on the daemon; the Deferred
        fires (never fails) once the daemon has acknowledged that.
        """
        kind = check_event(event)
        self._listeners.add(kind, listener)
        return self._sync(kind)

    def remove_event_listener(self, event: int, listener: SocketListener) -> Deferred[None]:
        """Remove ``listener``; removing the last one disables the event on the daemon."""
        kind = check_event(event)
        self._listeners.remove(kind, listener)
        return self._sync(kind)

    # -- EventSink -------------------------------------------------------------

    def event_received(self, content: Buffer) -> None:
        """An event of this socket from the daemon."""
        try:
            reply = decode_socket_reply(content)
            event = EVENT_OF_REPLY[reply.reply]
        except (DecodeError, KeyError):
            log.warn("tcpsocket: ignoring a malformed event for {socket}", socket=self)
            return
        if event is Event.CLOSE:
            self._closed = True
            self._detach()
        self._dispatch(event, reply.value)

    def session_ended(self, reason: SessionClosed) -> None:
        """The session is over: ERROR (if it was lost), then CLOSE."""
        if self.closed:
            return
        if reason.lost:
            self._dispatch(Event.ERROR, reason.reason)
        self._closed = True
        self._detach()
        self._dispatch(Event.CLOSE, None)

    # -- internals -------------------------------------------------------------

    def _call(self, content: bytes, decode: Callable[[Buffer], Any]) -> Deferred[Any]:
        if self._released:
            return defer.fail(TcpSocketError("socket released"))
        return self.session.call(self.service_id, self.object_id, content, decode)

    def _sync(self, event: Event) -> Deferred[None]:
        """Enable or disable ``event`` on the daemon to match the listeners."""
        want = not self.closed and (
            self._listeners.has(event) or self.manager._listeners.has(event)
        )
        if want == (event in self._enabled):
            return defer.succeed(None)
        if want:
            self._enabled.add(event)
        else:
            self._enabled.discard(event)
        if self.closed or not self.session.is_open:
            return defer.succeed(None)
        switch = self.session.enable_event if want else self.session.disable_event
        return switch(self.service_id, self.object_id, event).addBoth(_ignore)

    def _detach(self) -> None:
        self.session.unregister(self.service_id, self.object_id)
        self.manager._forget(self)

    def _dispatch(self, event: Event, value: object) -> None:
        self._listeners.call(event, value)
        self.manager._listeners.call(event, self, value)
