"""Put the daemon together: the web resources, the Site, and an ``IService``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.observability import Access, observability_children
from tcpsocket.session import SessionFactory
from tcpsocket.web import ApiV1Resource, DemoResource

__all__ = [
    "TcpSocketService",
    "TcpSocketSite",
    "build_observability_site",
    "build_root",
    "build_site",
]

#: ``/metrics`` and ``/healthz`` for loopback clients only: the default.
LOCAL_ONLY = Access()

#: Close code sent to clients when the daemon stops (RFC 6455 "going away").
GOING_AWAY = 1001


def build_root(sessions: SessionFactory, observability: Access | None = LOCAL_ONLY) -> Resource:
    """The resource tree: the demo page at ``/``, ``/ws`` and ``/api/v1/``.

    With ``observability``, also ``/metrics`` and ``/healthz``, readable as it says.
    """
    root = DemoResource()
    root.putChild(b"ws", sessions.websocket_resource())
    api = Resource()
    api.putChild(b"v1", ApiV1Resource())
    root.putChild(b"api", api)
    if observability is not None:
        for name, child in observability_children(sessions.config.metrics, observability).items():
            root.putChild(name, child)
    return root


class TcpSocketSite(Site):
    """A ``Site`` serving the daemon; :attr:`session_factory` knows the live sessions."""

    def __init__(
        self, config: ServerConfig, reactor: Any = None, observability: Access | None = LOCAL_ONLY
    ) -> None:
        self.session_factory = SessionFactory(config, reactor)
        # An HTTP connection that says nothing for the handshake timeout is
        # closed (a WebSocket session is not idle HTTP: it is unaffected).
        super().__init__(
            build_root(self.session_factory, observability),
            timeout=config.handshake_timeout,
            reactor=self.session_factory.reactor,
        )


def build_site(
    config: ServerConfig, reactor: Any = None, observability: Access | None = LOCAL_ONLY
) -> TcpSocketSite:
    """A Site that serves everything on one port (``/metrics`` as ``observability`` says)."""
    return TcpSocketSite(config, reactor, observability)


def build_observability_site(config: ServerConfig, access: Access, reactor: Any = None) -> Site:
    """A Site serving only ``/metrics`` and ``/healthz`` (``--metrics-listen``)."""
    root = Resource()
    for name, child in observability_children(config.metrics, access).items():
        root.putChild(name, child)
    return Site(root, timeout=config.handshake_timeout, reactor=reactor)


class TcpSocketService(MultiService):
    """The daemon as an ``IService``: listens on each strports description.

    ``/metrics`` and ``/healthz`` are served on those listeners to loopback clients, or with
    ``metrics_token`` to clients sending it; with ``metrics_listen`` only on that strport.
    """

    def __init__(
        self,
        config: ServerConfig,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        reactor: Any = None,
        metrics_listen: str | None = None,
        metrics_token: str | None = None,
    ) -> None:
        super().__init__()
        access = Access(metrics_token, local_only=metrics_listen is None)
        self.site = build_site(config, reactor, None if metrics_listen else access)
        for description in listen:
            strports.service(description, self.site, reactor=reactor).setServiceParent(self)
        if metrics_listen:
            observability = build_observability_site(config, access, reactor)
            strports.service(metrics_listen, observability, reactor=reactor).setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        """Stop listening, end every session, and fire when they are closed.

        The sessions' sockets flush what was accepted, then close (bounded by
        the close timeout).
        """
        closed = []
        for session in list(self.site.session_factory.sessions):
            closed.append(session.when_closed())
            session.end(GOING_AWAY, "daemon stopping")
        stopping = defer.maybeDeferred(super().stopService)
        done: Deferred[None] = defer.gatherResults([stopping, *closed]).addCallback(lambda _: None)
        return done
