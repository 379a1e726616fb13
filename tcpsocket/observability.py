"""``/metrics`` (Prometheus text format) and ``/healthz``, and who may read them.

By default they are served on the daemon's own listeners to loopback clients only (and to
UNIX-socket clients, which are local). With ``--metrics-token`` they are served to the clients
that send ``Authorization: Bearer <token>``, wherever they are, and to no one else.
``--metrics-listen`` serves them on a listener of their own instead (not on the daemon's), to
whoever reaches it, or, with a token, to those who send it.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from tcpsocket.metrics import Metrics

__all__ = ["Access", "HealthResource", "MetricsResource", "observability_children"]


@dataclass(frozen=True)
class Access:
    """Who may read ``/metrics`` and ``/healthz``."""

    #: If set, every client must send it (``Authorization: Bearer <token>``), wherever it is.
    token: str | None = None
    #: Without a token: whether only loopback (and UNIX-socket) clients may read.
    local_only: bool = True

    def allows(self, request: Request) -> bool:
        """Whether ``request`` may read."""
        if self.token is not None:
            header = request.getHeader(b"authorization") or b""
            return hmac.compare_digest(header, b"Bearer " + self.token.encode("utf-8"))
        if not self.local_only:
            return True
        address = request.getClientAddress()
        if isinstance(address, IPv4Address | IPv6Address):
            host = address.host.split("%", 1)[0]
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return False
            mapped = getattr(ip, "ipv4_mapped", None)
            return bool((mapped or ip).is_loopback)
        # A UNIX socket: only local processes reach it.
        return True


def _plain(request: Request, code: int, text: bytes, content_type: bytes) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(text))
    # A HEAD gets the headers only (Twisted warns about a body).
    return b"" if request.method == b"HEAD" else text


class _Guarded(Resource):
    isLeaf = True

    def __init__(self, access: Access) -> None:
        super().__init__()
        self.access = access

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _plain(
                request, http.NOT_ALLOWED, b"Method Not Allowed\n", b"text/plain; charset=utf-8"
            )
        if request.postpath and request.postpath != [b""]:
            return _plain(request, http.NOT_FOUND, b"Not Found\n", b"text/plain; charset=utf-8")
        if not self.access.allows(request):
            if self.access.token is not None:
                request.setHeader(b"www-authenticate", b'Bearer realm="tcpsocket"')
            return _plain(request, http.FORBIDDEN, b"Forbidden\n", b"text/plain; charset=utf-8")
        return self.body(request)

    def body(self, request: Request) -> bytes:
        raise NotImplementedError


class MetricsResource(_Guarded):
    """``/metrics``: the daemon's registry in the Prometheus text format."""

    def __init__(self, metrics: Metrics, access: Access) -> None:
        super().__init__(access)
        self.metrics = metrics

    def body(self, request: Request) -> bytes:
        return _plain(
            request, http.OK, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST.encode()
        )


class HealthResource(_Guarded):
    """``/healthz``: ``ok`` while the daemon serves."""

    def body(self, request: Request) -> bytes:
        return _plain(request, http.OK, b"ok\n", b"text/plain; charset=utf-8")


def observability_children(metrics: Metrics, access: Access) -> dict[bytes, Resource]:
    """The resources to mount at the root: ``metrics`` and ``healthz``."""
    return {b"metrics": MetricsResource(metrics, access), b"healthz": HealthResource(access)}
