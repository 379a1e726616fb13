"""The benchmark client: one asyncio runtime for every target.

Four ways to get a byte stream to the remote, all with the same interface
(:class:`Stream`: ``write``, ``until``, ``close``):

* :class:`DirectStream`: plain TCP to the remote (the physical limit);
* :class:`WebsockifyStream`: one WebSocket per TCP connection through websockify
  (binary frames, payload = the raw bytes);
* :class:`DaemonStream`: a TcpSocket of a tcpsocket session (protocol.md): send requests
  pipelined within a bounded window of unanswered sends and paused after a ``false``
  reply until DRAIN; data arrives as DATA events;
* ``WispStream`` (:mod:`bench.wisp_client`): a stream of a Wisp connection
  (wisp-python, wisp-server-node).

The WebSocket client (:class:`WSConnection`) is a small hand-written one: HTTP upgrade,
masked frames out (masking with ``websockets.speedups.apply_mask``, C), unmasked frames
in, parsed straight out of the received ``bytes`` with memoryviews. The same code carries
websockify, Wisp and tcpsocket traffic, so the client costs the same for all.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
from collections.abc import Callable, Iterable
from typing import Any

from tcpsocket.bincode import encode_varint
from tcpsocket.messages import (
    Core,
    GetService,
    GetServiceResult,
    ObjectRef,
    decode_core_response,
    encode_handshake,
    encode_request,
)
from tcpsocket.services.securesocket.messages import (
    SECURE_FINGERPRINT,
    decode_socket_info,
    encode_secure_open,
)
from tcpsocket.services.securesocket.messages import SERVICE_NAME as SECURE_SERVICE_NAME
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import (
    SERVICE_NAME,
    Event,
    Method,
    Reply,
    SocketReply,
    decode_socket_reply,
    encode_method,
    encode_open,
)

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension

    def apply_mask(data: Any, mask: bytes) -> bytes:
        n = len(data)
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


#: asyncio write-buffer high-water mark of every client connection (all targets alike).
WRITE_HIGH = 1 << 20
#: Unanswered send requests allowed per tcpsocket stream.
SEND_WINDOW = 16

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_getrandbits = random.getrandbits


class StreamClosed(ConnectionError):
    pass


class Stream:
    """A byte pipe to the remote: counts what arrives, optionally keeps it."""

    def __init__(self) -> None:
        self.received = 0
        self.keep: bytearray | None = None
        self.closed = False
        self.error: str | None = None
        #: Called with the size of every delivery (the 100-stream workload's half-time mark).
        self.observer: Callable[[int], None] | None = None
        self._want = 0
        self._want_future: asyncio.Future[None] | None = None

    def _deliver(self, data: Any) -> None:
        self.received += len(data)
        if self.observer is not None:
            self.observer(len(data))
        if self.keep is not None:
            self.keep += data
        future = self._want_future
        if future is not None and self.received >= self._want:
            self._want_future = None
            if not future.done():
                future.set_result(None)

    def until(self, total: int) -> asyncio.Future[None]:
        """Resolves once ``total`` bytes have arrived in all."""
        future = asyncio.get_running_loop().create_future()
        if self.received >= total:
            future.set_result(None)
        elif self.closed:
            future.set_exception(StreamClosed(self._why(total)))
        else:
            self._want = total
            self._want_future = future
        return future

    def _why(self, total: int) -> str:
        return f"closed after {self.received} of {total} bytes ({self.error or 'no error'})"

    def _closed(self, error: str | None = None) -> None:
        self.closed = True
        if error and not self.error:
            self.error = error
        future = self._want_future
        if future is not None and not future.done():
            self._want_future = None
            future.set_exception(StreamClosed(self._why(self._want)))

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def flushed(self) -> None:
        """Everything written was accepted by the next hop (tcpsocket: every send answered)."""

    async def close(self) -> None:
        raise NotImplementedError


class _Writable:
    """asyncio write flow control shared by the protocols below."""

    def __init__(self) -> None:
        self.paused = False
        self._writers: list[asyncio.Future[None]] = []

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writers()

    def _wake_writers(self, error: BaseException | None = None) -> None:
        writers, self._writers = self._writers, []
        for future in writers:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def wait_writable(self) -> None:
        while self.paused:
            future = asyncio.get_running_loop().create_future()
            self._writers.append(future)
            await future


# -- direct TCP ------------------------------------------------------------------


class DirectStream(Stream, _Writable, asyncio.Protocol):
    def __init__(self) -> None:
        Stream.__init__(self)
        _Writable.__init__(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        self._deliver(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed(str(exc) if exc else None)
        self._wake_writers(StreamClosed("connection lost"))

    async def write(self, data: bytes) -> None:
        if self.paused:
            await self.wait_writable()
        if self.transport is None or self.transport.is_closing():
            raise StreamClosed("closed")
        self.transport.write(data)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_direct(port: int) -> DirectStream:
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(DirectStream, "127.0.0.1", port)
    return stream


# -- WebSocket -------------------------------------------------------------------


class WSConnection(_Writable, asyncio.Protocol):
    """A minimal RFC 6455 client connection; every message goes to ``on_message``.

    ``on_message`` gets a memoryview that is only valid during the call.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        _Writable.__init__(self)
        self.host, self.port, self.path = host, port, path
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[WSConnection] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.on_message: Callable[[memoryview], None] = lambda m: None
        self.on_close: Callable[[str | None], None] = lambda reason: None
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._buf = bytearray()  # the HTTP response while handshaking
        self._pending: list[bytes] = []  # an incomplete frame, in pieces
        self._pending_size = 0
        self._need = 0  # bytes the incomplete frame needs in all
        self._handshaking = True
        self._fragments: bytearray | None = None
        self._close_sent = False
        self._key = base64.b64encode(random.randbytes(16))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.port, self._key)
        )

    def data_received(self, data: bytes) -> None:
        if self._handshaking:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            data = bytes(self._buf[end + 4 :])
            self._buf.clear()
            self._handshaking = False
            accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest()).decode()
            status = head.split("\r\n", 1)[0]
            if " 101 " not in status + " " or accept not in head:
                error = ConnectionError(f"WebSocket handshake refused: {status!r}")
                if not self.opened.done():
                    self.opened.set_exception(error)
                assert self.transport is not None
                self.transport.abort()
                return
            if not self.opened.done():
                self.opened.set_result(self)
            if not data:
                return
        elif self._pending:
            # Part of a frame is waiting: collect chunks until the frame is complete, so a
            # large frame costs one join, not one copy per read.
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._need:
                return
            data = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        view = memoryview(data)
        size = len(data)
        pos = 0
        need = 0
        on_message = self.on_message
        while True:
            if size - pos < 2:
                need = 2
                break
            b0 = data[pos]
            length = data[pos + 1]
            if length & 0x80:
                self._protocol_error("masked frame from server")
                return
            header = 2
            if length == 126:
                if size - pos < 4:
                    need = 4
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                header = 4
            elif length == 127:
                if size - pos < 10:
                    need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                need = header + length
                break
            payload = view[pos + header : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 2 or opcode == 1:
                if b0 & 0x80:
                    on_message(payload)
                else:
                    self._fragments = bytearray(payload)
            elif opcode == 0:
                if self._fragments is None:
                    self._protocol_error("continuation without a start")
                    return
                self._fragments += payload
                if b0 & 0x80:
                    message = bytes(self._fragments)
                    self._fragments = None
                    on_message(memoryview(message))
            elif opcode == 8:
                if len(payload) >= 2:
                    self.close_code = int.from_bytes(payload[:2], "big")
                    self.close_reason = bytes(payload[2:]).decode("utf-8", "replace")
                if not self._close_sent:
                    self._send_frame(8, bytes(payload[:2]))
                    self._close_sent = True
                assert self.transport is not None
                self.transport.close()
                return
            elif opcode == 9:
                self._send_frame(10, bytes(payload))
        if pos < size:
            rest = data[pos:] if pos else data
            self._pending = [rest]
            self._pending_size = len(rest)
            self._need = need

    def _protocol_error(self, reason: str) -> None:
        self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        reason = f"closed {self.close_code} {self.close_reason}".strip()
        if exc is not None:
            reason += f" ({exc})"
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake_writers(StreamClosed(reason))
        self.on_close(reason)

    # sending

    def _send_frame(self, opcode: int, payload: Any) -> None:
        n = len(payload)
        mask = _getrandbits(32).to_bytes(4, "big")
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = _H16.pack(0x80 | opcode, 0xFE, n)
        else:
            head = _H64.pack(0x80 | opcode, 0xFF, n)
        transport = self.transport
        if transport is None:
            raise StreamClosed("WebSocket is closed")
        transport.write(head + mask + apply_mask(payload, mask))

    def send(self, payload: Any) -> None:
        """Send one binary message."""
        self._send_frame(2, payload)

    async def close(self, timeout: float = 2.0) -> None:
        """Closing handshake, then drop the TCP connection."""
        if self.transport is None:
            return
        if not self._close_sent:
            self._close_sent = True
            try:
                self._send_frame(8, (1000).to_bytes(2, "big"))
            except StreamClosed:
                return
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), timeout)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.abort()


async def open_ws(
    port: int, path: str, setup: Callable[[WSConnection], None] | None = None
) -> WSConnection:
    """A WebSocket to 127.0.0.1:``port``. ``setup`` gets the connection before it connects,
    to install ``on_message`` in time for a server that speaks first."""

    def factory() -> WSConnection:
        conn = WSConnection("127.0.0.1", port, path)
        if setup is not None:
            setup(conn)
        return conn

    _, conn = await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", port)
    return await conn.opened


# -- websockify ------------------------------------------------------------------


class WebsockifyStream(Stream):
    def __init__(self, conn: WSConnection) -> None:
        super().__init__()
        self.conn = conn
        conn.on_message = self._deliver
        conn.on_close = self._closed

    async def write(self, data: bytes) -> None:
        conn = self.conn
        if conn.paused:
            await conn.wait_writable()
        conn.send(data)

    async def close(self) -> None:
        await self.conn.close()


async def open_websockify(port: int) -> WebsockifyStream:
    return WebsockifyStream(await open_ws(port, "/"))


# -- tcpsocket -------------------------------------------------------------------


def _varint(data: Any, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first <= 250:
        return first, pos + 1
    if first == 0xFB:
        return int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    if first == 0xFC:
        return int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
    if first == 0xFD:
        return int.from_bytes(data[pos + 1 : pos + 9], "big"), pos + 9
    raise ValueError(f"bad varint marker {first:#x}")


class SessionError(Exception):
    pass


class Session:
    """One session WebSocket to the daemon, with one TcpSocketManager instance."""

    def __init__(self, conn: WSConnection) -> None:
        self.conn = conn
        self.service = 0
        self.streams: dict[int, DaemonStream] = {}
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_request = 3
        self._ack: asyncio.Future[bytes] | None = None
        self.errors: list[str] = []
        conn.on_close = self._on_close

    async def start(self, token: str, secure: bool = False) -> None:
        """Handshake, then GetService: TcpSocketManager, or SecureTcpSocketManager if
        ``secure``."""
        loop = asyncio.get_running_loop()
        self._ack = loop.create_future()
        self.conn.on_message = self._on_ack
        self.conn.send(encode_handshake(token))
        if await self._ack != b"\x01":
            raise SessionError("token refused")
        self.conn.on_message = self._on_message
        response = decode_core_response(
            await self.call(0, 0, GetService(*_service(secure)).encode())
        )
        if response.result is not GetServiceResult.SUCCESS:
            raise SessionError(f"GetService failed: {response.result}")
        assert isinstance(response.value, int)
        self.service = response.value

    def _on_ack(self, message: memoryview) -> None:
        if self._ack is not None and not self._ack.done():
            self._ack.set_result(bytes(message))

    def next_request(self) -> int:
        request = self._next_request
        self._next_request += 2
        return request

    def call(self, service: int, object_id: int, content: bytes) -> asyncio.Future[bytes]:
        """Send a request; resolves with the response content."""
        request = self.next_request()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        self.conn.send(encode_request(service, object_id, request, content))
        return future

    async def open(
        self,
        host: str,
        port: int,
        events: Iterable[Event] = tuple(Event),
        secure: bool = False,
        server_name: str = "",
    ) -> DaemonStream:
        """Open a socket (with TLS from the start, verified for ``server_name``, on a
        secure session, if ``secure``)."""
        if secure:
            content = encode_secure_open(
                host, port, use_secure_transport=True, server_name=server_name
            )
        else:
            content = encode_open(host, port)
        answer = await self.call(self.service, 0, content)
        reply = decode_socket_reply(answer)
        if reply.reply is not Reply.OPEN_SUCCESS:
            raise SessionError(f"open failed: {reply.detail}")
        if secure:
            reply = SocketReply(reply.reply, decode_socket_info(answer).socket_id)
        assert isinstance(reply.value, int)
        stream = DaemonStream(self, reply.value)
        self.streams[reply.value] = stream
        futures = [
            self.call(0, 0, ObjectRef(Core.ENABLE_EVENT, self.service, reply.value, e).encode())
            for e in events
        ]
        for future in futures:
            if decode_core_response(await future).value is not True:
                raise SessionError("EnableEvent failed")
        return stream

    def _on_message(self, message: memoryview) -> None:
        _, pos = _varint(message, 0)  # service
        object_id, pos = _varint(message, pos)
        kind = message[pos]
        pos += 1
        if kind == 2:  # event
            length, pos = _varint(message, pos)
            stream = self.streams.get(object_id)
            if stream is None:
                return
            tag = message[pos]
            if tag == 9:  # DATA
                size, start = _varint(message, pos + 1)
                stream._deliver(message[start : start + size])
            elif tag == 10:  # DRAIN
                stream._on_drain()
            elif tag == 8:  # CLOSE
                stream._closed()
            elif tag == 11:  # ERROR
                stream.error = decode_socket_reply(bytes(message[pos : pos + length])).value  # type: ignore[assignment]
            return
        if kind != 1:
            self.errors.append(f"unexpected message kind {kind}")
            return
        request, pos = _varint(message, pos)
        length, pos = _varint(message, pos)
        future = self._pending.pop(request, None)
        if future is not None:
            if not future.done():
                future.set_result(bytes(message[pos : pos + length]))
            return
        stream = self.streams.get(object_id)
        if stream is None:
            self.errors.append(f"response to unknown request {request}")
            return
        stream._on_send_reply(message[pos : pos + length])

    def _on_close(self, reason: str | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SessionError(f"session closed: {reason}"))
        self._pending.clear()
        for stream in self.streams.values():
            stream._closed(f"session closed: {reason}")
            stream._wake(SessionError(f"session closed: {reason}"))

    async def close(self) -> None:
        await self.conn.close()


def _service(secure: bool) -> tuple[str, str]:
    if secure:
        return SECURE_SERVICE_NAME, SECURE_FINGERPRINT
    return SERVICE_NAME, TCPSOCKET_FINGERPRINT


async def open_session(port: int, token: str, secure: bool = False) -> Session:
    session = Session(await open_ws(port, "/ws"))
    await session.start(token, secure)
    return session


class DaemonStream(Stream):
    """A TcpSocket of a session."""

    def __init__(self, session: Session, socket_id: int) -> None:
        super().__init__()
        self.session = session
        self.socket_id = socket_id
        self.window = SEND_WINDOW
        self.unanswered = 0
        self.sends = 0
        self.replies_true = 0
        self.replies_false = 0
        self.drains = 0
        self.send_errors: list[str] = []
        self.waiting_drain = False
        self._waiter: asyncio.Future[None] | None = None
        self._prefix = encode_varint(session.service) + encode_varint(socket_id) + b"\x00"

    async def write(self, data: bytes) -> None:
        conn = self.session.conn
        while self.unanswered >= self.window or self.waiting_drain or conn.paused:
            if self.closed:
                raise StreamClosed(self.error or "closed")
            if conn.paused:
                await conn.wait_writable()
                continue
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.send_errors:
            raise StreamClosed(f"send failed: {self.send_errors[0]}")
        size = len(data)
        body = encode_varint(size)
        conn.send(
            b"".join(
                (
                    self._prefix,
                    encode_varint(self.session.next_request()),
                    encode_varint(1 + len(body) + size),
                    b"\x02",
                    body,
                    data,
                )
            )
        )
        self.unanswered += 1
        self.sends += 1

    def _wake(self, error: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _on_send_reply(self, content: memoryview) -> None:
        tag = content[0]
        if tag == Reply.SEND_SUCCESS:
            self.unanswered -= 1
            if content[1]:
                self.replies_true += 1
            else:
                self.replies_false += 1
                self.waiting_drain = True
        elif tag == Reply.SEND_ERROR:
            self.unanswered -= 1
            self.send_errors.append(repr(decode_socket_reply(bytes(content)).detail))
        else:
            self.session.errors.append(f"unexpected reply {tag} on socket {self.socket_id}")
        self._wake()

    def _closed(self, error: str | None = None) -> None:
        super()._closed(error)
        self._wake(StreamClosed(self.error or "closed"))

    def _on_drain(self) -> None:
        self.drains += 1
        self.waiting_drain = False
        self._wake()

    async def flushed(self) -> None:
        while self.unanswered:
            if self.closed:
                raise StreamClosed(self.error or "closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self.send_errors:
            raise StreamClosed(f"send failed: {self.send_errors[0]}")

    async def close(self) -> None:
        if self.closed or self.session.conn.transport is None:
            return
        await self.session.call(self.session.service, self.socket_id, encode_method(Method.CLOSE))

    def stats(self) -> dict[str, int]:
        return {
            "sends": self.sends,
            "replies_true": self.replies_true,
            "replies_false": self.replies_false,
            "drains": self.drains,
            "send_errors": len(self.send_errors),
        }
