"""The service fingerprint algorithm of protocol.md A.5; each service hashes its own signature."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def fingerprint(signature: Iterable[str]) -> str:
    """SHA-256 of the concatenated strings, each byte as unpadded lower-case hex."""
    digest = hashlib.sha256("".join(signature).encode("utf-8")).digest()
    return "".join(f"{byte:x}" for byte in digest)


def __getattr__(name: str) -> object:
    # The TcpSocketManager fingerprint moved to its service package.
    if name in ("TCPSOCKET_SIGNATURE", "TCPSOCKET_FINGERPRINT"):
        from tcpsocket.services.tcpsocket import fingerprint as service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
