"""``TcpSocketClientEndpoint``: connect any Twisted protocol to a remote through the daemon."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    NoProtocol,
    NoRouteError,
    TCPTimedOutError,
)
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from tcpsocket.client.errors import TcpSocketError
from tcpsocket.client.manager import TcpSocketManager
from tcpsocket.client.secure import SecureTcpSocketManager
from tcpsocket.client.session import Session
from tcpsocket.client.socket import TcpSocket
from tcpsocket.client.transport import TcpSocketAddress, TcpSocketTransport

__all__ = ["TcpSocketClientEndpoint", "connect_error"]

_CONNECT_ERRORS: tuple[tuple[str, Callable[[str], Exception]], ...] = (
    ("connection refused", lambda reason: ConnectionRefusedError(string=reason)),
    ("host name lookup failed", DNSLookupError),
    ("connect timeout", lambda reason: TCPTimedOutError(string=reason)),
    ("host unreachable", lambda reason: NoRouteError(string=reason)),
)


def connect_error(reason: str) -> Exception:
    """The Twisted exception for an open error reason (``ConnectError``, ``DNSLookupError``)."""
    for prefix, make in _CONNECT_ERRORS:
        if reason.startswith(prefix):
            return make(reason)
    return ConnectError(string=reason)


@implementer(IStreamClientEndpoint)
class TcpSocketClientEndpoint:
    """Connects to ``host``:``port`` through a :class:`TcpSocketManager`.

    Given a :class:`Session`, the endpoint gets its own manager on the first
    ``connect``.  Failed opens fail with Twisted's ``ConnectError`` family
    (``ConnectionRefusedError``, ``DNSLookupError``, ...) whose message is the
    daemon's reason.
    """

    def __init__(
        self,
        manager_or_session: TcpSocketManager | Session,
        host: str,
        port: int,
        *,
        tls: bool | None = None,
        server_name: str = "",
        alpn: Sequence[str] = (),
    ) -> None:
        """``tls``: None, a plain TcpSocketManager socket; False, a plain socket of
        SecureTcpSocketManager, whose transport can ``startTLS``; True, TLS from the first
        byte.  ``server_name`` (default ``host``) and ``alpn`` are for TLS; the daemon
        always verifies the certificate."""
        self._tls = tls
        self._server_name = server_name
        self._alpn = tuple(alpn)
        if isinstance(manager_or_session, TcpSocketManager):
            self._manager: TcpSocketManager | None = manager_or_session
            self._session = manager_or_session.session
        else:
            self._manager = None
            self._session = manager_or_session
        self._host = host
        self._port = port

    def __repr__(self) -> str:
        return f"<TcpSocketClientEndpoint {self._host} port {self._port} via {self._session.url}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """Open the socket, build the protocol and connect it; fires with the protocol."""
        return defer.ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        if self._manager is None:
            kind = TcpSocketManager if self._tls is None else SecureTcpSocketManager
            self._manager = await kind.get(self._session)
        socket: TcpSocket
        try:
            if isinstance(self._manager, SecureTcpSocketManager):
                socket = await self._manager.open(
                    host=self._host,
                    port=self._port,
                    use_secure_transport=bool(self._tls),
                    server_name=self._server_name,
                    alpn=self._alpn,
                )
            else:
                socket = await self._manager.open(host=self._host, port=self._port)
        except TcpSocketError as e:
            raise connect_error(e.reason) from e
        factory.doStart()
        address = TcpSocketAddress(self._host, self._port, self._session.url)
        protocol = factory.buildProtocol(address)
        if protocol is None:
            factory.doStop()
            socket.release().addErrback(lambda _: None)
            raise NoProtocol()
        transport = TcpSocketTransport(
            socket, protocol, self._session.reactor, self._server_name or self._host
        )
        transport.notify_lost(factory.doStop)
        transport.start()
        return protocol
