"""Put the daemon together: the web resources, the Site, and an ``IService``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.web.resource import Resource
from twisted.web.server import Site

from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.session import SessionFactory
from tcpsocket.web import ApiV1Resource, DemoResource

__all__ = ["TcpSocketService", "TcpSocketSite", "build_root", "build_site"]

#: Close code sent to clients when the daemon stops (RFC 6455 "going away").
GOING_AWAY = 1001


def build_root(sessions: SessionFactory) -> Resource:
    """The resource tree: the demo page at ``/``, ``/ws`` and ``/api/v1/``."""
    root = DemoResource()
    root.putChild(b"ws", sessions.websocket_resource())
    api = Resource()
    api.putChild(b"v1", ApiV1Resource())
    root.putChild(b"api", api)
    return root


class TcpSocketSite(Site):
    """A ``Site`` serving the daemon; :attr:`sessions` holds the live sessions."""

    def __init__(self, config: ServerConfig, reactor: Any = None) -> None:
        self.sessions = SessionFactory(config, reactor)
        super().__init__(build_root(self.sessions), reactor=self.sessions.reactor)


def build_site(config: ServerConfig, reactor: Any = None) -> TcpSocketSite:
    """A Site that serves everything on one port."""
    return TcpSocketSite(config, reactor)


class TcpSocketService(MultiService):
    """The daemon as an ``IService``: listens on each strports description."""

    def __init__(
        self,
        config: ServerConfig,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        reactor: Any = None,
    ) -> None:
        super().__init__()
        self.site = build_site(config, reactor)
        for description in listen:
            strports.service(description, self.site, reactor=reactor).setServiceParent(self)

    def stopService(self) -> Any:
        """Stop listening and end every session (their sockets flush, then close)."""
        for session in list(self.site.sessions.sessions):
            session.sendClose(GOING_AWAY, "daemon stopping")
        return super().stopService()
