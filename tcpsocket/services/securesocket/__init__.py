"""SecureTcpSocketManager: TCP client sockets with TLS and STARTTLS (doc/protocol.md E)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from zope.interface import implementer

from tcpsocket.services import IServiceFactory
from tcpsocket.services.securesocket.messages import (
    PERMISSION,
    SECURE_FINGERPRINT,
    SECURE_SIGNATURE,
    SERVICE_NAME,
)

if TYPE_CHECKING:
    from tcpsocket.services.securesocket.service import SecureSocketService

__all__ = [
    "SECURE_FINGERPRINT",
    "SECURE_SIGNATURE",
    "SECURE_TCP_SOCKET_MANAGER",
    "SecureTcpSocketManager",
]


@implementer(IServiceFactory)
class SecureTcpSocketManager:
    """Makes a :class:`~tcpsocket.services.securesocket.service.SecureSocketService` per
    GetService (imported when first needed: clients import this package's messages)."""

    name = SERVICE_NAME
    fingerprint = SECURE_FINGERPRINT
    permission = PERMISSION

    def create(self, session: Any, service_id: int) -> SecureSocketService:
        from tcpsocket.services.securesocket.service import SecureSocketService

        return SecureSocketService(session, service_id)

    def reject(
        self,
        session: Any,
        service_id: int,
        object_id: int,
        request_id: int,
        content: memoryview,
        reason: str,
    ) -> None:
        from tcpsocket.services.securesocket.service import reject

        reject(session, service_id, object_id, request_id, content, reason)


SECURE_TCP_SOCKET_MANAGER: Final = SecureTcpSocketManager()
