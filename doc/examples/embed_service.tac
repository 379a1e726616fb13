"""Add tcpsocket as an ``IService`` to an application; run: ``twistd -ny embed_service.tac``."""

import os

from twisted.application.service import Application, MultiService

from tcpsocket import DestinationPolicy, ServerConfig, TcpSocketService, Token, TokenStore


def make_services(token: str, listen: list[str]) -> MultiService:
    """The application's services, tcpsocket among them."""
    services = MultiService()
    # ... the application's own services are added here ...
    # The app's sessions may reach mail servers, and the IMAP server on this machine.
    policy = DestinationPolicy(["allow localhost:143", "allow 127.0.0.1:*", "allow *:993,587"])
    config = ServerConfig(tokens=TokenStore([Token(token, identity="my-app")]), policy=policy)
    TcpSocketService(config, listen).setServiceParent(services)
    return services


application = Application("my-app")
make_services(
    os.environ.get("APP_TOKEN", "change-this-secret-token"),
    [os.environ.get("APP_LISTEN", "tcp:8081:interface=127.0.0.1")],
).setServiceParent(application)
