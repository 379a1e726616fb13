"""A third-party service: ``ExampleEcho`` answers every request with its own content."""

from zope.interface import implementer

from tcpsocket import ServerConfig, Token, TokenStore
from tcpsocket.fingerprint import fingerprint
from tcpsocket.services import IServiceFactory, ISessionService, default_services


@implementer(ISessionService)
class EchoService:
    released = False
    reclaimable = True  # it holds nothing

    def __init__(self, session, service_id):
        self.session = session
        self.service_id = service_id

    def handle(self, object_id, request_id, content):
        self.session.send_response(self.service_id, object_id, request_id, bytes(content))

    def release(self, object_id):
        return False  # it has no objects

    def event_switch(self, object_id, event, enabled):
        return None  # and no events

    def stop(self, by="the client"):
        pass


@implementer(IServiceFactory)
class Echo:
    name = "ExampleEcho"
    fingerprint = fingerprint(["ExampleEchoEcho(Vec<u8>,)", "ExampleEchoEchoSuccess(Vec<u8>)"])
    permission = "tcp-socket"

    def create(self, session, service_id):
        return EchoService(session, service_id)

    def reject(self, session, service_id, object_id, request_id, content, reason):
        session.send_response(service_id, object_id, request_id, b"")


config = ServerConfig(
    tokens=TokenStore([Token("change-this-secret-token")]),
    services=default_services().with_service(Echo()),
)
