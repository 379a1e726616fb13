"""The SecureTcpSocketManager service: sockets with TLS from the start, or STARTTLS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred

from tcpsocket.bincode import Buffer
from tcpsocket.client.errors import TcpSocketError
from tcpsocket.client.manager import TcpSocketManager, _address
from tcpsocket.client.socket import TcpSocket, reply_value
from tcpsocket.services.securesocket.messages import (
    SECURE_FINGERPRINT,
    SERVICE_NAME,
    SocketInfo,
    TlsInfo,
    decode_socket_info,
    decode_upgrade_reply,
    encode_secure_open,
    encode_upgrade,
)
from tcpsocket.services.tcpsocket.messages import Method, Reply, decode_socket_reply

__all__ = ["SecureTcpSocket", "SecureTcpSocketManager", "SocketInfo", "TlsInfo"]


def _decode_secure_open(content: Buffer) -> SocketInfo:
    reply = decode_socket_reply(content)
    if reply.reply is Reply.OPEN_SUCCESS:
        return decode_socket_info(content)
    reply_value(Method.OPEN, content)  # raises the error with its reason
    raise AssertionError("unreachable")


def _decode_upgrade(content: Buffer) -> TlsInfo:
    answer = decode_upgrade_reply(content)
    if isinstance(answer, str):
        raise TcpSocketError(answer or "upgradeToSecure failed")
    return answer


class SecureTcpSocket(TcpSocket):
    """A :class:`TcpSocket` that knows its addresses and TLS, and can upgrade to TLS."""

    def __init__(
        self, manager: TcpSocketManager, object_id: int, host: str, port: int, info: SocketInfo
    ) -> None:
        super().__init__(manager, object_id, host, port)
        #: The addresses and, once secure, what TLS negotiated.
        self.info = info
        self.tls = info.tls

    def upgrade_to_secure(
        self, server_name: str = "", alpn: Sequence[str] = ()
    ) -> Deferred[TlsInfo]:
        """STARTTLS: what was sent before goes in the clear, what follows encrypted.

        Fires with what TLS negotiated; fails with :class:`TcpSocketError` and the reason
        (unknown authority, name mismatch, expired...), and the connection is then closed.
        """
        call = self._call(encode_upgrade(server_name, tuple(alpn)), _decode_upgrade)

        def secure(info: TlsInfo) -> TlsInfo:
            self.tls = info
            return info

        return call.addCallback(secure)


class SecureTcpSocketManager(TcpSocketManager):
    """One instance of SecureTcpSocketManager in a session; get it with :meth:`get`."""

    SERVICE_NAME = SERVICE_NAME
    FINGERPRINT = SECURE_FINGERPRINT

    def open(  # type: ignore[override]
        self,
        address: Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        use_secure_transport: bool = False,
        server_name: str = "",
        alpn: Sequence[str] = (),
        no_delay: bool = True,
        keep_alive: bool = False,
    ) -> Deferred[SecureTcpSocket]:
        """Connect, with TLS from the first byte if ``use_secure_transport``.

        ``server_name`` is the name TLS sends (SNI) and verifies (default: the host);
        ``alpn`` the protocols offered.  The daemon always verifies the certificate.
        """
        host, port = _address(address, host, port)
        content = encode_secure_open(
            host,
            port,
            use_secure_transport=use_secure_transport,
            server_name=server_name,
            alpn=tuple(alpn),
            no_delay=no_delay,
            keep_alive=keep_alive,
        )
        opened: Deferred[SecureTcpSocket] = self._open(host, port, content, _decode_secure_open)
        return opened

    def _make_socket(self, object_id: int, host: str, port: int, answer: Any) -> TcpSocket:
        return SecureTcpSocket(self, object_id, host, port, answer)
