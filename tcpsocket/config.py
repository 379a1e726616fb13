"""Server settings, with the defaults ``twistd tcpsocket`` uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IHostnameResolver, IStreamClientEndpoint

from tcpsocket.interfaces import IOpenPolicy, ITokenStore
from tcpsocket.metrics import Metrics
from tcpsocket.policy import DestinationPolicy
from tcpsocket.services import ServiceRegistry, default_services

DEFAULT_LISTEN = "tcp:8081:interface=127.0.0.1"
KiB = 1024
MiB = 1024 * KiB

#: How the daemon reaches a remote: ``connect(reactor, host, port, timeout)`` gives the endpoint.
#: ``host`` is a checked address, or a name whose checked addresses are all that
#: ``reactor``'s name resolver knows: a connector must not resolve it any other way.
RemoteConnector = Callable[[Any, str, int, float], IStreamClientEndpoint]


def remote_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """The default :attr:`ServerConfig.connect`.

    A ``HostnameEndpoint`` for a name (Happy Eyeballs over the checked
    addresses, which ``reactor`` resolves it to); a plain TCP endpoint for an
    address.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a session needs to know: the limits, and which remotes it may open."""

    tokens: ITokenStore
    #: Which remotes sessions may open; by default only global addresses (doc/destinations.md).
    policy: IOpenPolicy = field(default_factory=DestinationPolicy)
    #: Resolves host names; None: ``getaddrinfo`` on the daemon's own thread pool.
    resolver: IHostnameResolver | None = None
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    close_timeout: float = 30.0
    max_sockets_per_session: int = 1024
    max_sessions: int = 1024
    max_message_size: int = 16 * MiB + 64
    high_water_mark: int = 64 * KiB
    max_send_buffer: int = 16 * MiB
    session_buffer: int = 256 * KiB
    #: Bytes read from a remote at once for the one bulk transfer of a session (apart from the
    #: high-water mark, a flow-control contract); otherwise no more than the mark.
    read_size: int = 1 * MiB
    #: Sockets of all sessions together (lowered to fit the open files limit).
    max_sockets: int = 16384
    #: Upstream bytes queued by the sockets of one session / of all sessions.
    max_session_send_buffer: int = 64 * MiB
    max_total_send_buffer: int = 512 * MiB
    max_services_per_session: int = 64
    #: Name lookups in progress at once, per session and in all.
    max_lookups_per_session: int = 4
    max_lookups: int = 32
    #: Web origins (``https://app.example``) allowed to open a session, besides the daemon's
    #: own pages; ``"*"`` allows any.  Clients that send no ``Origin`` (native apps) are allowed.
    allowed_origins: frozenset[str] = frozenset()
    #: Host names the daemon answers to, besides localhost, 127.0.0.1, [::1] and the address
    #: a connection arrived on; ``"*"`` allows any ``Host``.
    server_names: frozenset[str] = frozenset()
    #: Largest WebSocket message before a session is authenticated (the token).
    handshake_message_size: int = 4 * KiB
    #: Connections without a session yet (HTTP, or WebSocket before the token), in total
    #: and per client address; over either, the oldest of them is dropped.
    max_pending: int = 512
    max_pending_per_address: int = 128
    #: Failed session handshakes allowed per client address and minute (a burst of as many).
    failed_handshakes_per_minute: int = 30
    #: Pings a client may send per minute (a burst of as many); more closes its connection.
    pings_per_minute: int = 60
    #: Seconds between WebSocket pings to a quiet client, and to wait for its pong (0: none).
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 20.0
    #: Seconds a session with no socket open may send nothing before it is closed (0: never).
    idle_timeout: float = 600.0
    #: A PEM file of certificate authorities that secure sockets trust besides the system's.
    tls_ca_file: str | None = None
    #: Destination hosts whose certificates secure sockets accept without verification (the
    #: operator's per-destination exceptions, e.g. a device with a self-signed certificate;
    #: never a client's: a serverName naming one does not exempt another host).
    tls_no_verify: frozenset[str] = frozenset()
    #: The services sessions offer, by name (doc/extending.md).
    services: ServiceRegistry = field(default_factory=default_services, compare=False)
    #: Makes the endpoint each ``open`` connects through (``tcpsocket.testing`` puts fakes here).
    connect: RemoteConnector = remote_endpoint
    #: Counters of this daemon, served at ``/metrics`` (each config gets its own).
    metrics: Metrics = field(default_factory=Metrics, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "handshake_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("keepalive_interval", "keepalive_timeout", "idle_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.keepalive_interval and not self.keepalive_timeout:
            raise ValueError("keepalive_timeout must be positive when keepalive_interval is")
        for name in (
            "max_sockets_per_session",
            "max_sessions",
            "max_message_size",
            "high_water_mark",
            "max_send_buffer",
            "session_buffer",
            "read_size",
            "max_sockets",
            "max_session_send_buffer",
            "max_total_send_buffer",
            "max_services_per_session",
            "max_lookups_per_session",
            "max_lookups",
            "handshake_message_size",
            "max_pending",
            "max_pending_per_address",
            "failed_handshakes_per_minute",
            "pings_per_minute",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        object.__setattr__(
            self, "allowed_origins", frozenset(o.lower().rstrip("/") for o in self.allowed_origins)
        )
        object.__setattr__(
            self, "tls_no_verify", frozenset(n.lower().rstrip(".") for n in self.tls_no_verify)
        )
        object.__setattr__(
            self, "server_names", frozenset(n.lower().rstrip(".") for n in self.server_names)
        )
        if self.max_send_buffer < self.high_water_mark:
            raise ValueError("max_send_buffer must not be below high_water_mark")
