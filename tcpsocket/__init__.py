"""tcpsocket: raw TCP client sockets for web and Python apps, over a session WebSocket.

The daemon's public API, for embedding it in a Twisted application:

* :class:`ServerConfig`, :class:`Token`, :class:`TokenStore`, :class:`DestinationPolicy`:
  what sessions may do;
* :class:`TcpSocketService`: the whole daemon as an ``IService``;
* :class:`SessionFactory` (its ``websocket_resource()`` goes at ``/ws``) and
  :class:`ApiV1Resource` (at ``/api/v1``): the pieces, for an existing ``Site``.

The Python client is :mod:`tcpsocket.client`.
"""

from __future__ import annotations

from tcpsocket._version import __version__
from tcpsocket.config import ServerConfig
from tcpsocket.policy import AllowAll, AllowList, DestinationPolicy, Rule
from tcpsocket.session import SessionFactory
from tcpsocket.site import TcpSocketService, TcpSocketSite, build_site
from tcpsocket.tokens import Token, TokenStore
from tcpsocket.web import ApiV1Resource, DemoResource

__all__ = [
    "AllowAll",
    "AllowList",
    "ApiV1Resource",
    "DemoResource",
    "DestinationPolicy",
    "Rule",
    "ServerConfig",
    "SessionFactory",
    "TcpSocketService",
    "TcpSocketSite",
    "Token",
    "TokenStore",
    "__version__",
    "build_site",
]
