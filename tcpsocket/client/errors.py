"""Exceptions of the Python client; each carries the daemon's reason."""

from __future__ import annotations

__all__ = [
    "GetServiceError",
    "PermissionDenied",
    "ProtocolError",
    "SessionClosed",
    "SessionRefused",
    "TcpSocketClientError",
    "TcpSocketError",
]


class TcpSocketClientError(Exception):
    """Base of every error raised by :mod:`tcpsocket.client`."""


class SessionRefused(TcpSocketClientError):
    """The daemon refused the session token (``SessionAck 00``)."""

    def __init__(self, reason: str = "token refused") -> None:
        super().__init__(reason)
        self.reason = reason


class SessionClosed(TcpSocketClientError):
    """The session ended: calls pending then, and calls made after, fail with this.

    ``lost`` is False when the application closed the session itself and True
    when it ended otherwise (the daemon closed it, the connection dropped).
    ``code`` is the WebSocket close code, when there is one.
    """

    def __init__(self, reason: str, code: int | None = None, lost: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.lost = lost


class GetServiceError(TcpSocketClientError):
    """GetService failed.

    ``kind`` is ``"UnknownService"``, ``"FingerprintMismatch"``,
    ``"MissingPermission"`` or ``"InternalError"`` (then ``detail`` says why).
    """

    def __init__(self, kind: str, detail: str | None = None) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


class PermissionDenied(TcpSocketClientError):
    """The daemon answered a request with a PermissionError message."""

    def __init__(self, permission: str, message: str) -> None:
        super().__init__(f"{permission}: {message}" if message else permission)
        self.permission = permission
        self.message = message


class TcpSocketError(TcpSocketClientError):
    """A TcpSocketManager call failed; ``reason`` is the daemon's reason (C.1)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(TcpSocketClientError):
    """The daemon's answer could not be decoded."""
