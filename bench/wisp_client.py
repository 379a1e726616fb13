"""A Wisp v1 client for the benchmark, written from the Wisp protocol specification.

Wisp multiplexes TCP streams over one WebSocket, like a tcpsocket session. Every Wisp
packet is one binary WebSocket message::

    packet type (u8) | stream id (u32) | payload          all integers little-endian

* ``CONNECT`` (0x01), client to server: stream type (u8, 0x01 = TCP), destination port
  (u16), destination hostname (UTF-8, the rest of the packet). The client picks the
  stream id; it may send DATA at once, before any CONTINUE.
* ``DATA`` (0x02), both ways: the payload is the stream's bytes.
* ``CONTINUE`` (0x03), server to client: buffer remaining (u32), the number of DATA
  packets the server can still take for the stream. Right after the WebSocket opens the
  server sends one on stream 0 (0 also means "Wisp v1"): the initial buffer of every new
  stream. The client counts one per DATA packet it sends and stops at zero until the
  next CONTINUE for that stream resets the count.
* ``CLOSE`` (0x04), both ways: close reason (u8); the stream is gone at once.

The WebSocket URL ends with ``/``. The transport is :class:`bench.client.WSConnection`,
the same hand-written WebSocket client the other targets use, so every target pays the
same client cost. Packets of other types (Wisp v2's INFO, for one) are ignored, which is
how a v1 peer behaves.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from enum import IntEnum

from bench.client import Stream, StreamClosed, WSConnection, open_ws


class PacketType(IntEnum):
    CONNECT = 0x01
    DATA = 0x02
    CONTINUE = 0x03
    CLOSE = 0x04


class StreamType(IntEnum):
    TCP = 0x01
    UDP = 0x02


#: Close reasons of the specification.
CLOSE_REASONS = {
    0x01: "unknown",
    0x02: "voluntary",
    0x03: "network error",
    0x41: "invalid information",
    0x42: "unreachable host",
    0x43: "connection timed out",
    0x44: "connection refused",
    0x47: "TCP data transfer timed out",
    0x48: "destination blocked",
    0x49: "throttled",
    0x81: "client error",
}
VOLUNTARY = 0x02

_HEAD = struct.Struct("<BI")
_CONNECT = struct.Struct("<BIBH")
_CONTINUE = struct.Struct("<BII")
_CLOSE = struct.Struct("<BIB")
_U32 = struct.Struct("<I")


class WispError(Exception):
    pass


@dataclass(frozen=True)
class Packet:
    kind: int
    stream_id: int
    payload: bytes | memoryview


def encode_packet(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(kind, stream_id) + payload


def decode_packet(data: bytes | memoryview) -> Packet:
    """Split a packet into type, stream id and payload (a view of ``data`` if it is one)."""
    if len(data) < _HEAD.size:
        raise WispError(f"a Wisp packet has at least 5 bytes, not {len(data)}")
    kind, stream_id = _HEAD.unpack_from(data)
    return Packet(kind, stream_id, data[_HEAD.size :])


def encode_connect(
    stream_id: int, host: str, port: int, stream_type: StreamType = StreamType.TCP
) -> bytes:
    return _CONNECT.pack(PacketType.CONNECT, stream_id, stream_type, port) + host.encode("utf-8")


def encode_continue(stream_id: int, buffer_remaining: int) -> bytes:
    return _CONTINUE.pack(PacketType.CONTINUE, stream_id, buffer_remaining)


def decode_continue(payload: bytes | memoryview) -> int:
    if len(payload) < 4:
        raise WispError(f"CONTINUE payload of {len(payload)} bytes, wanted 4")
    return int(_U32.unpack_from(payload)[0])


def encode_close(stream_id: int, reason: int = VOLUNTARY) -> bytes:
    return _CLOSE.pack(PacketType.CLOSE, stream_id, reason)


def decode_close(payload: bytes | memoryview) -> int:
    if len(payload) < 1:
        raise WispError("CLOSE packet without a reason")
    return payload[0]


def close_reason(reason: int) -> str:
    return f"{reason:#04x} ({CLOSE_REASONS.get(reason, 'not in the specification')})"


class WispSession:
    """One Wisp connection: one WebSocket carrying any number of streams."""

    def __init__(self, conn: WSConnection) -> None:
        self.conn = conn
        self.streams: dict[int, WispStream] = {}
        self.initial_buffer = 0
        self.errors: list[str] = []
        self._next_id = 1
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.on_message = self._on_message
        conn.on_close = self._on_close

    async def start(self, timeout: float = 10.0) -> None:
        """Wait for the server's first CONTINUE (stream 0): then streams may be opened."""
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    def open(self, host: str, port: int) -> WispStream:
        """A new TCP stream. Data may be written at once; a refusal arrives as CLOSE."""
        if not self._ready.done():
            raise WispError("no initial CONTINUE received yet")
        stream_id = self._next_id
        self._next_id += 1
        stream = WispStream(self, stream_id, self.initial_buffer)
        self.streams[stream_id] = stream
        self.conn.send(encode_connect(stream_id, host, port))
        return stream

    def _on_message(self, message: memoryview) -> None:
        if len(message) < _HEAD.size:
            self.errors.append(f"short packet of {len(message)} bytes")
            return
        kind, stream_id = _HEAD.unpack_from(message)
        if kind == PacketType.DATA:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._deliver(message[_HEAD.size :])
        elif kind == PacketType.CONTINUE:
            try:
                remaining = decode_continue(message[_HEAD.size :])
            except WispError as e:
                self.errors.append(str(e))
                return
            if stream_id == 0:
                self.initial_buffer = remaining
                if not self._ready.done():
                    self._ready.set_result(None)
            else:
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream._on_continue(remaining)
        elif kind == PacketType.CLOSE:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                payload = message[_HEAD.size :]
                reason = close_reason(payload[0]) if len(payload) else "no reason"
                stream.close_reason = reason
                stream._closed(f"CLOSE {reason}")
        # Anything else (a v2 INFO packet) is not for a v1 client.

    def _on_close(self, reason: str | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(WispError(f"WebSocket closed: {reason}"))
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream._closed(f"WebSocket closed: {reason}")

    async def close(self) -> None:
        await self.conn.close()


async def open_wisp(port: int, path: str = "/") -> WispSession:
    """A Wisp session on 127.0.0.1:``port``, ready for streams (initial CONTINUE received)."""
    created: list[WispSession] = []
    # The server speaks first, maybe in the same read as the handshake response: the
    # session must listen before the WebSocket opens.
    await open_ws(port, path, lambda conn: created.append(WispSession(conn)))
    session = created[0]
    try:
        await session.start()
    except BaseException:
        await session.close()
        raise
    return session


class WispStream(Stream):
    """A TCP stream of a Wisp session, with the specification's packet-credit flow control."""

    def __init__(self, session: WispSession, stream_id: int, credit: int) -> None:
        super().__init__()
        self.session = session
        self.stream_id = stream_id
        self.credit = credit
        self.continues = 0
        self.credit_waits = 0
        self.close_reason = ""
        self._head = _HEAD.pack(PacketType.DATA, stream_id)
        self._waiter: asyncio.Future[None] | None = None

    async def write(self, data: bytes) -> None:
        conn = self.session.conn
        while self.credit <= 0 or conn.paused:
            if self.closed:
                raise StreamClosed(self.error or "closed")
            if conn.paused:
                await conn.wait_writable()
                continue
            self.credit_waits += 1
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.closed:
            raise StreamClosed(self.error or "closed")
        conn.send(self._head + data)
        self.credit -= 1

    def _on_continue(self, remaining: int) -> None:
        self.continues += 1
        self.credit = remaining
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _closed(self, error: str | None = None) -> None:
        super()._closed(error)
        self._wake()

    async def close(self) -> None:
        if self.closed:
            return
        self.session.streams.pop(self.stream_id, None)
        if self.session.conn.transport is not None:
            self.session.conn.send(encode_close(self.stream_id))
        self._closed()

    def stats(self) -> dict[str, int]:
        return {"continues": self.continues, "credit_waits": self.credit_waits}
