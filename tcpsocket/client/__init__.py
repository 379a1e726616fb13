"""The Python (Twisted) client of the tcpsocket daemon.

* :class:`Session`: a session WebSocket, opened with a token;
* :class:`TcpSocketManager` (``get(session)``, ``open(...)``) and
  :class:`TcpSocket` (``send``, ``close``, ``suspend``, ``resume``,
  ``release``, events): the TcpSocketManager service, like the JS client;
* :class:`SecureTcpSocketManager` and :class:`SecureTcpSocket`
  (``upgrade_to_secure``): the same with TLS, run by the daemon;
* :class:`TcpSocketClientEndpoint`: an ``IStreamClientEndpoint`` for any
  Twisted protocol.

See ``doc/python.md``.
"""

from __future__ import annotations

from tcpsocket.client.endpoint import TcpSocketClientEndpoint
from tcpsocket.client.errors import (
    GetServiceError,
    PermissionDenied,
    ProtocolError,
    SessionClosed,
    SessionRefused,
    TcpSocketClientError,
    TcpSocketError,
)
from tcpsocket.client.events import CLOSE_EVENT, DATA_EVENT, DRAIN_EVENT, ERROR_EVENT
from tcpsocket.client.manager import TcpSocketManager
from tcpsocket.client.secure import SecureTcpSocket, SecureTcpSocketManager, SocketInfo, TlsInfo
from tcpsocket.client.session import Session
from tcpsocket.client.socket import TcpSocket
from tcpsocket.client.transport import TcpSocketAddress, TcpSocketTransport

__all__ = [
    "CLOSE_EVENT",
    "DATA_EVENT",
    "DRAIN_EVENT",
    "ERROR_EVENT",
    "GetServiceError",
    "PermissionDenied",
    "ProtocolError",
    "SecureTcpSocket",
    "SecureTcpSocketManager",
    "Session",
    "SessionClosed",
    "SessionRefused",
    "SocketInfo",
    "TcpSocket",
    "TcpSocketAddress",
    "TcpSocketClientEndpoint",
    "TcpSocketClientError",
    "TcpSocketError",
    "TcpSocketManager",
    "TcpSocketTransport",
    "TlsInfo",
]
