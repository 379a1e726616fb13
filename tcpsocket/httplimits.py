"""HTTP hardening: no request bodies, an absolute header deadline, pending-connection caps.

:class:`LimitedHTTPChannel` is the Site's protocol.  It answers any request
with a body (a ``Content-Length`` above 0, or chunked) with 413 as soon as the
header arrives, before a byte of the body is read or stored; gives each
request's headers an absolute deadline from the moment the connection is
ready for them (a client that sends one byte every few seconds is cut at the
deadline); and registers the connection as *pending* in the site's
:class:`tcpsocket.admission.PendingConnections`, which caps idle HTTP
connections in total and per client address.  :class:`MisdirectedResource`
answers requests whose ``Host`` the daemon does not serve.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request

from tcpsocket._private import request_has_body
from tcpsocket.admission import client_address
from tcpsocket.logtext import printable

__all__ = ["LimitedHTTPChannel", "MisdirectedResource"]

log = Logger()

_TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 34\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Request bodies are not accepted.\r\n"
)


class LimitedHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` that refuses bodies, times headers out, and counts as pending."""

    site: Any
    transport: Any
    _header_deadline: IDelayedCall | None = None
    _refused = False
    _admission_key: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._admission_key = self.transport
        self.site.admission.admit(self._admission_key, client_address(self.transport), self._drop)
        self._arm_header_deadline()

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.callLater(
            self.site.config.handshake_timeout, self._header_deadline_passed
        )

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self.transport is not None:
            self.site.log_budget.warn(
                log,
                "dropped HTTP connection from {peer}: no complete request headers in time",
                peer=printable(client_address(self.transport)),
            )
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def headerReceived(self, line: bytes) -> bool:
        ok: bool = super().headerReceived(line)
        if ok and request_has_body(self):
            # The daemon serves GET, HEAD and OPTIONS: no body is ever needed.
            self._refused = True
            self._cancel_header_deadline()
            self.transport.write(_TOO_LARGE)
            self.loseConnection()
            return False
        return ok

    def allHeadersReceived(self) -> None:
        self._cancel_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Request) -> None:
        # Armed first: pipelined requests already buffered are parsed inside
        # requestDone, and their headers cancel it again.
        if self.persistent and self.transport is not None:
            self._arm_header_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_header_deadline()
        self.site.admission.release(self._admission_key)
        super().connectionLost(reason)


class MisdirectedResource(Resource):
    """421 for a request whose ``Host`` is not a name the daemon serves (DNS rebinding)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(421)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if request.method == b"HEAD":
            return b""
        return (
            b"Misdirected Request: this daemon does not serve that host name (see --server-name).\n"
        )
