"""Which ``Host`` names and web ``Origin``\\ s the daemon answers.

``Host`` (against DNS rebinding): localhost, 127.0.0.1 and [::1], the address
the connection arrived on, and ``ServerConfig.server_names``.  ``Origin``
(against cross-site WebSocket hijacking): the daemon's own pages (an origin
whose host is the request's ``Host``, with the connection's scheme),
``ServerConfig.allowed_origins``, and the origins tokens are pinned to.  A
client that sends no ``Origin`` is not a web page (browsers always send one
on a WebSocket upgrade) and is let through to the token check.
"""

from __future__ import annotations

from tcpsocket.config import ServerConfig

__all__ = ["LOCAL_NAMES", "host_allowed", "host_name", "origin_allowed"]

#: Names every daemon answers to.
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """The name in a ``Host`` header: no port, no brackets, lower case, no final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        name = header[1:].partition("]")[0]
    elif header.count(":") == 1:
        name = header.partition(":")[0]
    else:
        name = header
    return name.rstrip(".")


def host_allowed(config: ServerConfig, header: str | None, local_address: str | None) -> bool:
    """Whether a request with ``Host: header`` that arrived on ``local_address`` is served."""
    if "*" in config.server_names:
        return True
    if header is None:
        return False
    name = host_name(header)
    if name in LOCAL_NAMES or name in config.server_names:
        return True
    if local_address is None:
        return False
    local = local_address.lower().partition("%")[0]
    return name == local


def _own_origin(host: str | None, secure: bool) -> str | None:
    """The origin of the daemon's own pages, given the request's ``Host`` header."""
    if not host:
        return None
    return ("https://" if secure else "http://") + host.strip().lower()


def origin_allowed(config: ServerConfig, origin: str, host: str | None, secure: bool) -> bool:
    """Whether ``origin`` passes the daemon-wide rule (tokens may pin origins of their own)."""
    origin = origin.lower().rstrip("/")
    return (
        "*" in config.allowed_origins
        or origin in config.allowed_origins
        or origin == _own_origin(host, secure)
    )
