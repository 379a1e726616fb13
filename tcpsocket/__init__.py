"""tcpsocket: raw TCP client sockets for web and Python apps, over a session WebSocket."""

from __future__ import annotations

__version__ = "0.1.0"
