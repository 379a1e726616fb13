"""The service fingerprint of protocol.md A.5, derived from the interface."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

#: What the api-daemon code generator hashes for ``tcpsocket.sidl``, in order.
TCPSOCKET_SIGNATURE: Final = (
    "TcpSocketClose",
    "TcpSocketResume",
    "TcpSocketSend(Vec<u8>,)",
    "TcpSocketSuspend",
    "TcpSocketFactoryOpen(SocketAddress,)",
    "TcpSocketCloseSuccess",
    "TcpSocketCloseError",
    "TcpSocketResumeSuccess",
    "TcpSocketResumeError",
    "TcpSocketSendSuccess(bool)",
    "TcpSocketSendError",
    "TcpSocketSuspendSuccess",
    "TcpSocketSuspendError",
    "TcpSocketCloseEvent",
    "TcpSocketDataEvent(Vec<u8>)",
    "TcpSocketDrainEvent(bool)",
    "TcpSocketErrorEvent(String)",
    "TcpSocketFactoryOpenSuccess(u32)",
    "TcpSocketFactoryOpenError",
    "host",
    "String",
    "port",
    "i64",
    "close",
    "()",
    "data",
    "Vec<u8>",
    "drain",
    "bool",
    "error",
    "String",
)


def fingerprint(signature: Iterable[str]) -> str:
    """SHA-256 of the concatenated strings, each byte as unpadded lower-case hex."""
    digest = hashlib.sha256("".join(signature).encode("utf-8")).digest()
    return "".join(f"{byte:x}" for byte in digest)


TCPSOCKET_FINGERPRINT: Final = fingerprint(TCPSOCKET_SIGNATURE)
