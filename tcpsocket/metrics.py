"""Prometheus metrics of one daemon, in a registry of its own (``/metrics``).

Each :class:`~tcpsocket.config.ServerConfig` carries a :class:`Metrics`; the session, the
service and the sockets report what happens to it with one call each, and the gauges (open
sessions and sockets, held and queued bytes) are computed when the registry is scraped. The
registry is not prometheus_client's global one, so several daemons in a process keep apart.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet import defer, error
from twisted.python.failure import Failure

from tcpsocket._version import __version__

if TYPE_CHECKING:
    from tcpsocket.remote import RemoteSocket
    from tcpsocket.session import SessionProtocol

__all__ = ["HANDSHAKE_FAILURES", "SOCKET_FAILURES", "Metrics"]

#: Reasons a session handshake fails (``tcpsocket_handshake_failures_total``); each is also a
#: reason a session is refused, besides ``capacity`` (``--max-sessions`` reached).
HANDSHAKE_FAILURES = ("invalid-token", "timeout", "malformed", "token-store")
#: Reasons an ``open()`` fails (``tcpsocket_sockets_failed_total``).
SOCKET_FAILURES = (
    "invalid",
    "denied",
    "limit",
    "refused",
    "timeout",
    "dns",
    "unreachable",
    "released",
    "error",
)


def failure_reason(failure: Failure) -> str:
    """The ``tcpsocket_sockets_failed_total`` reason for a failed connection attempt."""
    if failure.check(error.ConnectionRefusedError):
        return "refused"
    if failure.check(error.TimeoutError, error.TCPTimedOutError, defer.TimeoutError):
        return "timeout"
    if failure.check(error.DNSLookupError):
        return "dns"
    if failure.check(defer.CancelledError, error.ConnectingCancelledError):
        return "released"
    if failure.check(error.NoRouteError, error.ConnectError):
        return "unreachable"
    return "error"


class Metrics:
    """The counters of one daemon, and what its gauges are computed from."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sessions: list[weakref.ReferenceType[set[SessionProtocol]]] = []
        self._sockets: weakref.WeakSet[RemoteSocket] = weakref.WeakSet()
        self._closed_sent = 0
        self._closed_received = 0
        self.sessions_started = Counter(
            "tcpsocket_sessions", "Sessions that passed the handshake.", registry=self.registry
        )
        self.sessions_refused = Counter(
            "tcpsocket_sessions_refused",
            "Sessions refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.handshake_failures = Counter(
            "tcpsocket_handshake_failures",
            "Session handshakes that failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.sockets_opened = Counter(
            "tcpsocket_sockets_opened", "Sockets connected to a remote.", registry=self.registry
        )
        self.sockets_failed = Counter(
            "tcpsocket_sockets_failed",
            "open() requests that failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("capacity", *HANDSHAKE_FAILURES):
            self.sessions_refused.labels(reason)
        for reason in HANDSHAKE_FAILURES:
            self.handshake_failures.labels(reason)
        for reason in SOCKET_FAILURES:
            self.sockets_failed.labels(reason)
        self.registry.register(_LiveCollector(self))

    # -- what the daemon reports ------------------------------------------------

    def watch_sessions(self, sessions: set[SessionProtocol]) -> None:
        """Count ``sessions`` (a factory's live set) in the open-session gauges."""
        self._sessions.append(weakref.ref(sessions))

    def session_refused(self, reason: str) -> None:
        """A WebSocket was refused a session (``capacity``)."""
        self.sessions_refused.labels(reason).inc()

    def handshake_failed(self, reason: str) -> None:
        """A session handshake failed (one of :data:`HANDSHAKE_FAILURES`)."""
        self.handshake_failures.labels(reason).inc()
        self.sessions_refused.labels(reason).inc()

    def session_started(self) -> None:
        """A session passed the handshake."""
        self.sessions_started.inc()

    def socket_failed(self, reason: str | Failure) -> None:
        """An ``open()`` failed: a reason of :data:`SOCKET_FAILURES`, or the connect failure."""
        self.sockets_failed.labels(
            failure_reason(reason) if isinstance(reason, Failure) else reason
        ).inc()

    def socket_connected(self, socket: RemoteSocket) -> None:
        """A socket connected to its remote."""
        self.sockets_opened.inc()
        self._sockets.add(socket)

    def socket_closed(self, socket: RemoteSocket) -> None:
        """A connected socket's connection is gone: its bytes move to the closed totals."""
        if socket in self._sockets:
            self._sockets.discard(socket)
            self._closed_sent += socket.bytes_sent
            self._closed_received += socket.bytes_received

    # -- what a scrape reads ----------------------------------------------------

    def live_sessions(self) -> Iterator[SessionProtocol]:
        """Every session of the watched factories."""
        for ref in self._sessions:
            sessions = ref()
            if sessions is not None:
                yield from list(sessions)

    def live_sockets(self) -> list[RemoteSocket]:
        """Every socket connected and not closed yet."""
        return list(self._sockets)


class _LiveCollector(Collector):
    """The gauges and byte counters, read from the live sessions and sockets at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Any]:
        metrics = self._metrics
        sessions = list(metrics.live_sessions())
        sockets = metrics.live_sockets()
        info = GaugeMetricFamily("tcpsocket_info", "The daemon's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "tcpsocket_sessions_open",
            "WebSocket sessions open (including those still in their handshake).",
            value=len(sessions),
        )
        yield GaugeMetricFamily(
            "tcpsocket_sockets_open", "Sockets connected to a remote.", value=len(sockets)
        )
        connecting = sum(
            len(service.connecting) for session in sessions for service in session.services.values()
        )
        yield GaugeMetricFamily(
            "tcpsocket_sockets_connecting",
            "open() requests in progress: name lookups and TCP connects.",
            value=connecting,
        )
        yield GaugeMetricFamily(
            "tcpsocket_held_bytes",
            "Bytes received from remotes and not yet sent to clients (suspended or congested).",
            value=sum(socket.held_downstream for socket in sockets),
        )
        yield GaugeMetricFamily(
            "tcpsocket_queued_bytes",
            "Bytes accepted from clients and not yet handed to the remotes' TCP connections.",
            value=sum(socket.queued_upstream for socket in sockets),
        )
        transferred = CounterMetricFamily(
            "tcpsocket_bytes",
            "Bytes moved: to_remote (accepted from clients), from_remote (read from remotes).",
            labels=["direction"],
        )
        transferred.add_metric(
            ["to_remote"], metrics._closed_sent + sum(s.bytes_sent for s in sockets)
        )
        transferred.add_metric(
            ["from_remote"], metrics._closed_received + sum(s.bytes_received for s in sockets)
        )
        yield transferred
