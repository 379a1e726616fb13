"""The ``tcpsocket:`` client endpoint string: any ``clientFromString`` user goes through the
daemon (registered by ``twisted/plugins/tcpsocket_endpoints.py``).

``tcpsocket:HOST:PORT[:tls=yes|starttls][:serverName=NAME][:alpn=a,b]
[:url=ws\\://127.0.0.1\\:8081/ws][:tokenEnv=WS_RUNTIME_TOKEN]``

The token is never part of the string: it is read from the environment variable
``tokenEnv`` names.  ``tls=yes`` is TLS from the first byte; ``tls=starttls`` a plain
socket whose transport can ``startTLS``; without ``tls``, a plain TcpSocketManager socket.
Each connection opens its own session, closed when the connection is lost.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from tcpsocket.client.endpoint import TcpSocketClientEndpoint
from tcpsocket.client.session import Session

__all__ = ["DaemonEndpoint", "TcpSocketEndpointParser"]

DEFAULT_URL = "ws://127.0.0.1:8081/ws"
_TLS = {"": None, "no": None, "yes": True, "starttls": False}


@implementer(IStreamClientEndpoint)
class DaemonEndpoint:
    """A session to the daemon per connection, then a :class:`TcpSocketClientEndpoint`."""

    def __init__(self, reactor: Any, url: str, token: str, host: str, port: int, **tls: Any):
        self._reactor = reactor
        self._url = url
        self._token = token
        self._host = host
        self._port = port
        self._tls = tls
        self._closing: list[Deferred[None]] = []

    def closed(self) -> Deferred[list[None]]:
        """Fires once the sessions of the connections made so far are closed."""
        return gatherResults(self._closing)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        session = await Session.connect(self._url, self._token, reactor=self._reactor)
        endpoint = TcpSocketClientEndpoint(session, self._host, self._port, **self._tls)
        try:
            protocol = await endpoint.connect(factory)
        except BaseException:
            session.close()
            raise
        transport: Any = protocol.transport  # type: ignore[attr-defined]
        transport.notify_lost(lambda: self._closing.append(session.close()))
        return protocol


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class TcpSocketEndpointParser:
    """Parses ``tcpsocket:`` client endpoint strings."""

    prefix = "tcpsocket"

    def parseStreamClient(self, reactor: Any, *args: object, **kwargs: object) -> DaemonEndpoint:
        """``tcpsocket:HOST:PORT[:key=value...]`` (see the module's docstring)."""
        return _parse(reactor, [str(a) for a in args], {k: str(v) for k, v in kwargs.items()})


def _parse(reactor: Any, args: list[str], kwargs: dict[str, str]) -> DaemonEndpoint:
    host = kwargs.pop("host", args[0] if args else "")
    port_text = kwargs.pop("port", args[1] if len(args) > 1 else "")
    if not host or not port_text.isdigit():
        raise ValueError("tcpsocket: needs a host and a port (tcpsocket:HOST:PORT)")
    tls_text = kwargs.pop("tls", "")
    if tls_text not in _TLS:
        raise ValueError(f"tcpsocket: tls is yes, starttls or no, not {tls_text!r}")
    variable = kwargs.pop("tokenEnv", "WS_RUNTIME_TOKEN")
    token = os.environ.get(variable, "")
    if not token:
        raise ValueError(f"tcpsocket: no token in the environment variable {variable}")
    url = kwargs.pop("url", DEFAULT_URL)
    server_name = kwargs.pop("serverName", "")
    alpn = tuple(name for name in kwargs.pop("alpn", "").split(",") if name)
    if kwargs:
        raise ValueError(f"tcpsocket: unknown parameters {sorted(kwargs)}")
    return DaemonEndpoint(
        reactor,
        url,
        token,
        host,
        int(port_text),
        tls=_TLS[tls_text],
        server_name=server_name,
        alpn=alpn,
    )
