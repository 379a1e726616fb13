"""Every use of Twisted's and Autobahn's private state, in one place.

Each function here reads or writes something that Twisted or Autobahn does
not promise to keep; ``tests/test_private_canaries.py`` has one canary per
function that fails loudly when a new release changes it, and ``setup.py``
bounds the versions they were checked with.  Nothing here imports a server
module (``twisted.web``, Autobahn's server), so :mod:`tcpsocket.client` can
use it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet._resolver import GAIResolver  # the public resolver, on a pool of ours
from twisted.internet.interfaces import IDelayedCall

__all__ = [
    "GAIResolver",
    "autobahn_data_received",
    "binary_frame_head",
    "cancel_autobahn_timers",
    "client_tls_for",
    "drop_autobahn_futures",
    "drop_message_data",
    "option_handlers",
    "raise_listen_errors",
    "record_verify_errors",
    "request_has_body",
    "set_buffer_size",
    "transport_unsent",
    "trust_root",
    "use_reactor_timers",
]


# -- Autobahn ------------------------------------------------------------------


class _Timer:
    """A delayed call whose ``cancel()`` may be called again, or after it ran (as txaio's)."""

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def active(self) -> bool:
        return self._call.active()

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ReactorTimer:
    """What Autobahn expects of ``factory._batched_timer``."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Timer:
        return _Timer(self._reactor.callLater(delay, func, *args, **kw))


def use_reactor_timers(factory: Any, reactor: Any) -> None:
    """Make an Autobahn WebSocket factory schedule its timers on ``reactor``.

    Autobahn asks its factories for ``_batched_timer.call_later``; its own
    batches timers per 200 ms bucket on the global reactor, and leaves
    cancelled buckets armed.  These are exact, cancel cleanly, and follow the
    reactor (or test clock) the factory was given.
    """
    factory._batched_timer = ReactorTimer(reactor)


def autobahn_data_received(protocol: Any, data: bytes) -> None:
    """Autobahn's ``dataReceived`` without its debug line formatted for every read."""
    protocol._dataReceived(data)


#: Autobahn's timers of a connection, which it leaves armed when the peer drops it.
AUTOBAHN_TIMERS = (
    "closeHandshakeTimeoutCall",
    "openHandshakeTimeoutCall",
    "autoPingPendingCall",
    "autoPingTimeoutCall",
)


def cancel_autobahn_timers(protocol: Any) -> None:
    """Cancel and forget Autobahn's own timers of ``protocol``."""
    for name in AUTOBAHN_TIMERS:
        timer = getattr(protocol, name, None)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(protocol, name, None)


def drop_autobahn_futures(protocol: Any) -> None:
    """Break the cycle between a protocol and the futures Autobahn gives it as result."""
    protocol.is_open = protocol.is_closed = None


def drop_message_data(protocol: Any) -> None:
    """Forget the fragments Autobahn collected of the message being received."""
    protocol.message_data = []


_FRAME_7 = struct.Struct(">BB")
_FRAME_16 = struct.Struct(">BBH")
_FRAME_64 = struct.Struct(">BBQ")


def binary_frame_head(length: int) -> bytes:
    """The header of an unmasked, unfragmented binary frame of ``length`` payload bytes:
    what Autobahn's ``sendMessage`` writes for a server without extensions."""
    if length < 126:
        return _FRAME_7.pack(0x82, length)
    if length < 65536:
        return _FRAME_16.pack(0x82, 126, length)
    return _FRAME_64.pack(0x82, 127, length)


# -- Twisted -------------------------------------------------------------------


def _innermost(transport: Any) -> Any:
    """The transport under protocol wrappers such as TLS (``TLSMemoryBIOProtocol``)."""
    from twisted.protocols.policies import ProtocolWrapper

    while isinstance(transport, ProtocolWrapper) and transport.transport is not None:
        transport = transport.transport
    return transport


def set_buffer_size(transport: Any, size: int) -> None:
    """Make ``transport`` pause its producer above ``size`` unsent bytes, and read as much
    at once.

    ``bufferSize`` is an attribute of Twisted's ``FileDescriptor``; on a TLS
    wrapper (a ``ProtocolWrapper``) it would be silently lost, so it is set on
    the socket transport under it too.
    """
    transport.bufferSize = size
    inner = _innermost(transport)
    if inner is not transport:
        inner.bufferSize = size


def transport_unsent(transport: Any) -> int:
    """Bytes a Twisted TCP transport still holds (not yet taken by the kernel).

    Reads ``FileDescriptor`` internals (0 for other transports).
    """
    try:
        return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)
    except (AttributeError, TypeError):
        return 0


def request_has_body(channel: Any) -> bool:
    """Whether the request whose headers an ``HTTPChannel`` just parsed announces a body."""
    return channel._transferDecoder is not None and channel.length != 0


def raise_listen_errors(service: Any) -> None:
    """Make a ``StreamServerEndpointService`` fail ``startService`` when it cannot listen
    (as ``strports.service`` does)."""
    service._raiseSynchronously = True


def option_handlers(options: Any) -> dict[str, Any]:
    """The parameter handlers of a ``twisted.python.usage.Options``, by long name."""
    handlers: dict[str, Any] = options._dispatch
    return handlers


class SystemTrustAndFile:
    """An ``IOpenSSLTrustRoot``: the system's trust store, plus the CAs of a PEM file.

    Twisted's trust roots (``platformTrust``, ``trustRootFromCertificates``)
    trust one or the other; this one does both.  The interface's one method,
    ``_addCACertsToContext``, is private to Twisted.
    """

    def __init__(self, ca_file: str | None) -> None:
        self.ca_file = ca_file

    def _addCACertsToContext(self, context: Any) -> None:
        context.set_default_verify_paths()
        if self.ca_file is not None:
            context.load_verify_locations(self.ca_file)


def trust_root(ca_file: str | None) -> Any:
    """:class:`SystemTrustAndFile` as the ``IOpenSSLTrustRoot`` it provides."""
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from zope.interface import directlyProvides

    root = SystemTrustAndFile(ca_file)
    directlyProvides(root, IOpenSSLTrustRoot)
    return root


def record_verify_errors(
    creator: Any, tls_protocol: Any, connection: Any, record: Callable[[int], None]
) -> None:
    """Make ``connection`` (made by ``creator``, an ``optionsForClientTLS`` result) call
    ``record`` with each OpenSSL X509_V_ERR code of the peer's chain, verifying exactly as
    Twisted does (its ``_verifyCB``, hostname check included).

    pyOpenSSL has no ``get_verify_result``, and the verify callback is the only place
    the reason (expired, unknown authority...) is known.
    """
    from OpenSSL import SSL
    from twisted.internet._sslverify import _verifyCB

    twisted_callback = _verifyCB(tls_protocol, creator._hostnameIsDnsName, creator._hostnameASCII)

    def verify(conn: Any, certificate: Any, code: int, depth: int, ok: int) -> bool:
        if not ok:
            record(code)
        return bool(twisted_callback(conn, certificate, code, depth, bool(ok)))

    connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)


def client_tls_for(name: str, options: Any) -> Any:
    """Twisted's client TLS settings for ``name`` over shared ``CertificateOptions``
    (whose one OpenSSL context every connection then uses).

    ``optionsForClientTLS`` makes a new context per call, and each loads the whole
    system trust store (about 1 MiB per connection); ``ClientTLSOptions`` itself,
    which adds SNI and the host name check to a context, is not exported.
    """
    from twisted.internet._sslverify import ClientTLSOptions

    return ClientTLSOptions(options._makeTLSConnection, name)
