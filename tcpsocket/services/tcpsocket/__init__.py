"""TcpSocketManager, the first service plug-in: raw TCP client sockets (protocol.md A.5).

Its messages are :mod:`tcpsocket.services.tcpsocket.messages`, its
fingerprint :data:`tcpsocket.services.tcpsocket.fingerprint.TCPSOCKET_FINGERPRINT`
(computed from its own signature list), its per-session object
:class:`tcpsocket.services.tcpsocket.service.TcpSocketManagerService`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from tcpsocket.services import ServiceFactory
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import (
    PERMISSION,
    REPLIES,
    SERVICE_NAME,
    decode_socket_request,
    encode_reply,
)

if TYPE_CHECKING:
    from tcpsocket.services.tcpsocket.service import TcpSocketManagerService

__all__ = ["TCP_SOCKET_MANAGER", "TcpSocketManager"]


class TcpSocketManager(ServiceFactory):
    """Makes a :class:`TcpSocketManagerService` per GetService."""

    name = SERVICE_NAME
    fingerprint = TCPSOCKET_FINGERPRINT
    permission = PERMISSION

    def create(self, session: Any, service_id: int) -> TcpSocketManagerService:
        # Imported here: the service needs tcpsocket.remote, which needs these
        # messages, so loading it with the package would make an import cycle.
        from tcpsocket.services.tcpsocket.service import TcpSocketManagerService

        return TcpSocketManagerService(session, service_id)

    def error_response(self, content: memoryview, reason: str) -> bytes:
        request = decode_socket_request(content)
        return encode_reply(REPLIES[request.method][1], reason)


TCP_SOCKET_MANAGER: Final = TcpSocketManager()
