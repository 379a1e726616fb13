"""Messages of the session protocol: handshake, BaseMessage and the core service.

Encoders return ``bytes`` ready to send as one binary WebSocket message;
decoders take a :class:`~tcpsocket.bincode.Reader` and raise
:class:`~tcpsocket.bincode.DecodeError` on malformed input.
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
    encode_string,
    encode_varint,
    read_varint,
)

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


def split_request(data: bytes) -> tuple[int, int, int, memoryview] | None:
    """The service, object, request id and content of the BaseMessage REQUEST in
    ``data``, decoded fast: what ``decode_base(data)`` gives for it.

    None for anything else (another kind, a kind in a longer varint form, any
    error): :func:`decode_base` then decodes it, or says what is wrong.
    """
    try:
        service, pos = read_varint(data, 0)
        object_id, pos = read_varint(data, pos)
        if data[pos] != 0:  # Kind.REQUEST, in its one-byte form
            return None
        request, pos = read_varint(data, pos + 1)
        size, pos = read_varint(data, pos)
    except (IndexError, struct.error, DecodeError):
        return None
    if service >> 32 or object_id >> 32 or pos + size != len(data):
        return None
    return service, object_id, request, memoryview(data)[pos:]


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


def __getattr__(name: str) -> object:
    """TcpSocketManager's names, which lived here before services were plug-ins.

    They live in :mod:`tcpsocket.services.tcpsocket.messages` (its ``__all__``) and are
    found there lazily, so old imports keep working without an import cycle.
    """
    from tcpsocket.services.tcpsocket import messages

    if name in messages.__all__:
        return getattr(messages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
