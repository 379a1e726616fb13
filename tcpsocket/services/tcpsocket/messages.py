"""The TcpSocketManager messages (protocol.md A.5).

Its requests, replies and events, their encoders and decoders; the session
envelope around them is :mod:`tcpsocket.messages`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from tcpsocket.bincode import (
    Buffer,
    DecodeError,
    Reader,
    encode_binary,
    encode_bool,
    encode_i64,
    encode_string,
    encode_varint,
    read_varint,
)
from tcpsocket.messages import Kind

__all__ = [
    "EVENT_OF_REPLY",
    "PERMISSION",
    "REPLIES",
    "SERVICE_NAME",
    "Event",
    "Method",
    "Reply",
    "SocketReply",
    "SocketRequest",
    "data_event_head",
    "decode_socket_reply",
    "decode_socket_request",
    "encode_data_event",
    "encode_drain_event",
    "encode_error_event",
    "encode_method",
    "encode_open",
    "encode_open_success",
    "encode_reply",
    "encode_send",
    "encode_send_success",
    "send_data",
]

SERVICE_NAME: Final = "TcpSocketManager"
PERMISSION: Final = "tcp-socket"


class Method(enum.IntEnum):
    """TcpSocketManager requests (protocol.md A.5)."""

    CLOSE = 0
    RESUME = 1
    SEND = 2
    SUSPEND = 3
    OPEN = 4


class Reply(enum.IntEnum):
    """TcpSocketManager responses and events (protocol.md A.5)."""

    CLOSE_SUCCESS = 0
    CLOSE_ERROR = 1
    RESUME_SUCCESS = 2
    RESUME_ERROR = 3
    SEND_SUCCESS = 4
    SEND_ERROR = 5
    SUSPEND_SUCCESS = 6
    SUSPEND_ERROR = 7
    CLOSE_EVENT = 8
    DATA_EVENT = 9
    DRAIN_EVENT = 10
    ERROR_EVENT = 11
    OPEN_SUCCESS = 12
    OPEN_ERROR = 13


class Event(enum.IntEnum):
    """Event ids used by EnableEvent/DisableEvent and the clients."""

    CLOSE = 0
    DATA = 1
    DRAIN = 2
    ERROR = 3


#: The success and error reply of each method.
REPLIES: Final[dict[Method, tuple[Reply, Reply]]] = {
    Method.CLOSE: (Reply.CLOSE_SUCCESS, Reply.CLOSE_ERROR),
    Method.RESUME: (Reply.RESUME_SUCCESS, Reply.RESUME_ERROR),
    Method.SEND: (Reply.SEND_SUCCESS, Reply.SEND_ERROR),
    Method.SUSPEND: (Reply.SUSPEND_SUCCESS, Reply.SUSPEND_ERROR),
    Method.OPEN: (Reply.OPEN_SUCCESS, Reply.OPEN_ERROR),
}

#: The event id of each event reply.
EVENT_OF_REPLY: Final[dict[Reply, Event]] = {
    Reply.CLOSE_EVENT: Event.CLOSE,
    Reply.DATA_EVENT: Event.DATA,
    Reply.DRAIN_EVENT: Event.DRAIN,
    Reply.ERROR_EVENT: Event.ERROR,
}


_EVENT_TAG: Final = encode_varint(Kind.EVENT)
_DATA_TAG: Final = encode_varint(Reply.DATA_EVENT)
#: Method.SEND, as the first byte of a request's content.
_SEND: Final = int(Method.SEND)


# -- TcpSocketManager ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketRequest:
    """A decoded TcpSocketManager request: ``data`` for send, ``host``/``port`` for open."""

    method: Method
    data: bytes = b""
    host: str = ""
    port: int = 0


def decode_socket_request(content: Buffer) -> SocketRequest:
    """Decode the content of a Request to a TcpSocketManager, exactly."""
    data = send_data(content)
    if data is not None:
        return SocketRequest(Method.SEND, data)
    reader = Reader(content)
    tag = reader.u32()
    try:
        method = Method(tag)
    except ValueError:
        raise DecodeError(f"unknown TcpSocketManager request {tag}") from None
    if method is Method.SEND:
        request = SocketRequest(method, data=reader.binary())
    elif method is Method.OPEN:
        request = SocketRequest(method, host=reader.string(), port=reader.i64())
    else:
        request = SocketRequest(method)
    reader.finish()
    return request


def send_data(content: Buffer) -> bytes | None:
    """The data of a ``send`` request (its content, as :func:`decode_socket_request`
    decodes it), decoded fast; None for any other request, or a malformed one."""
    try:
        if content[0] != _SEND:
            return None
        size, pos = read_varint(content, 1)
    except (IndexError, struct.error, DecodeError):
        return None
    if pos + size != len(content):
        return None
    return bytes(content[pos:])


def encode_open(host: str, port: int) -> bytes:
    """TcpSocketFactory.open(SocketAddress)."""
    return encode_varint(Method.OPEN) + encode_string(host) + encode_i64(port)


def encode_send(data: bytes) -> bytes:
    """TcpSocket.send(data)."""
    return encode_varint(Method.SEND) + encode_binary(data)


def encode_method(method: Method) -> bytes:
    """A TcpSocket method without arguments (close, resume, suspend)."""
    return encode_varint(method)


def encode_reply(reply: Reply, detail: str | None = None) -> bytes:
    """A reply or event without fields; error variants may carry a reason (C.1)."""
    out = encode_varint(reply)
    if detail is not None:
        out += encode_string(detail)
    return out


def encode_send_success(below_high_water: bool) -> bytes:
    """send success (bool)."""
    return encode_varint(Reply.SEND_SUCCESS) + encode_bool(below_high_water)


def encode_open_success(socket_id: int) -> bytes:
    """open success (socket object id)."""
    return encode_varint(Reply.OPEN_SUCCESS) + encode_varint(socket_id)


def encode_data_event(data: bytes) -> bytes:
    """DATA event content."""
    return encode_varint(Reply.DATA_EVENT) + encode_binary(data)


def data_event_head(service: int, object_id: int, length: int) -> bytes:
    """The bytes of a DATA event message that come before its ``length`` bytes of data."""
    data_head = _DATA_TAG + encode_varint(length)
    return b"".join(
        (
            encode_varint(service),
            encode_varint(object_id),
            _EVENT_TAG,
            encode_varint(len(data_head) + length),
            data_head,
        )
    )


def encode_drain_event(drained: bool) -> bytes:
    """DRAIN event content."""
    return encode_varint(Reply.DRAIN_EVENT) + encode_bool(drained)


def encode_error_event(reason: str) -> bytes:
    """ERROR event content."""
    return encode_varint(Reply.ERROR_EVENT) + encode_string(reason)


@dataclass(frozen=True, slots=True)
class SocketReply:
    """A decoded TcpSocketManager response or event.

    ``value`` is the send bool, DRAIN bool, socket id, DATA bytes or ERROR
    text; ``detail`` is the optional reason of an error variant.
    """

    reply: Reply
    value: bool | int | bytes | str | None = None
    detail: str | None = None


_ERRORS: Final = frozenset(error for _, error in REPLIES.values())


def decode_socket_reply(content: Buffer) -> SocketReply:
    """Decode a TcpSocketManager response or event, ignoring trailing extensions."""
    reader = Reader(content)
    tag = reader.u32()
    try:
        reply = Reply(tag)
    except ValueError:
        raise DecodeError(f"unknown TcpSocketManager reply {tag}") from None
    if reply in (Reply.SEND_SUCCESS, Reply.DRAIN_EVENT):
        return SocketReply(reply, reader.boolean())
    if reply is Reply.OPEN_SUCCESS:
        return SocketReply(reply, reader.u32())
    if reply is Reply.DATA_EVENT:
        return SocketReply(reply, reader.binary())
    if reply is Reply.ERROR_EVENT:
        return SocketReply(reply, reader.string())
    if reply in _ERRORS:
        return SocketReply(reply, detail=reader.optional_string())
    return SocketReply(reply)
