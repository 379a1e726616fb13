"""Mount tcpsocket in an existing ``twisted.web`` Site.

Your application keeps its own resources; tcpsocket adds ``/ws`` (the session
WebSocket) and ``/api/v1/`` (the JavaScript library).  Run it with::

    APP_TOKEN=change-this-secret-token python doc/examples/embed_site.py

then open http://127.0.0.1:8080/ and load the scripts from /api/v1/.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tcpsocket import (
    ApiV1Resource,
    DestinationPolicy,
    ServerConfig,
    SessionFactory,
    Token,
    TokenStore,
)


class Home(Resource):
    """The application's own page."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return b"<!doctype html><title>My app</title><h1>My app</h1>"


def build_app_site(token: str, reactor: Any = None) -> tuple[Site, SessionFactory]:
    """The application's Site, with tcpsocket mounted in it, and tcpsocket's sessions."""
    root = Resource()
    root.putChild(b"", Home())

    # This app's pages reach services on this machine (denied by default).
    policy = DestinationPolicy(["allow 127.0.0.1:*"])
    config = ServerConfig(tokens=TokenStore([Token(token, identity="my-app")]), policy=policy)
    sessions = SessionFactory(config, reactor)
    root.putChild(b"ws", sessions.websocket_resource())
    api = Resource()
    api.putChild(b"v1", ApiV1Resource())
    root.putChild(b"api", api)
    return Site(root), sessions


async def main(reactor: Any) -> None:
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import serverFromString

    site, sessions = build_app_site(os.environ["APP_TOKEN"], reactor)
    port = await serverFromString(reactor, "tcp:8080:interface=127.0.0.1").listen(site)
    sessions.listening_on(port.getHost())  # sessions may never open the app's own port
    await Deferred()  # run until interrupted


if __name__ == "__main__":
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    react(lambda reactor: ensureDeferred(main(reactor)))
