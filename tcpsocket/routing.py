"""The transport-free part of a session: the core service and routing to services.

A :class:`ServiceRouter` answers the core service (protocol.md A.4) from the
:class:`~tcpsocket.services.ServiceRegistry` of the configuration, makes one
service instance per successful GetService, and hands every other request to
the instance its service id names.  It knows no service by name, and nothing
of WebSockets: :class:`tcpsocket.session.SessionProtocol` feeds it decoded
messages and writes what it answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tcpsocket.bincode import Buffer, DecodeError
from tcpsocket.messages import (
    CORE_SERVICE,
    BaseMessage,
    Core,
    CoreRequest,
    GetService,
    GetServiceResult,
    HasService,
    Kind,
    decode_core_request,
    encode_core_bool_response,
    encode_get_service_response,
)

__all__ = ["ServiceRouter"]


class ServiceRouter:
    """The services of one session, and the core service that manages them."""

    def __init__(self, session: Any) -> None:
        #: The :class:`tcpsocket.services.tcpsocket.service.SessionLink` the services talk to.
        self.session = session
        #: Live service instances by id.
        self.services: dict[int, Any] = {}
        self._next_service_id = 1
        self.permissions: frozenset[str] = frozenset()

    def dispatch(self, message: BaseMessage) -> None:
        """Route one decoded message of an authenticated session."""
        if message.kind is not Kind.REQUEST:
            raise DecodeError(f"clients send requests only, not {message.kind.name.lower()}")
        assert message.request is not None
        self.request(message.service, message.object, message.request, message.content)

    def request(self, service_id: int, object_id: int, request_id: int, content: Buffer) -> None:
        """Route one request of an authenticated session (its BaseMessage's fields)."""
        service = self.services.get(service_id)
        if service is not None:
            service.handle(object_id, request_id, memoryview(content))
            return
        session = self.session
        if service_id == CORE_SERVICE:
            answer, then = self._core(decode_core_request(content))
            session.send_response(CORE_SERVICE, object_id, request_id, answer)
            if then is not None:
                then()
            return
        session.config.services.reject(
            session,
            service_id,
            object_id,
            request_id,
            memoryview(content),
            f"unknown service {service_id}",
        )

    def stop(self, by: str) -> None:
        """The session ended: stop every service."""
        services, self.services = self.services, {}
        for service in services.values():
            service.stop(by=by)

    def detach(self) -> None:
        """The session is gone: let go of it (no cycle keeps it until the garbage collector)."""
        self.session = None

    def _core(self, request: CoreRequest) -> tuple[bytes, Callable[[], None] | None]:
        """The response to a core request, and what to do once it is sent."""
        if isinstance(request, GetService):
            return self._get_service(request), None
        if isinstance(request, HasService):
            known = request.name in self.session.config.services
            return encode_core_bool_response(Core.HAS_SERVICE, known), None
        service = self.services.get(request.service)
        then: Callable[[], None] | None = None
        if service is None:
            found = False
        elif request.op is Core.RELEASE_OBJECT:
            # Object 0 is the service itself: api-daemon's runtime releases it when the
            # page's service object is garbage collected, while its sockets stay in use.
            # Like api-daemon, answer false and keep the service and its sockets
            # (see ISessionService.reclaimable).
            if request.object == 0:
                service.released = True
                found = False
            else:
                found = service.release(request.object)
        else:
            assert request.event is not None
            # Events that were held wait until the client has the response.
            then = service.event_switch(
                request.object, request.event, request.op is Core.ENABLE_EVENT
            )
            found = then is not None
        return encode_core_bool_response(request.op, found), then

    def _reclaim_a_service(self) -> None:
        """Make room by forgetting the oldest released service that has nothing left."""
        for service_id, service in self.services.items():
            if service.reclaimable:
                del self.services[service_id]
                service.stop()
                return

    def _get_service(self, request: GetService) -> bytes:
        config = self.session.config
        factory = config.services.get(request.name)
        if factory is None:
            return encode_get_service_response(GetServiceResult.UNKNOWN_SERVICE)
        if request.fingerprint != factory.fingerprint:
            return encode_get_service_response(GetServiceResult.FINGERPRINT_MISMATCH)
        if factory.permission not in self.permissions:
            return encode_get_service_response(GetServiceResult.MISSING_PERMISSION)
        limit = config.max_services_per_session
        if len(self.services) >= limit:
            self._reclaim_a_service()
        if len(self.services) >= limit:
            return encode_get_service_response(
                GetServiceResult.INTERNAL_ERROR,
                f"too many services in this session (limit {limit})",
            )
        service_id = self._next_service_id
        self._next_service_id += 1
        self.services[service_id] = factory.create(self.session, service_id)
        return encode_get_service_response(GetServiceResult.SUCCESS, service_id)
