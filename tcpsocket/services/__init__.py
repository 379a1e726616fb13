"""Session services as plug-ins (doc/extending.md).

A session knows no service by name: the :class:`ServiceRegistry` in
:attr:`tcpsocket.config.ServerConfig.services` maps each name a client may
ask for with GetService (protocol.md A.4) to an :class:`IServiceFactory`,
which makes one :class:`ISessionService` per successful GetService.  The
session routes every request whose service id is not 0 to that instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from zope.interface import Attribute, Interface, implementer, verify

from tcpsocket.bincode import DecodeError

__all__ = [
    "IServiceFactory",
    "ISessionService",
    "ServiceFactory",
    "ServiceRegistry",
    "default_services",
]


class IServiceFactory(Interface):
    """A service that sessions offer: what GetService checks, and how an instance is made."""

    name = Attribute("str: the service name GetService and HasService ask for")
    fingerprint = Attribute("str: its interface fingerprint (protocol.md A.5)")
    permission = Attribute("str: the token permission a session needs to get it")

    def create(session: Any, service_id: int) -> ISessionService:
        """
        A new instance for ``session`` (a
        :class:`tcpsocket.services.tcpsocket.service.SessionLink`), answering as service
        ``service_id``.
        """

    def reject(
        session: Any,
        service_id: int,
        object_id: int,
        request_id: int,
        content: memoryview,
        reason: str,
    ) -> None:
        """
        Answer a request to ``service_id``, which has no instance (never given, or
        reclaimed), with the request's error variant and ``reason``.  Raise
        :class:`tcpsocket.bincode.DecodeError` if ``content`` is no request of this service.
        """


class ISessionService(Interface):
    """One instance of a service in one session."""

    released = Attribute(
        "bool, writable: the client released object 0 (the service itself); the session"
        " keeps the instance until it is reclaimable and its place is needed"
    )
    reclaimable = Attribute("bool: released, and nothing of it is left in use")

    def handle(object_id: int, request_id: int, content: memoryview) -> None:
        """
        Decode and answer one request (now or later, through
        ``session.send_response``).  Raise :class:`tcpsocket.bincode.DecodeError`
        for content that is not a request of this service: the session then
        closes with a protocol error.
        """

    def release(object_id: int) -> bool:
        """ReleaseObject of an object other than 0: False if there is no such object."""

    def event_switch(object_id: int, event: int, enabled: bool) -> Callable[[], None] | None:
        """EnableEvent/DisableEvent: what switches it once the response is sent,
        or None if there is no such object or event."""

    def stop(by: str = "the client") -> None:
        """The session (or the service) is gone: release everything; ``by`` says who ended it."""


@implementer(IServiceFactory)
class ServiceFactory:
    """A base for service factories: :meth:`reject` sends what :meth:`error_response` says.

    A subclass gives ``name``, ``fingerprint``, ``permission``, :meth:`create` and
    :meth:`error_response`.
    """

    name: str
    fingerprint: str
    permission: str

    def create(self, session: Any, service_id: int) -> Any:
        raise NotImplementedError

    def error_response(self, content: memoryview, reason: str) -> bytes:
        """The error variant of the request ``content``, with ``reason``.

        Raise :class:`tcpsocket.bincode.DecodeError` if ``content`` is no request of this service.
        """
        raise NotImplementedError

    def reject(
        self,
        session: Any,
        service_id: int,
        object_id: int,
        request_id: int,
        content: memoryview,
        reason: str,
    ) -> None:
        answer = self.error_response(content, reason)
        session.send_response(service_id, object_id, request_id, answer)


class ServiceRegistry(Mapping[str, Any]):
    """The services a daemon offers, by name (immutable; build a new one to change it).

    A request to a service id without an instance is answered by the first service
    that can decode it, in registration order (api-daemon answers them as
    TcpSocketManager requests).
    """

    def __init__(self, factories: Iterable[Any] = ()) -> None:
        self._factories: dict[str, Any] = {}
        for factory in factories:
            verify.verifyObject(IServiceFactory, factory)
            if factory.name in self._factories:
                raise ValueError(f"two services named {factory.name!r}")
            self._factories[factory.name] = factory
        if not self._factories:
            raise ValueError("a daemon offers at least one service")

    def __getitem__(self, name: str) -> Any:
        return self._factories[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"ServiceRegistry({sorted(self._factories)!r})"

    def reject(
        self,
        session: Any,
        service_id: int,
        object_id: int,
        request_id: int,
        content: memoryview,
        reason: str,
    ) -> None:
        """Answer a request to a service id without an instance: the first service
        that can decode it answers with its error variant; none: DecodeError."""
        problem: DecodeError | None = None
        for factory in self._factories.values():
            try:
                factory.reject(session, service_id, object_id, request_id, content, reason)
            except DecodeError as e:
                problem = problem or e
            else:
                return
        assert problem is not None
        raise problem

    def with_service(self, factory: Any) -> ServiceRegistry:
        """This registry plus ``factory`` (an :class:`IServiceFactory`)."""
        return ServiceRegistry([*self._factories.values(), factory])


def default_services() -> ServiceRegistry:
    """The services ``twistd tcpsocket`` offers: TcpSocketManager, SecureTcpSocketManager."""
    from tcpsocket.services.securesocket import SECURE_TCP_SOCKET_MANAGER
    from tcpsocket.services.tcpsocket import TCP_SOCKET_MANAGER

    return ServiceRegistry([TCP_SOCKET_MANAGER, SECURE_TCP_SOCKET_MANAGER])
