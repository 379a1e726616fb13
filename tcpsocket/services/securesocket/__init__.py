"""SecureTcpSocketManager: TCP client sockets with TLS and STARTTLS (doc/protocol.md E)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from tcpsocket.services import ServiceFactory
from tcpsocket.services.securesocket.messages import (
    PERMISSION,
    SECURE_FINGERPRINT,
    SECURE_SIGNATURE,
    SERVICE_NAME,
    UpgradeRequest,
    decode_secure_request,
    encode_upgrade_error,
)
from tcpsocket.services.tcpsocket.messages import REPLIES, encode_reply

if TYPE_CHECKING:
    from tcpsocket.services.securesocket.service import SecureSocketService

__all__ = [
    "SECURE_FINGERPRINT",
    "SECURE_SIGNATURE",
    "SECURE_TCP_SOCKET_MANAGER",
    "SecureTcpSocketManager",
]


class SecureTcpSocketManager(ServiceFactory):
    """Makes a :class:`~tcpsocket.services.securesocket.service.SecureSocketService` per
    GetService (imported when first needed: clients import this package's messages)."""

    name = SERVICE_NAME
    fingerprint = SECURE_FINGERPRINT
    permission = PERMISSION

    def create(self, session: Any, service_id: int) -> SecureSocketService:
        from tcpsocket.services.securesocket.service import SecureSocketService

        return SecureSocketService(session, service_id)

    def error_response(self, content: memoryview, reason: str) -> bytes:
        request = decode_secure_request(content)
        if isinstance(request, UpgradeRequest):
            return encode_upgrade_error(reason)
        return encode_reply(REPLIES[request.method][1], reason)


SECURE_TCP_SOCKET_MANAGER: Final = SecureTcpSocketManager()
