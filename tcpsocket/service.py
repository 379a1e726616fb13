"""Moved to :mod:`tcpsocket.services.tcpsocket.service`; kept for the names it had."""

from tcpsocket.services.tcpsocket.service import (
    SessionLink,
    TcpSocketManagerService,
    check_address,
)

__all__ = ["SessionLink", "TcpSocketManagerService", "check_address"]
