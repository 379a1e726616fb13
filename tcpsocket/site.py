"""Put the daemon together: the web resources, the Site, and an ``IService``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from tcpsocket._private import raise_listen_errors
from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.httplimits import LimitedHTTPChannel, MisdirectedResource
from tcpsocket.logtext import printable
from tcpsocket.observability import Access, observability_children
from tcpsocket.origins import host_allowed
from tcpsocket.reload import apply_reload
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

log = Logger()

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
    """A ``Site`` serving the daemon; :attr:`session_factory` knows the live sessions.

    Its HTTP connections are :class:`LimitedHTTPChannel`\\ s (no request
    bodies, header deadline, pending-connection caps), and a request for a
    ``Host`` the daemon does not serve gets 421 (:mod:`tcpsocket.origins`).
    """

    # A plain HTTP/1.1 channel (no HTTP/2 negotiation wrapper): sessions are HTTP/1.1 upgrades.
    protocol = LimitedHTTPChannel  # type: ignore[assignment]

    def __init__(
        self, config: ServerConfig, reactor: Any = None, observability: Access | None = LOCAL_ONLY
    ) -> None:
        self.session_factory = SessionFactory(config, reactor)
        self.config = config
        #: Connections without a session, shared with the session factory.
        self.admission = self.session_factory.admission
        self.log_budget = self.session_factory.log_budget
        # An HTTP connection that says nothing for the handshake timeout is
        # closed (a WebSocket session is not idle HTTP: it is unaffected).
        super().__init__(
            build_root(self.session_factory, observability),
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

    def listening_on(self, address: IAddress) -> None:
        """Tell the daemon it listens at ``address`` (a port's ``getHost()``).

        Sessions may never open the daemon's own endpoints; an application
        that listens with this site itself calls this for each port.
        """
        self.session_factory.listening_on(address)


@implementer(IStreamServerEndpoint)
class _Announcing:
    """An endpoint that tells the site where it ended up listening."""

    def __init__(self, endpoint: IStreamServerEndpoint, site: TcpSocketSite) -> None:
        self._endpoint = endpoint
        self._site = site

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        def listening(port: IListeningPort) -> IListeningPort:
            self._site.listening_on(port.getHost())
            return port

        return self._endpoint.listen(protocolFactory).addCallback(listening)


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
        if reactor is None:
            from twisted.internet import reactor
        access = Access(metrics_token, local_only=metrics_listen is None)
        self.site = build_site(config, reactor, None if metrics_listen else access)
        for description in listen:
            self._listen(reactor, description, self.site)
        if metrics_listen:
            observability = build_observability_site(config, access, reactor)
            self._listen(reactor, metrics_listen, observability)

    def _listen(self, reactor: Any, description: str, factory: Site) -> None:
        # Every listener is one of the daemon's own endpoints, which sessions may never open.
        endpoint = _Announcing(serverFromString(reactor, description), self.site)
        service = StreamServerEndpointService(endpoint, factory)
        # As strports.service does: a port that cannot listen fails startService.
        raise_listen_errors(service)
        service.setServiceParent(self)

    def reconfigure(self, fresh: ServerConfig) -> None:
        """Take ``fresh``'s tokens and destination rules in one step (:mod:`tcpsocket.reload`)."""
        factory = self.site.session_factory
        factory.config = apply_reload(factory.config, fresh)

    def stopService(self) -> Deferred[None]:
        """Stop gracefully; the Deferred fires once every remote connection is closed.

        1. Stop listening, and refuse WebSocket upgrades still in flight.
        2. End every session with close code 1001 "daemon stopping".
        3. Each session's sockets then flush what ``send`` accepted to their
           remotes and close, each within the close timeout; a socket that
           cannot is aborted and an ERROR log line says how many accepted
           bytes were not delivered.
        4. Stop the token store's threads, if it has any (``stop()``).
        5. Fire (under twistd, the reactor stops only then).
        """
        factory = self.site.session_factory
        factory.stopping = True
        sessions = list(factory.sessions)
        log.info(
            "daemon stopping: ending {sessions} sessions; sockets flush for up to {timeout:g} s",
            sessions=len(sessions),
            timeout=factory.config.close_timeout,
        )
        closed = [session.when_closed() for session in sessions]
        stopping = defer.maybeDeferred(super().stopService)
        for session in sessions:
            session.end(GOING_AWAY, "daemon stopping")
        connections = factory.connections

        def flushed(_: object) -> Deferred[None]:
            return connections.when_empty()

        def report(_: object) -> None:
            stop = getattr(factory.config.tokens, "stop", None)
            if stop is not None:
                # Every session has ended: no handshake waits for the store any more.
                stop()
            if connections.undelivered:
                log.error(
                    "daemon stopped: {sockets} sockets could not deliver {bytes} accepted bytes",
                    sockets=connections.incomplete,
                    bytes=connections.undelivered,
                )
            else:
                log.info("daemon stopped: every socket delivered what it accepted")

        done = defer.gatherResults([stopping, *closed])
        return done.addCallback(flushed).addCallback(report)
