"""TLS for the secure-socket service: whom to trust, and why a handshake failed."""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket._private import client_tls_for, record_verify_errors, trust_root
from tcpsocket.services.securesocket.messages import TlsInfo, TlsOptions

__all__ = [
    "UnverifiedCreator",
    "VerifyingCreator",
    "client_creator",
    "describe_tls_failure",
    "tls_info",
]

#: OpenSSL's X509_V_ERR codes that mean "no trusted authority signed this".
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21, 27})
_EXPIRED = 10
_NOT_YET_VALID = 9


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingCreator:
    """Twisted's client TLS settings for one connection, remembering why the chain failed."""

    def __init__(self, host: str, options: TlsOptions, ca_file: str | None) -> None:
        self._creator = client_tls_for(
            options.server_name or host, _shared_options(ca_file, options.alpn)
        )
        #: The first OpenSSL X509_V_ERR code of the peer's chain (0: none).
        self.verify_error = 0

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        record_verify_errors(self._creator, tlsProtocol, connection, self._record)
        return connection

    def _record(self, code: int) -> None:
        if not self.verify_error:
            self.verify_error = code


@functools.lru_cache(maxsize=32)
def _shared_options(ca_file: str | None, alpn: tuple[str, ...]) -> CertificateOptions:
    """One OpenSSL context per trust file and ALPN list, shared by the connections
    (what ``optionsForClientTLS`` would make for each: verified, with the system's
    trust store and ``ca_file``).  The CA file is read once, when first needed."""
    return CertificateOptions(
        trustRoot=trust_root(ca_file),
        acceptableProtocols=[p.encode("utf-8") for p in alpn] or None,
    )


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedCreator:
    """TLS without certificate verification, for a server name the operator exempted;
    SNI and ALPN as usual."""

    verify_error = 0

    def __init__(self, host: str, options: TlsOptions) -> None:
        self._name = (options.server_name or host).encode("idna")
        self._options = _unverified_options(options.alpn)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_tlsext_host_name(self._name)
        return connection


@functools.lru_cache(maxsize=8)
def _unverified_options(alpn: tuple[str, ...]) -> CertificateOptions:
    return CertificateOptions(acceptableProtocols=[p.encode("utf-8") for p in alpn] or None)


def client_creator(
    host: str,
    options: TlsOptions,
    ca_file: str | None,
    no_verify: frozenset[str] = frozenset(),
) -> VerifyingCreator | UnverifiedCreator:
    """The client TLS settings of one connection: verified against the system's trust
    store (and ``ca_file``), for ``options.server_name`` or else ``host``.

    Unverified only when the operator's ``no_verify`` lists the destination ``host`` (and
    the name to check, if the client gave another): the exception belongs to a destination,
    so a client cannot carry it to another host through ``serverName``."""
    checked = (options.server_name or host).lower().rstrip(".")
    if host.lower().rstrip(".") in no_verify and checked in no_verify:
        return UnverifiedCreator(host, options)
    return VerifyingCreator(host, options, ca_file)


def describe_tls_failure(failure: Failure, verify_error: int) -> str:
    """Why a TLS handshake failed, for the client: unknown CA, name mismatch, expired..."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    value = failure.value
    if isinstance(value, VerificationError):
        return f"certificate name mismatch: {value}"
    if isinstance(value, SSL.Error):
        code = verify_error
        if code == _EXPIRED:
            return "certificate expired"
        if code == _NOT_YET_VALID:
            return "certificate not yet valid"
        if code in _UNKNOWN_CA:
            return "certificate signed by an unknown authority"
        if code:
            return f"certificate verification failed (OpenSSL error {code})"
        reasons = [entry[2] for entry in value.args[0] if len(entry) > 2] if value.args else []
        detail = ", ".join(r for r in reasons if r) or str(value) or "handshake failure"
        return f"TLS handshake failed: {detail}"
    if isinstance(value, (error.ConnectionLost, error.ConnectionDone)):
        return "the remote closed the connection during the TLS handshake"
    return f"TLS handshake failed: {str(value).strip() or type(value).__name__}"


def tls_info(connection: Any) -> TlsInfo:
    """What the handshake of ``connection`` (an ``OpenSSL.SSL.Connection``) negotiated."""
    version = connection.get_protocol_version_name() or ""
    alpn = connection.get_alpn_proto_negotiated() or b""
    certificate = connection.get_peer_certificate(as_cryptography=True)
    subject = certificate.subject.rfc4514_string() if certificate is not None else ""
    return TlsInfo(True, version, alpn.decode("utf-8", "replace"), subject)
