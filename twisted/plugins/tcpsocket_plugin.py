"""Registers ``twistd tcpsocket``."""

from twisted.application.service import ServiceMaker

tcpsocket = ServiceMaker(
    "tcpsocket",
    "tcpsocket.tap",
    "Raw TCP client sockets for web and Python apps over a session WebSocket.",
    "tcpsocket",
)
