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

from typing import TYPE_CHECKING, Any

from tcpsocket._version import __version__

if TYPE_CHECKING:
    from tcpsocket.config import ServerConfig
    from tcpsocket.policy import AllowAll, AllowList, DestinationPolicy, Rule
    from tcpsocket.session import SessionFactory
    from tcpsocket.site import TcpSocketService, TcpSocketSite, build_site
    from tcpsocket.tokens import Token, TokenStore
    from tcpsocket.web import ApiV1Resource, DemoResource

#: Where each name lives: imported on first use, so that ``tcpsocket.client``
#: (a package of this one) does not load the server.
_LAZY = {
    "ServerConfig": "tcpsocket.config",
    "AllowAll": "tcpsocket.policy",
    "AllowList": "tcpsocket.policy",
    "DestinationPolicy": "tcpsocket.policy",
    "Rule": "tcpsocket.policy",
    "SessionFactory": "tcpsocket.session",
    "TcpSocketService": "tcpsocket.site",
    "TcpSocketSite": "tcpsocket.site",
    "build_site": "tcpsocket.site",
    "Token": "tcpsocket.tokens",
    "TokenStore": "tcpsocket.tokens",
    "ApiV1Resource": "tcpsocket.web",
    "DemoResource": "tcpsocket.web",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tcpsocket' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
