"""The TcpSocketManager service (the JS ``TcpSocketManager``): opens sockets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from twisted.internet import defer
from twisted.internet.defer import Deferred

from tcpsocket.bincode import Buffer
from tcpsocket.client.errors import TcpSocketError
from tcpsocket.client.events import EventConstants, Listeners, check_event
from tcpsocket.client.session import Session
from tcpsocket.client.socket import TcpSocket, reply_value
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import SERVICE_NAME, Event, Method, encode_open

__all__ = ["ManagerListener", "TcpSocketManager"]

#: A manager's listener: called with the socket and the event's value.
ManagerListener: TypeAlias = Callable[[TcpSocket, Any], object]


def _decode_open(content: Buffer) -> int:
    value = reply_value(Method.OPEN, content)
    assert isinstance(value, int)
    return value


def _ignore(_: object) -> None:
    return None


def _address(
    address: Mapping[str, Any] | None, host: str | None, port: int | None
) -> tuple[str, int]:
    if address is not None:
        if host is not None or port is not None:
            raise TypeError("open() takes an address or host= and port=, not both")
        try:
            host, port = address["host"], address["port"]
        except KeyError as e:
            raise TypeError(f"the address has no {e.args[0]!r}") from None
    if not isinstance(host, str):
        raise TypeError("host must be a string")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError("port must be an int")
    return host, port


class TcpSocketManager(EventConstants):
    """One instance of the service in a session; get it with :meth:`get`.

    Listeners added here get the events of every socket it opened, called as
    ``listener(socket, value)``.
    """

    SERVICE_NAME: str = SERVICE_NAME
    FINGERPRINT: str = TCPSOCKET_FINGERPRINT

    def __init__(self, session: Session, service_id: int) -> None:
        self.session = session
        self.service_id = service_id
        self._listeners: Listeners[ManagerListener] = Listeners()
        self._sockets: dict[int, TcpSocket] = {}
        self._released = False

    def __repr__(self) -> str:
        return f"<TcpSocketManager {self.service_id} of {self.session.url}>"

    @classmethod
    def get(cls, session: Session) -> Deferred[Any]:
        """GetService: a new instance; fails with :class:`GetServiceError`."""
        got = session.get_service(cls.SERVICE_NAME, cls.FINGERPRINT)
        return got.addCallback(lambda service_id: cls(session, service_id))

    @property
    def sockets(self) -> list[TcpSocket]:
        """The sockets of this instance that are not closed or released."""
        return list(self._sockets.values())

    def open(
        self,
        address: Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> Deferred[TcpSocket]:
        """Connect to ``{"host": ..., "port": ...}`` (or ``host=``, ``port=``).

        Fires once the connection is established; fails with
        :class:`TcpSocketError` and the daemon's reason.  Cancelling it
        releases the socket if it opens after all.
        """
        host, port = _address(address, host, port)
        return self._open(host, port, encode_open(host, port), _decode_open)

    def _open(
        self, host: str, port: int, content: bytes, decode: Callable[[Buffer], Any]
    ) -> Deferred[Any]:
        """Send an open request; ``decode`` gives the object id or the service's open answer."""
        if self._released:
            return defer.fail(TcpSocketError("service released"))
        cancelled = False

        def cancel(_: Deferred[TcpSocket]) -> None:
            nonlocal cancelled
            cancelled = True

        result: Deferred[TcpSocket] = Deferred(cancel)

        def opened(answer: Any) -> None:
            object_id = answer if isinstance(answer, int) else answer.socket_id
            if cancelled:
                self.session.release_object(self.service_id, object_id).addErrback(_ignore)
                return
            socket = self._make_socket(object_id, host, port, answer)
            self._sockets[object_id] = socket
            self.session.register(self.service_id, object_id, socket)
            for event in Event:
                if self._listeners.has(event):
                    socket._sync(event)
            result.callback(socket)

        def failed(reason: Any) -> None:
            if not cancelled:
                result.errback(reason)

        self.session.call(self.service_id, 0, content, decode).addCallbacks(opened, failed)
        return result

    def _make_socket(self, object_id: int, host: str, port: int, answer: Any) -> TcpSocket:
        return TcpSocket(self, object_id, host, port)

    def release(self) -> Deferred[bool]:
        """Release this instance: each of its sockets is released (the daemon closes it).

        No events follow and no more sockets open.  Fires with whether the daemon still knew
        one of the sockets.  The daemon keeps the service object itself, as api-daemon does.
        """
        self._released = True
        releases = [socket.release() for socket in self.sockets]
        self.session.release_object(self.service_id, 0).addErrback(_ignore)
        done = defer.gatherResults(releases, consumeErrors=True)
        return done.addCallback(any)

    def add_event_listener(self, event: int, listener: ManagerListener) -> Deferred[None]:
        """Call ``listener(socket, value)`` on each ``event`` of every socket of this instance."""
        kind = check_event(event)
        if self._listeners.add(kind, listener):
            return self._sync_sockets(kind)
        return defer.succeed(None)

    def remove_event_listener(self, event: int, listener: ManagerListener) -> Deferred[None]:
        """Remove ``listener``."""
        kind = check_event(event)
        if self._listeners.remove(kind, listener):
            return self._sync_sockets(kind)
        return defer.succeed(None)

    def _sync_sockets(self, event: Event) -> Deferred[None]:
        synced = [socket._sync(event) for socket in self.sockets]
        return defer.gatherResults(synced).addCallback(_ignore)

    def _forget(self, socket: TcpSocket) -> None:
        self._sockets.pop(socket.object_id, None)
