"""Put the daemon together: the web resources, the Site, and an ``IService``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.httplimits import LimitedHTTPChannel, MisdirectedResource
from tcpsocket.logtext import printable
from tcpsocket.origins import host_allowed
from tcpsocket.session import SessionFactory
from tcpsocket.web import ApiV1Resource, DemoResource

__all__ = ["TcpSocketService", "TcpSocketSite", "build_root", "build_site"]

log = Logger()

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
    """A ``Site`` serving the daemon; :attr:`session_factory` knows the live sessions.

    Its HTTP connections are :class:`LimitedHTTPChannel`\\ s (no request
    bodies, header deadline, pending-connection caps), and a request for a
    ``Host`` the daemon does not serve gets 421 (:mod:`tcpsocket.origins`).
    """

    # A plain HTTP/1.1 channel (no HTTP/2 negotiation wrapper): sessions are HTTP/1.1 upgrades.
    protocol = LimitedHTTPChannel  # type: ignore[assignment]

    def __init__(self, config: ServerConfig, reactor: Any = None) -> None:
        self.session_factory = SessionFactory(config, reactor)
        self.config = config
        #: Connections without a session, shared with the session factory.
        self.admission = self.session_factory.admission
        self.log_budget = self.session_factory.log_budget
        # An HTTP connection that says nothing for the handshake timeout is
        # closed (a WebSocket session is not idle HTTP: it is unaffected).
        super().__init__(
            build_root(self.session_factory),
            timeout=config.handshake_timeout,
            reactor=self.session_factory.reactor,
        )

    def getResourceFor(self, request: Any) -> Any:
        """The resource for ``request``, or a 421 if its ``Host`` is not served here."""
        host = request.getHeader(b"host")
        local = getattr(request.getHost(), "host", None)
        if not host_allowed(self.config, None if host is None else host.decode("latin-1"), local):
            self.log_budget.warn(
                log,
                "refused request from {peer}: Host {host} is not served here",
                peer=printable(getattr(request.getClientAddress(), "host", "local")),
                host=printable(host),
            )
            return MisdirectedResource()
        return super().getResourceFor(request)


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
