"""The TcpSocketManager service: one instance per successful GetService."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcpsocket.config import ServerConfig
from tcpsocket.messages import (
    REPLIES,
    Event,
    Method,
    Reply,
    SocketRequest,
    encode_open_success,
    encode_reply,
    encode_send_success,
)
from tcpsocket.remote import RemoteSocket, SocketError, SocketOwner, describe_failure

__all__ = ["SessionLink", "TcpSocketManagerService", "check_address"]

log = Logger()

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class SessionLink(TypingProtocol):
    """What a service needs from the session that created it."""

    identity: str
    session_id: int
    sockets_in_use: int

    @property
    def config(self) -> ServerConfig: ...

    @property
    def reactor(self) -> Any: ...

    @property
    def congested(self) -> bool: ...

    def send_response(self, service: int, object_id: int, request: int, content: bytes) -> None: ...

    def send_event(self, service: int, object_id: int, content: bytes) -> None: ...

    def send_data_event(self, service: int, object_id: int, data: bytes) -> None: ...


def check_address(host: str, port: int) -> tuple[str, str | None]:
    """Normalise ``host`` and return it with the reason it is invalid, if it is."""
    if not 1 <= port <= 65535:
        return host, f"invalid port {port}: must be 1 to 65535"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if isIPAddress(host) or isIPv6Address(host):
        return host, None
    name = host[:-1] if host.endswith(".") else host
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if (
        not ascii_name
        or len(ascii_name) > 253
        or not all(_LABEL.match(label) for label in ascii_name.split("."))
    ):
        return host, f"invalid host {host!r}"
    return ascii_name, None


class _SocketFactory(Factory):
    noisy = False  # no "Starting factory" log line per socket

    def __init__(self, config: ServerConfig, owner: SocketOwner, clock: Any) -> None:
        self._args = (config, owner, clock)

    def buildProtocol(self, addr: IAddress | None) -> RemoteSocket:
        return RemoteSocket(*self._args)


class TcpSocketManagerService(SocketOwner):
    """Opens sockets for one session and routes their requests and events."""

    def __init__(self, session: SessionLink, service_id: int) -> None:
        self.session = session
        self.service_id = service_id
        self.sockets: dict[int, RemoteSocket] = {}
        self._next_id = 1
        self._connecting: set[Deferred[Any]] = set()
        self._stopped = False

    # -- SocketOwner ---------------------------------------------------------

    def send_event(self, socket: RemoteSocket, content: bytes) -> None:
        self.session.send_event(self.service_id, socket.socket_id, content)

    def send_data(self, socket: RemoteSocket, data: bytes) -> None:
        self.session.send_data_event(self.service_id, socket.socket_id, data)

    def socket_finished(self, socket: RemoteSocket) -> None:
        # A socket counts against the session's limit until it is forgotten,
        # so that what it holds for the client stays bounded too.
        if self.sockets.pop(socket.socket_id, None) is not None:
            self.session.sockets_in_use -= 1

    @property
    def congested(self) -> bool:
        return self.session.congested

    @property
    def connecting(self) -> frozenset[Deferred[Any]]:
        """The ``open()`` requests still connecting (name lookup or TCP connect)."""
        return frozenset(self._connecting)

    # -- requests ------------------------------------------------------------

    def handle(self, object_id: int, request_id: int, request: SocketRequest) -> None:
        """Answer one request (now, or when ``open`` completes)."""
        success, failure = REPLIES[request.method]

        def fail(reason: str) -> None:
            self._respond(object_id, request_id, encode_reply(failure, reason))

        if request.method is Method.OPEN:
            if object_id != 0:
                fail("open is a method of the service, object 0")
            else:
                self._open(request_id, request.host, request.port)
            return
        if object_id == 0:
            fail(f"{request.method.name.lower()} is a method of a socket, not of the service")
            return
        socket = self.sockets.get(object_id)
        if socket is None:
            if 0 < object_id < self._next_id:
                if request.method is Method.CLOSE:
                    self._respond(object_id, request_id, encode_reply(success))
                else:
                    fail(f"socket {object_id} is closed")
            else:
                fail(f"unknown socket {object_id}")
            return
        try:
            if request.method is Method.SEND:
                content = encode_send_success(socket.send(request.data))
            else:
                if request.method is Method.CLOSE:
                    socket.close()
                elif request.method is Method.SUSPEND:
                    socket.suspend()
                else:
                    socket.resume()
                content = encode_reply(success)
        except SocketError as e:
            fail(str(e))
            return
        self._respond(object_id, request_id, content)

    def event_switch(self, object_id: int, event: int, enabled: bool) -> Callable[[], None] | None:
        """EnableEvent/DisableEvent: what does it, or None if there is no such socket or event."""
        socket = self.sockets.get(object_id)
        if socket is None or event not in Event._value2member_map_:
            return None
        return partial(socket.set_event_enabled, Event(event), enabled)

    def release(self, object_id: int) -> bool:
        """ReleaseObject: close and forget a socket; whether it existed."""
        socket = self.sockets.pop(object_id, None)
        if socket is None:
            return 0 < object_id < self._next_id
        self._detach(socket)
        return True

    def stop(self) -> None:
        """The service or its session is gone: cancel connects, close every socket.

        A cancelled open is answered with an error (dropped by a session that
        is ending), so every request still gets its one response.
        """
        self._stopped = True
        for pending in list(self._connecting):
            pending.cancel()
        for socket in self.sockets.values():
            self._detach(socket)
        self.sockets.clear()

    # -- internals -----------------------------------------------------------

    def _detach(self, socket: RemoteSocket) -> None:
        self.session.sockets_in_use -= 1
        socket.detach()

    def _respond(self, object_id: int, request_id: int, content: bytes) -> None:
        # Also after stop(): an open still pending when the service is released
        # gets its error (the session drops responses once it is ending).
        self.session.send_response(self.service_id, object_id, request_id, content)

    def _open(self, request_id: int, host: str, port: int) -> None:
        session = self.session
        config = session.config

        def fail(reason: str) -> None:
            self._respond(0, request_id, encode_reply(Reply.OPEN_ERROR, reason))

        host, invalid = check_address(host, port)
        if invalid is not None:
            config.metrics.socket_failed("invalid")
            return fail(invalid)
        denied = config.policy.check(session.identity, host, port)
        if denied is not None:
            config.metrics.socket_failed("denied")
            return fail(f"not allowed: {denied}")
        if session.sockets_in_use >= config.max_sockets_per_session:
            limit = config.max_sockets_per_session
            config.metrics.socket_failed("limit")
            return fail(f"too many sockets in this session (limit {limit})")
        session.sockets_in_use += 1
        endpoint = config.connect(session.reactor, host, port, config.connect_timeout)
        factory = _SocketFactory(config, self, session.reactor)
        connecting: Deferred[Any] = endpoint.connect(factory)
        connecting.addTimeout(config.connect_timeout, session.reactor)
        self._connecting.add(connecting)

        def connected(socket: RemoteSocket) -> None:
            self._connecting.discard(connecting)
            socket.socket_id = self._next_id
            self._next_id += 1
            if self._stopped:
                session.sockets_in_use -= 1
                socket.detach()
                fail(f"the service was released ({host} port {port})")
                return
            self.sockets[socket.socket_id] = socket
            log.info(
                "socket {id} of {identity} opened to {host} port {port}",
                id=socket.socket_id,
                identity=session.identity,
                host=host,
                port=port,
                session=session.session_id,
                remote=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            )
            self._respond(0, request_id, encode_open_success(socket.socket_id))

        def failed(reason: Failure) -> None:
            self._connecting.discard(connecting)
            session.sockets_in_use -= 1
            why = "the service was released" if self._stopped else describe_failure(reason)
            config.metrics.socket_failed("released" if self._stopped else reason)
            fail(f"{why} ({host} port {port})")

        connecting.addCallbacks(connected, failed)
