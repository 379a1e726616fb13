"""Attack tools for the security tests: raw TCP clients, hand-made frames, log capture."""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from tests.support import wait_until


class RawTCP(Protocol):
    """A plain TCP client: records what it gets and when the connection ends."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    @property
    def closed(self) -> bool:
        return self.lost.called

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


async def raw_tcp(test: Any, port: int, bind: str | None = None) -> RawTCP:
    """A TCP connection to the daemon on 127.0.0.1 (from ``bind``), aborted at cleanup."""
    endpoint = TCP4ClientEndpoint(
        reactor, "127.0.0.1", port, bindAddress=None if bind is None else (bind, 0)
    )
    client = await connectProtocol(endpoint, RawTCP())

    async def drop() -> None:
        if not client.closed:
            client.transport.abortConnection()  # type: ignore[union-attr]
            await client.lost

    test.addCleanup(lambda: defer.ensureDeferred(drop()))
    return client


async def http_exchange(test: Any, port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the bytes received until the daemon closes it
    or a complete response head has come and nothing more arrives for a moment."""
    client = await raw_tcp(test, port)
    client.write(request)
    await wait_until(lambda: client.closed or b"\r\n\r\n" in client.received)
    return bytes(client.received)


def status(response: bytes) -> int:
    """The status code of an HTTP response head."""
    return int(response.split(b" ", 2)[1])


def upgrade_request(path: bytes = b"/ws", host: bytes = b"127.0.0.1", extra: bytes = b"") -> bytes:
    """A WebSocket upgrade request, as a browser would send it."""
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + extra
        + b"\r\n"
    )


def client_frame(
    opcode: int, payload: bytes = b"", length: int | None = None, fin: bool = True
) -> bytes:
    """A masked client frame (mask key 0, so the payload goes as is); ``length`` may lie."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", size)
    return head + b"\0\0\0\0" + payload


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class LogCapture:
    """The formatted log lines emitted while it is installed (until test cleanup)."""

    def __init__(self, test: Any) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        test.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: LogEvent) -> None:
        self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]
