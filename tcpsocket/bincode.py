"""Bincode primitives of the session protocol (protocol.md A.1).

Unsigned integers are big-endian varints: one byte up to 250, else a
marker byte (``FB``/``FC``/``FD``) and 2/4/8 big-endian bytes.  Encoders
write the shortest form; the decoder accepts any form that fits the
target width.
"""

from __future__ import annotations

import struct
from typing import Final, TypeAlias

__all__ = [
    "Buffer",
    "DecodeError",
    "Reader",
    "encode_binary",
    "encode_bool",
    "encode_i64",
    "encode_string",
    "encode_varint",
    "read_varint",
]

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_SMALL: Final = tuple(bytes((n,)) for n in range(251))
_MAX_U64: Final = (1 << 64) - 1


#: What decoders read from: a message, or a view into one.
Buffer: TypeAlias = bytes | memoryview


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the expected value."""


def encode_varint(value: int) -> bytes:
    """Encode an unsigned integer in its shortest varint form."""
    if 0 <= value <= 250:
        return _SMALL[value]
    if value < 0 or value > _MAX_U64:
        raise ValueError(f"varint out of range: {value}")
    if value <= 0xFFFF:
        return b"\xfb" + _U16.pack(value)
    if value <= 0xFFFFFFFF:
        return b"\xfc" + _U32.pack(value)
    return b"\xfd" + _U64.pack(value)


def encode_i64(value: int) -> bytes:
    """Encode a signed 64-bit integer (zigzag, then varint)."""
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"i64 out of range: {value}")
    return encode_varint(value * 2 if value >= 0 else -value * 2 - 1)


def encode_bool(value: bool) -> bytes:
    """Encode a bool as one raw byte."""
    return b"\x01" if value else b"\x00"


def encode_binary(value: bytes) -> bytes:
    """Encode bytes with their varint length."""
    return encode_varint(len(value)) + value


def encode_string(value: str) -> bytes:
    """Encode a string as UTF-8 with its varint length."""
    return encode_binary(value.encode("utf-8"))


def read_varint(data: Buffer, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` of ``data`` and the offset after it: a fast path.

    Raises ``IndexError`` or ``struct.error`` when ``data`` ends first and
    :class:`DecodeError` for an invalid marker; :class:`Reader` says what is wrong
    in the words the protocol's errors use.
    """
    first = data[pos]
    if first <= 250:
        return first, pos + 1
    if first == 0xFB:
        return _U16.unpack_from(data, pos + 1)[0], pos + 3
    if first == 0xFC:
        return _U32.unpack_from(data, pos + 1)[0], pos + 5
    if first == 0xFD:
        return _U64.unpack_from(data, pos + 1)[0], pos + 9
    raise DecodeError(f"invalid varint marker 0x{first:02x} at offset {pos}")


class Reader:
    """Decode primitives from a buffer, front to back."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: Buffer) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        """How many bytes are left to read."""
        return len(self._data) - self._pos

    def _take(self, count: int) -> memoryview:
        end = self._pos + count
        if end > len(self._data):
            raise DecodeError(f"truncated: needed {count} bytes at offset {self._pos}")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def varint(self, bits: int = 64) -> int:
        """Read an unsigned varint that must fit in ``bits`` bits."""
        if self._pos >= len(self._data):
            raise DecodeError(f"truncated: varint expected at offset {self._pos}")
        first = self._data[self._pos]
        self._pos += 1
        if first <= 250:
            value = first
        elif first == 0xFB:
            value = _U16.unpack(self._take(2))[0]
        elif first == 0xFC:
            value = _U32.unpack(self._take(4))[0]
        elif first == 0xFD:
            value = _U64.unpack(self._take(8))[0]
        else:
            raise DecodeError(f"invalid varint marker 0x{first:02x} at offset {self._pos - 1}")
        if value >> bits:
            raise DecodeError(f"varint {value} overflows u{bits}")
        return value

    def u32(self) -> int:
        """Read a u32 varint."""
        return self.varint(32)

    def u64(self) -> int:
        """Read a u64 varint."""
        return self.varint(64)

    def i64(self) -> int:
        """Read a zigzag-encoded i64."""
        raw = self.varint(64)
        return (raw >> 1) ^ -(raw & 1)

    def boolean(self) -> bool:
        """Read a bool; only ``00`` and ``01`` are valid."""
        byte = self._take(1)[0]
        if byte > 1:
            raise DecodeError(f"invalid bool byte 0x{byte:02x}")
        return byte == 1

    def binary(self) -> bytes:
        """Read length-prefixed bytes."""
        return bytes(self._take(self.varint(64)))

    def view(self) -> memoryview:
        """Read length-prefixed bytes without copying them."""
        return self._take(self.varint(64))

    def string(self) -> str:
        """Read a length-prefixed UTF-8 string."""
        raw = self.view()
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"invalid UTF-8 in string: {e.reason}") from None

    def optional_string(self) -> str | None:
        """Read a trailing extension string (protocol.md C.1) if one is there."""
        if not self.remaining:
            return None
        return self.string()

    def finish(self) -> None:
        """Fail if bytes are left over: a message must be consumed exactly."""
        if self.remaining:
            raise DecodeError(f"{self.remaining} trailing bytes")
