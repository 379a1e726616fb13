"""The TcpSocketManager fingerprint (protocol.md A.5)."""

from __future__ import annotations

from typing import Final

from tcpsocket.fingerprint import fingerprint

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


TCPSOCKET_FINGERPRINT: Final = fingerprint(TCPSOCKET_SIGNATURE)
