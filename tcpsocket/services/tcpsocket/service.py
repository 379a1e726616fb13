"""The TcpSocketManager service: one instance per successful GetService."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer, error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket.budgets import Budgets
from tcpsocket.config import ServerConfig
from tcpsocket.interfaces import IAddressPolicy
from tcpsocket.policy import Address, default_denial, parse_address
from tcpsocket.remote import RemoteSocket, SocketError, SocketOwner, describe_failure
from tcpsocket.resolve import CheckedNames, LookupRefused
from tcpsocket.services import ISessionService
from tcpsocket.services.tcpsocket.messages import (
    REPLIES,
    Event,
    Method,
    Reply,
    SocketRequest,
    decode_socket_request,
    encode_open_success,
    encode_reply,
    encode_send_success,
    send_data,
)
from tcpsocket.tracking import ConnectionSet

__all__ = ["SessionLink", "TcpSocketManagerService", "check_address"]

#: The namespace it always had (operators filter on it).
log = Logger(namespace="tcpsocket.service")

_SEND_TRUE = encode_send_success(True)
_SEND_FALSE = encode_send_success(False)

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
    def connections(self) -> ConnectionSet: ...

    @property
    def congested(self) -> bool: ...

    @property
    def waiting_for_room(self) -> int: ...

    @property
    def budgets(self) -> Budgets: ...

    def send_response(self, service: int, object_id: int, request: int, content: bytes) -> None: ...

    def send_event(self, service: int, object_id: int, content: bytes) -> None: ...

    def send_data_event(self, service: int, object_id: int, data: bytes) -> None: ...

    def wait_for_room(self, socket: RemoteSocket) -> None: ...

    def stop_waiting(self, socket: RemoteSocket) -> None: ...


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
        return host, f"invalid host {_shown(host)}"
    return ascii_name, None


def _shown(text: str, limit: int = 100) -> str:
    """``text`` quoted for an error message, cut to about ``limit`` characters."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _remote(host: str, port: int) -> str:
    """``host:port`` for the logs (``[::1]:6667`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_timed_out(result: Any, timeout: float) -> Any:
    """An open cancelled by its timeout failed by timing out, even in a name lookup
    (which HostnameEndpoint reports as a lookup failure when cancelled)."""
    if isinstance(result, Failure):
        raise defer.TimeoutError(timeout, "connect")
    return result


class _SocketFactory(Factory):
    # One factory per open: no "Starting factory" / "Stopping factory" lines.
    noisy = False

    def __init__(
        self,
        config: ServerConfig,
        owner: SocketOwner,
        clock: Any,
        connections: ConnectionSet,
        socket_class: type[RemoteSocket] = RemoteSocket,
    ) -> None:
        self._socket_class = socket_class
        self._args: tuple[ServerConfig, SocketOwner, Any, ConnectionSet] | None = (
            config,
            owner,
            clock,
            connections,
        )

    def buildProtocol(self, addr: IAddress | None) -> RemoteSocket | None:
        if self._args is None:
            return None  # the open is over: refuse a late connection
        return self._socket_class(*self._args)

    def forget(self) -> None:
        """The open is over: let go of the service.

        Twisted's client connector and transport keep each other (and so this
        factory) alive until the garbage collector runs; the session and its
        buffers must not wait for that.
        """
        self._args = None


@implementer(ISessionService)
class TcpSocketManagerService(SocketOwner):
    """Opens sockets for one session and routes their requests and events.

    A service with more to its sockets (:mod:`tcpsocket.services.securesocket`)
    subclasses it: its own ``socket_class``, ``decode``, :meth:`prepare` and
    :meth:`open_answer`.
    """

    #: The protocol of each connection this service opens.
    socket_class: type[RemoteSocket] = RemoteSocket

    #: Whether ``send`` requests decode and are answered as here, so that :meth:`handle`
    #: answers a ``send`` to a live socket at once, without ``decode`` and
    #: ``handle_request``.  False for a subclass that overrides either, unless it
    #: sets it again.
    plain_send = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "plain_send" not in cls.__dict__ and (
            "decode" in cls.__dict__ or "handle_request" in cls.__dict__
        ):
            cls.plain_send = False

    def __init__(self, session: SessionLink, service_id: int) -> None:
        self.session = session
        self.service_id = service_id
        self.sockets: dict[int, RemoteSocket] = {}
        self._next_id = 1
        self._connecting: set[Deferred[Any]] = set()
        self._stopped = False
        #: The client let go of the service object (ReleaseObject of object 0).
        self.released = False

    # -- SocketOwner ---------------------------------------------------------

    def send_event(self, socket: RemoteSocket, content: bytes) -> None:
        self.session.send_event(self.service_id, socket.socket_id, content)

    def send_data(self, socket: RemoteSocket, data: bytes) -> None:
        self.session.send_data_event(self.service_id, socket.socket_id, data)

    def socket_finished(self, socket: RemoteSocket) -> None:
        # A socket counts against the session's limit until it is forgotten,
        # so that what it holds for the client stays bounded too.
        self.session.stop_waiting(socket)
        if self.sockets.pop(socket.socket_id, None) is not None:
            self.session.sockets_in_use -= 1
            self.session.budgets.sockets -= 1
            self.session.budgets.forget(socket)

    @property
    def congested(self) -> bool:
        return self.session.congested

    @property
    def waiting_for_room(self) -> int:
        return self.session.waiting_for_room

    def wait_for_room(self, socket: RemoteSocket) -> None:
        self.session.wait_for_room(socket)

    def stop_waiting(self, socket: RemoteSocket) -> None:
        self.session.stop_waiting(socket)

    @property
    def connecting(self) -> frozenset[Deferred[Any]]:
        """The ``open()`` requests still connecting (name lookup or TCP connect)."""
        return frozenset(self._connecting)

    # -- requests ------------------------------------------------------------

    def handle(self, object_id: int, request_id: int, content: memoryview) -> None:
        """Decode and answer one request (now, or when ``open`` completes)."""
        if self.plain_send:
            socket = self.sockets.get(object_id)
            if socket is not None:
                data = send_data(content)
                if data is not None:
                    self._send(socket, object_id, request_id, data)
                    return
        self.handle_request(object_id, request_id, self.decode(content))

    def decode(self, content: memoryview) -> SocketRequest:
        """Decode the content of one request to this service."""
        return decode_socket_request(content)

    async def prepare(self, socket: RemoteSocket, options: Any) -> None:
        """What an open does once connected, before it is answered (nothing here)."""

    def open_answer(self, socket: RemoteSocket) -> bytes:
        """The content of a successful open's response."""
        return encode_open_success(socket.socket_id)

    def handle_request(self, object_id: int, request_id: int, request: SocketRequest) -> None:
        """Answer one decoded request."""
        if request.method is Method.SEND:
            socket = self.sockets.get(object_id)
            if socket is not None:
                self._send(socket, object_id, request_id, request.data)
                return
        success, failure = REPLIES[request.method]

        def fail(reason: str) -> None:
            self._respond(object_id, request_id, encode_reply(failure, reason))

        if request.method is Method.OPEN:
            if object_id != 0:
                fail("open is a method of the service, object 0")
            else:
                self._open(
                    request_id, request.host, request.port, getattr(request, "options", None)
                )
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
            if request.method is Method.CLOSE:
                socket.close()
            elif request.method is Method.SUSPEND:
                socket.suspend()
            else:
                socket.resume()
        except SocketError as e:
            fail(str(e))
            return
        self._respond(object_id, request_id, encode_reply(success))

    def _send(self, socket: RemoteSocket, object_id: int, request_id: int, data: bytes) -> None:
        """Answer a ``send`` of ``data`` to ``socket``."""
        session = self.session
        budgets = session.budgets
        try:
            refused = budgets.upstream_refusal(session, socket, len(data))
            if refused is not None:
                raise SocketError(refused)
            content = _SEND_TRUE if socket.send(data) else _SEND_FALSE
        except SocketError as e:
            content = encode_reply(Reply.SEND_ERROR, str(e))
        else:
            budgets.holding(session, socket)
        self._respond(object_id, request_id, content)

    def event_switch(self, object_id: int, event: int, enabled: bool) -> Callable[[], None] | None:
        """EnableEvent/DisableEvent: what does it, or None if there is no such socket or event."""
        socket = self.sockets.get(object_id)
        if socket is None or event not in Event._value2member_map_:
            return None
        return partial(socket.set_event_enabled, Event(event), enabled)

    def release(self, object_id: int) -> bool:
        """ReleaseObject: close and forget a live socket; False if there is none (any more)."""
        socket = self.sockets.pop(object_id, None)
        if socket is None:
            return False
        self._detach(socket)
        return True

    @property
    def reclaimable(self) -> bool:
        """Released by the client, with no socket and no open pending.

        api-daemon's runtime releases the service object when the page's manager is
        garbage collected, while its sockets stay in use, and the original daemon
        keeps answering it; so a released service lives on, and is only reclaimed
        when a new one needs its place under the session's service limit.
        """
        return self.released and not self.sockets and not self._connecting

    def stop(self, by: str = "the client") -> None:
        """The service or its session is gone: cancel connects, close every socket.

        ``by`` says who ended it, for the log.

        A cancelled open is answered with an error (dropped by a session that
        is ending), so every request still gets its one response.
        """
        self._stopped = True
        for pending in list(self._connecting):
            pending.cancel()
        sockets, self.sockets = self.sockets, {}
        for socket in sockets.values():
            self._detach(socket, by)

    # -- internals -----------------------------------------------------------

    def _detach(self, socket: RemoteSocket, by: str = "the client") -> None:
        self.session.sockets_in_use -= 1
        self.session.budgets.sockets -= 1
        self.session.budgets.forget(socket)
        socket.detach(by)

    def _respond(self, object_id: int, request_id: int, content: bytes) -> None:
        # Also after stop(): an open still pending when the service is released
        # gets its error (the session drops responses once it is ending).
        self.session.send_response(self.service_id, object_id, request_id, content)

    def _open(self, request_id: int, host: str, port: int, options: Any = None) -> None:
        session = self.session
        config = session.config

        def fail(reason: str) -> None:
            self._respond(0, request_id, encode_reply(Reply.OPEN_ERROR, reason))

        host, invalid = check_address(host, port)
        if invalid is None:
            try:
                literal = parse_address(host)
            except ValueError as e:
                invalid = str(e)
        if invalid is not None:
            config.metrics.socket_failed("invalid")
            return fail(invalid)
        denied = config.policy.check(session.identity, host, port)
        if denied is not None:
            return self._deny(fail, host, port, denied)
        if session.sockets_in_use >= config.max_sockets_per_session:
            limit = config.max_sockets_per_session
            config.metrics.socket_failed("limit")
            return fail(f"too many sockets in this session (limit {limit})")
        refused = session.budgets.sockets_refusal()
        if refused is not None:
            config.metrics.socket_failed("limit")
            return fail(refused)
        session.sockets_in_use += 1
        session.budgets.sockets += 1
        attempt = _Attempt(self, host, literal, port, options)
        connecting = ensureDeferred(attempt.run())
        connecting.addTimeout(config.connect_timeout, session.reactor, _connect_timed_out)
        self._connecting.add(connecting)

        def connected(socket: RemoteSocket) -> None:
            self._connecting.discard(connecting)
            socket.socket_id = self._next_id
            self._next_id += 1
            if self._stopped:
                self._detach(socket)
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
                remote=_remote(host, port),
            )
            self._respond(0, request_id, self.open_answer(socket))

        def failed(reason: Failure) -> None:
            self._connecting.discard(connecting)
            session.sockets_in_use -= 1
            session.budgets.sockets -= 1
            if isinstance(reason.value, _Denied):
                return self._deny(fail, host, port, str(reason.value))
            if reason.check(_Refused):
                why = detail = str(reason.value)
                config.metrics.socket_failed("limit")
            else:
                why = "the service was released" if self._stopped else describe_failure(reason)
                detail = f"{why} ({host} port {port})"
                config.metrics.socket_failed("released" if self._stopped else reason)
            log.warn(
                "open of {identity} to {host} port {port} failed: {why}",
                session=session.session_id,
                identity=session.identity,
                host=host,
                port=port,
                why=why,
                reason=why,
                remote=_remote(host, port),
            )
            fail(detail)

        connecting.addCallbacks(connected, failed)

    def _deny(self, fail: Callable[[str], None], host: str, port: int, reason: str) -> None:
        self.session.config.metrics.socket_failed("denied")
        log.warn(
            "{identity} denied {host} port {port}: {reason}",
            session=self.session.session_id,
            identity=self.session.identity,
            host=host,
            port=port,
            reason=reason,
            remote=_remote(host, port),
        )
        fail(f"not allowed: {reason}")


class _Refused(Exception):
    """An open that is answered with this message (a budget, a lookup)."""


class _Denied(_Refused):
    """An open that the policy or the daemon's own endpoints deny."""


#: The most addresses of one name an open tries (Happy Eyeballs runs them in parallel).
MAX_ADDRESSES = 4


class _Attempt:
    """One open after the first checks: lookup, check every address, connect."""

    def __init__(
        self,
        service: TcpSocketManagerService,
        host: str,
        literal: Address | None,
        port: int,
        options: Any = None,
    ) -> None:
        self.service = service
        self.options = options
        self.host = host
        self.literal = literal
        self.port = port

    async def run(self) -> RemoteSocket:
        session = self.service.session
        config = session.config
        budgets = session.budgets
        host, port = self.host, self.port
        if self.literal is not None:
            addresses = [str(self.literal)]
        else:
            try:
                lookup = budgets.lookups.lookup(session, host, port)
            except LookupRefused as e:
                raise _Refused(str(e)) from None
            try:
                addresses = await lookup
            except LookupRefused:
                raise error.DNSLookupError(host) from None
        allowed: list[str] = []
        denial: str | None = None
        for address in addresses:
            why = budgets.own_endpoints.denial(address, port) or self._policy(address)
            if why is None:
                allowed.append(address)
            else:
                denial = denial or why
        if not allowed:
            assert denial is not None
            raise _Denied(denial)
        allowed = allowed[:MAX_ADDRESSES]
        # Each further address is a socket that Happy Eyeballs may hold while connecting.
        extra = len(allowed) - 1
        refused = budgets.sockets_refusal(extra) if extra else None
        if refused is not None:
            raise _Refused(refused)
        budgets.sockets += extra
        try:
            if self.literal is not None:
                endpoint = config.connect(session.reactor, allowed[0], port, config.connect_timeout)
            else:
                reactor = CheckedNames(session.reactor, host, allowed)
                endpoint = config.connect(reactor, host, port, config.connect_timeout)
            factory = _SocketFactory(
                config,
                self.service,
                session.reactor,
                session.connections,
                self.service.socket_class,
            )
            try:
                socket = await endpoint.connect(factory)
            finally:
                factory.forget()
            assert isinstance(socket, RemoteSocket)
            try:
                await self.service.prepare(socket, self.options)
            except BaseException:
                socket.detach("the daemon")
                raise
        finally:
            budgets.sockets -= extra
        return socket

    def _policy(self, address: str) -> str | None:
        session = self.service.session
        policy = session.config.policy
        if IAddressPolicy.providedBy(policy):
            reason: str | None = policy.check_address(
                session.identity, self.host, address, self.port
            )
            return reason
        ip = ipaddress.ip_address(address)
        denial = default_denial(ip)
        return None if denial is None else f"{address} is {denial}, denied by default"
