"""The SecureTcpSocketManager messages (doc/protocol.md, section E).

Requests 0 to 3 and the replies 0 to 11 and 13 are TcpSocketManager's,
byte for byte; ``open`` carries options and answers with a
:class:`SocketInfo`; ``upgradeToSecure`` (5) is new, answered by 14 or 15.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from tcpsocket.bincode import (
    Buffer,
    DecodeError,
    Reader,
    encode_bool,
    encode_i64,
    encode_string,
    encode_varint,
)
from tcpsocket.fingerprint import fingerprint
from tcpsocket.services.tcpsocket.messages import Method, SocketRequest, decode_socket_request

SERVICE_NAME: Final = "SecureTcpSocketManager"
PERMISSION: Final = "tcp-socket"

#: What the fingerprint hashes, in order, as protocol.md A.5 does for TcpSocketManager.
SECURE_SIGNATURE: Final = (
    "SecureTcpSocketClose",
    "SecureTcpSocketResume",
    "SecureTcpSocketSend(Vec<u8>,)",
    "SecureTcpSocketSuspend",
    "SecureTcpSocketUpgradeToSecure(UpgradeOptions,)",
    "SecureTcpSocketFactoryOpen(SecureSocketOptions,)",
    "SecureTcpSocketCloseSuccess",
    "SecureTcpSocketCloseError",
    "SecureTcpSocketResumeSuccess",
    "SecureTcpSocketResumeError",
    "SecureTcpSocketSendSuccess(bool)",
    "SecureTcpSocketSendError",
    "SecureTcpSocketSuspendSuccess",
    "SecureTcpSocketSuspendError",
    "SecureTcpSocketCloseEvent",
    "SecureTcpSocketDataEvent(Vec<u8>)",
    "SecureTcpSocketDrainEvent(bool)",
    "SecureTcpSocketErrorEvent(String)",
    "SecureTcpSocketFactoryOpenSuccess(SocketInfo)",
    "SecureTcpSocketFactoryOpenError",
    "SecureTcpSocketUpgradeToSecureSuccess(TlsInfo)",
    "SecureTcpSocketUpgradeToSecureError",
    "SecureSocketOptions",
    "host",
    "String",
    "port",
    "i64",
    "useSecureTransport",
    "bool",
    "serverName",
    "String",
    "alpnProtocols",
    "Vec<String>",
    "noDelay",
    "bool",
    "keepAlive",
    "bool",
    "UpgradeOptions",
    "serverName",
    "String",
    "alpnProtocols",
    "Vec<String>",
    "SocketInfo",
    "id",
    "u32",
    "remoteAddress",
    "String",
    "remotePort",
    "i64",
    "localAddress",
    "String",
    "localPort",
    "i64",
    "tls",
    "TlsInfo",
    "TlsInfo",
    "secure",
    "bool",
    "version",
    "String",
    "alpn",
    "String",
    "peerSubject",
    "String",
    "close",
    "()",
    "data",
    "Vec<u8>",
    "drain",
    "bool",
    "error",
    "String",
)

SECURE_FINGERPRINT: Final = fingerprint(SECURE_SIGNATURE)

#: ``upgradeToSecure``, the request TcpSocketManager does not have.
UPGRADE_TO_SECURE: Final = 5


class SecureReply(enum.IntEnum):
    """The replies of this service that TcpSocketManager does not have."""

    UPGRADE_SUCCESS = 14
    UPGRADE_ERROR = 15


#: Most ALPN protocol names in one request, and the longest name (RFC 7301: 255 bytes).
MAX_ALPN_PROTOCOLS: Final = 16
MAX_ALPN_LENGTH: Final = 255


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """What ``open`` and ``upgradeToSecure`` ask of TLS; ``server_name`` "" is the host."""

    server_name: str = ""
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SecureOpen(SocketRequest):
    """``open`` with its options."""

    use_secure_transport: bool = False
    tls: TlsOptions = field(default_factory=TlsOptions)
    no_delay: bool = True
    keep_alive: bool = False

    @property
    def options(self) -> SecureOpen:
        return self


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """``upgradeToSecure`` of a socket."""

    tls: TlsOptions


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What TLS negotiated: empty strings on a plain socket."""

    secure: bool = False
    version: str = ""
    alpn: str = ""
    peer_subject: str = ""

    def encode(self) -> bytes:
        return (
            encode_bool(self.secure)
            + encode_string(self.version)
            + encode_string(self.alpn)
            + encode_string(self.peer_subject)
        )

    @classmethod
    def decode(cls, reader: Reader) -> TlsInfo:
        return cls(reader.boolean(), reader.string(), reader.string(), reader.string())


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """The answer of a successful ``open``."""

    socket_id: int
    remote_address: str
    remote_port: int
    local_address: str
    local_port: int
    tls: TlsInfo

    def encode(self) -> bytes:
        return (
            encode_varint(12)
            + encode_varint(self.socket_id)
            + encode_string(self.remote_address)
            + encode_i64(self.remote_port)
            + encode_string(self.local_address)
            + encode_i64(self.local_port)
            + self.tls.encode()
        )


def _alpn(reader: Reader) -> tuple[str, ...]:
    count = reader.u32()
    if count > MAX_ALPN_PROTOCOLS:
        raise DecodeError(f"{count} ALPN protocols, at most {MAX_ALPN_PROTOCOLS}")
    names = tuple(reader.string() for _ in range(count))
    for name in names:
        if not 0 < len(name.encode("utf-8")) <= MAX_ALPN_LENGTH:
            raise DecodeError(f"an ALPN protocol name is 1 to {MAX_ALPN_LENGTH} bytes")
    return names


def decode_secure_request(content: Buffer) -> SocketRequest | UpgradeRequest:
    """Decode the content of a Request to a SecureTcpSocketManager, exactly."""
    reader = Reader(content)
    tag = reader.u32()
    if tag == UPGRADE_TO_SECURE:
        upgrade = UpgradeRequest(TlsOptions(reader.string(), _alpn(reader)))
        reader.finish()
        return upgrade
    if tag != Method.OPEN:
        # close, resume, send and suspend are TcpSocketManager's.
        return decode_socket_request(content)
    host = reader.string()
    port = reader.i64()
    secure = reader.boolean()
    tls = TlsOptions(reader.string(), _alpn(reader))
    request = SecureOpen(
        Method.OPEN,
        host=host,
        port=port,
        use_secure_transport=secure,
        tls=tls,
        no_delay=reader.boolean(),
        keep_alive=reader.boolean(),
    )
    reader.finish()
    return request


def _encode_alpn(alpn: tuple[str, ...]) -> bytes:
    return encode_varint(len(alpn)) + b"".join(encode_string(name) for name in alpn)


def encode_secure_open(
    host: str,
    port: int,
    *,
    use_secure_transport: bool = False,
    server_name: str = "",
    alpn: tuple[str, ...] = (),
    no_delay: bool = True,
    keep_alive: bool = False,
) -> bytes:
    """SecureTcpSocketFactory.open(SecureSocketOptions)."""
    return (
        encode_varint(Method.OPEN)
        + encode_string(host)
        + encode_i64(port)
        + encode_bool(use_secure_transport)
        + encode_string(server_name)
        + _encode_alpn(alpn)
        + encode_bool(no_delay)
        + encode_bool(keep_alive)
    )


def encode_upgrade(server_name: str = "", alpn: tuple[str, ...] = ()) -> bytes:
    """SecureTcpSocket.upgradeToSecure(UpgradeOptions)."""
    return encode_varint(UPGRADE_TO_SECURE) + encode_string(server_name) + _encode_alpn(alpn)


def encode_upgrade_success(info: TlsInfo) -> bytes:
    """upgradeToSecure succeeded, with what TLS negotiated."""
    return encode_varint(SecureReply.UPGRADE_SUCCESS) + info.encode()


def encode_upgrade_error(reason: str) -> bytes:
    """upgradeToSecure failed, and why."""
    return encode_varint(SecureReply.UPGRADE_ERROR) + encode_string(reason)


def decode_socket_info(content: Buffer) -> SocketInfo:
    """Decode an open success (tag 12) of this service."""
    reader = Reader(content)
    if reader.u32() != 12:
        raise DecodeError("not an open success")
    return SocketInfo(
        reader.u32(),
        reader.string(),
        reader.i64(),
        reader.string(),
        reader.i64(),
        TlsInfo.decode(reader),
    )


def decode_upgrade_reply(content: Buffer) -> TlsInfo | str:
    """Decode an upgradeToSecure answer: the TLS info, or the error's reason."""
    reader = Reader(content)
    tag = reader.u32()
    if tag == SecureReply.UPGRADE_SUCCESS:
        return TlsInfo.decode(reader)
    if tag == SecureReply.UPGRADE_ERROR:
        return reader.optional_string() or ""
    raise DecodeError(f"not an upgradeToSecure answer: {tag}")
