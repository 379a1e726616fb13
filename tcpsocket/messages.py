"""Messages of the session protocol and the TcpSocketManager service.

Encoders return ``bytes`` ready to send as one binary WebSocket message;
decoders take a :class:`~tcpsocket.bincode.Reader` and raise
:class:`~tcpsocket.bincode.DecodeError` on malformed input.
"""

from __future__ import annotations

import enum
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
)

SERVICE_NAME: Final = "TcpSocketManager"
PERMISSION: Final = "tcp-socket"
CORE_SERVICE: Final = 0


class Kind(enum.IntEnum):
    """BaseMessage kinds (protocol.md A.3)."""

    REQUEST = 0
    RESPONSE = 1
    EVENT = 2
    PERMISSION_ERROR = 3


class Core(enum.IntEnum):
    """Core service requests and responses (protocol.md A.4)."""

    GET_SERVICE = 0
    HAS_SERVICE = 1
    RELEASE_OBJECT = 2
    ENABLE_EVENT = 3
    DISABLE_EVENT = 4


class GetServiceResult(enum.IntEnum):
    """Variants of GetServiceResponse."""

    SUCCESS = 0
    UNKNOWN_SERVICE = 1
    FINGERPRINT_MISMATCH = 2
    MISSING_PERMISSION = 3
    INTERNAL_ERROR = 4


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


# -- handshake ---------------------------------------------------------------


def encode_handshake(token: str) -> bytes:
    """SessionHandshake { token }."""
    return encode_string(token)


def decode_handshake(data: bytes) -> str:
    """Decode a SessionHandshake, exactly."""
    reader = Reader(data)
    token = reader.string()
    reader.finish()
    return token


def encode_ack(success: bool) -> bytes:
    """SessionAck { success }."""
    return encode_bool(success)


# -- BaseMessage -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BaseMessage:
    """The envelope of every message after the handshake.

    ``request`` is the request id for REQUEST, RESPONSE and PERMISSION_ERROR
    and ``None`` for EVENT.  ``content`` is a view into the decoded message,
    not a copy; the decoders below take it as it is.
    """

    service: int
    object: int
    kind: Kind
    request: int | None
    content: Buffer
    permission: str = ""
    message: str = ""


def encode_base(
    service: int, object_id: int, kind: Kind, request: int | None, content: bytes
) -> bytes:
    """Encode a BaseMessage of kind REQUEST, RESPONSE or EVENT."""
    head = encode_varint(service) + encode_varint(object_id) + encode_varint(kind)
    if kind is not Kind.EVENT:
        assert request is not None
        head += encode_varint(request)
    return head + encode_binary(content)


def encode_request(service: int, object_id: int, request: int, content: bytes) -> bytes:
    """Encode a Request."""
    return encode_base(service, object_id, Kind.REQUEST, request, content)


def encode_response(service: int, object_id: int, request: int, content: bytes) -> bytes:
    """Encode a Response."""
    return encode_base(service, object_id, Kind.RESPONSE, request, content)


def encode_event(service: int, object_id: int, content: bytes) -> bytes:
    """Encode an Event."""
    return encode_base(service, object_id, Kind.EVENT, None, content)


def decode_base(data: bytes, *, strict: bool = True) -> BaseMessage:
    """Decode a BaseMessage; ``strict`` rejects trailing bytes."""
    reader = Reader(data)
    service = reader.u32()
    object_id = reader.u32()
    tag = reader.u32()
    try:
        kind = Kind(tag)
    except ValueError:
        raise DecodeError(f"unknown message kind {tag}") from None
    request: int | None = None
    permission = message = ""
    if kind is not Kind.EVENT:
        request = reader.u64()
    if kind is Kind.PERMISSION_ERROR:
        permission = reader.string()
        message = reader.string()
    content = reader.view()
    if strict:
        reader.finish()
    return BaseMessage(service, object_id, kind, request, content, permission, message)


# -- core service requests ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetService:
    """Ask for a new instance of a service."""

    name: str
    fingerprint: str

    def encode(self) -> bytes:
        return (
            encode_varint(Core.GET_SERVICE)
            + encode_string(self.name)
            + encode_string(self.fingerprint)
        )


@dataclass(frozen=True, slots=True)
class HasService:
    """Ask whether a service name is known."""

    name: str

    def encode(self) -> bytes:
        return encode_varint(Core.HAS_SERVICE) + encode_string(self.name)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """ReleaseObject (``event`` is None) or Enable/DisableEvent."""

    op: Core
    service: int
    object: int
    event: int | None = None

    def encode(self) -> bytes:
        out = encode_varint(self.op) + encode_varint(self.service) + encode_varint(self.object)
        if self.event is not None:
            out += encode_varint(self.event)
        return out


CoreRequest = GetService | HasService | ObjectRef


def decode_core_request(content: Buffer) -> CoreRequest:
    """Decode the content of a Request to the core service, exactly."""
    reader = Reader(content)
    tag = reader.u32()
    request: CoreRequest
    if tag == Core.GET_SERVICE:
        request = GetService(reader.string(), reader.string())
    elif tag == Core.HAS_SERVICE:
        request = HasService(reader.string())
    elif tag == Core.RELEASE_OBJECT:
        request = ObjectRef(Core.RELEASE_OBJECT, reader.u32(), reader.u32())
    elif tag in (Core.ENABLE_EVENT, Core.DISABLE_EVENT):
        request = ObjectRef(Core(tag), reader.u32(), reader.u32(), reader.u32())
    else:
        raise DecodeError(f"unknown core request {tag}")
    reader.finish()
    return request


def encode_get_service_response(result: GetServiceResult, value: int | str = 0) -> bytes:
    """Core response to GetService: the service id, or an error variant."""
    out = encode_varint(Core.GET_SERVICE) + encode_varint(result)
    if result is GetServiceResult.SUCCESS:
        assert isinstance(value, int)
        out += encode_varint(value)
    elif result is GetServiceResult.INTERNAL_ERROR:
        assert isinstance(value, str)
        out += encode_string(value)
    return out


def encode_core_bool_response(op: Core, success: bool) -> bytes:
    """Core response to HasService, ReleaseObject, Enable/DisableEvent."""
    return encode_varint(op) + encode_bool(success)


@dataclass(frozen=True, slots=True)
class CoreResponse:
    """A decoded core response: ``value`` is the service id, error text or bool."""

    op: Core
    result: GetServiceResult | None
    value: int | str | bool | None


def decode_core_response(content: Buffer) -> CoreResponse:
    """Decode the content of a Response from the core service."""
    reader = Reader(content)
    tag = reader.u32()
    if tag == Core.GET_SERVICE:
        raw = reader.u32()
        try:
            result = GetServiceResult(raw)
        except ValueError:
            raise DecodeError(f"unknown GetService result {raw}") from None
        value: int | str | None = None
        if result is GetServiceResult.SUCCESS:
            value = reader.u32()
        elif result is GetServiceResult.INTERNAL_ERROR:
            value = reader.string()
        return CoreResponse(Core.GET_SERVICE, result, value)
    if tag in (Core.HAS_SERVICE, Core.RELEASE_OBJECT, Core.ENABLE_EVENT, Core.DISABLE_EVENT):
        return CoreResponse(Core(tag), None, reader.boolean())
    raise DecodeError(f"unknown core response {tag}")


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
    data_head = encode_varint(Reply.DATA_EVENT) + encode_varint(length)
    return (
        encode_varint(service)
        + encode_varint(object_id)
        + _EVENT_TAG
        + encode_varint(len(data_head) + length)
        + data_head
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
