"""Every use of Twisted's and Autobahn's private state, in one place.

Each function names what it relies on; ``tests/test_private_canaries.py``
fails when a Twisted or Autobahn release changes it.
"""

from __future__ import annotations

# -- data path (issue 11: write-through, read size) ------------------------------------
#
# Relies on ``twisted.internet.tcp.Connection``: its ``socket``, ``connected``,
# ``disconnecting``, ``_writeDisconnected``/``_writeDisconnecting``, ``TLS``, its
# write buffers ``dataBuffer``/``offset``/``_tempDataLen``, and ``doRead`` reading
# ``bufferSize`` bytes and handing them to ``_dataReceived``.
import errno
from collections.abc import Sequence
from typing import Any

from twisted.internet import main, tcp

__all__ = ["buffered", "feed_frames", "plain_tcp", "queue", "set_read_size", "write_through"]

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def buffered(transport: Any) -> int:
    """Bytes a TCP transport counts against its ``bufferSize`` (what pauses its producer).

    0 for transports that are not Twisted TCP connections.
    """
    try:
        return len(transport.dataBuffer) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return 0


def plain_tcp(transport: Any) -> bool:
    """Whether ``transport`` is a Twisted TCP connection whose socket may be written directly."""
    return bool(
        isinstance(transport, tcp.Connection)
        # Not UNIX sockets that pass file descriptors along with their bytes.
        and type(transport).writeSomeData is tcp.Connection.writeSomeData
        and not getattr(transport, "TLS", False)
    )


def _direct(transport: Any) -> bool:
    """Whether ``transport`` is a plain TCP connection with nothing queued, open for writing."""
    return bool(
        plain_tcp(transport)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._writeDisconnecting
        and not transport._aborting
        and not transport.dataBuffer
        and transport._tempDataLen == 0
    )


def queue(transport: Any, chunks: Sequence[bytes]) -> None:
    """Queue ``chunks`` on ``transport`` the usual way (``write`` for one: test doubles
    may implement only that)."""
    if len(chunks) == 1:
        transport.write(chunks[0])
    else:
        transport.writeSequence(chunks)


def write_through(transport: Any, chunks: Sequence[bytes]) -> int:
    """Write ``chunks`` in order; hand them to the kernel now if nothing is queued.

    Twisted's ``write`` only queues, and sends on the next reactor turn (after
    registering for writability).  When the transport queues nothing, the
    chunks are sent at once (one ``send``/``sendmsg``), and only what the
    kernel does not take is queued with ``writeSequence``: order is kept, and
    the transport pauses its producer exactly as if everything had been queued
    and the kernel had then taken its part.  Returns the bytes sent at once.
    """
    if not chunks:
        return 0
    if not _direct(transport):
        queue(transport, chunks)
        return 0
    sock = transport.socket
    try:
        sent: int = sock.send(chunks[0]) if len(chunks) == 1 else sock.sendmsg(chunks)
    except OSError as e:
        if e.errno not in _AGAIN:
            # Let Twisted meet the error on its own write, and close as it does.
            queue(transport, chunks)
            return 0
        sent = 0
    rest = []
    skip = sent
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        rest.append(chunk[skip:] if skip else chunk)
        skip = 0
    if rest:
        queue(transport, rest)
    return sent


class _SizedReads:
    """Mixed into a TCP connection's class: reads ``readSize`` bytes, not ``bufferSize``."""

    readSize: int

    def doRead(self: Any) -> Any:
        try:
            data = self.socket.recv(self.readSize)
        except OSError as se:
            if se.args[0] in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(data)


_sized_classes: dict[type, type] = {}


def set_read_size(transport: Any, size: int) -> bool:
    """Make a TCP connection read up to ``size`` bytes at once, apart from its ``bufferSize``.

    Twisted reads ``bufferSize`` bytes, which is also where the transport pauses
    its producer; this keeps ``bufferSize`` for the latter.  The connection's
    class is swapped for a subclass (no per-connection closure, so no cycle).
    Returns False, changing nothing, for other transports (TLS, UNIX, tests' doubles).
    """
    cls = type(transport)
    if (
        not issubclass(cls, tcp.Connection)
        or getattr(transport, "TLS", False)
        or cls.doRead not in (tcp.Connection.doRead, _SizedReads.doRead)
    ):
        return False
    if not issubclass(cls, _SizedReads):
        sized = _sized_classes.get(cls)
        if sized is None:
            sized = _sized_classes[cls] = type(cls.__name__, (_SizedReads, cls), {})
        transport.__class__ = sized
    transport.readSize = size
    return True


# Relies on Autobahn's ``WebSocketProtocol`` parser state: ``data`` (the bytes it
# holds), ``current_frame`` (None between frames; ``length``) and
# ``current_frame_masker.pointer()`` (payload bytes of the frame handed over).

#: Payloads from this size are handed to Autobahn apart from their header.
_LARGE_PAYLOAD = 1024


def _header_size(head: bytes) -> int:
    """Size of the WebSocket frame header that starts ``head`` (at least 2 bytes)."""
    second = head[1]
    size = 2 + (4 if second & 0x80 else 0)
    length = second & 0x7F
    if length == 126:
        size += 2
    elif length == 127:
        size += 8
    return size


def _payload_size(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length


def feed_frames(protocol: Any, data: bytes, feed: Any) -> None:
    """Hand ``data`` to Autobahn's parser (``feed``) cut at frame boundaries.

    Autobahn re-slices its whole buffer for every frame it parses
    (``self.data = self.data[i:]``): a read holding many frames is copied over
    and over.  Fed one frame at a time, and a large payload apart from its
    header, its buffer is empty or one piece, and slicing it whole costs
    nothing.  Autobahn still parses and checks every frame; this only decides
    where to cut.  Outside an open WebSocket, ``data`` is fed whole.
    """
    end = len(data)
    if protocol.state != protocol.STATE_OPEN:
        feed(data)
        return
    pos = 0
    while pos < end:
        frame = protocol.current_frame
        if frame is not None:
            take = frame.length - protocol.current_frame_masker.pointer()
        else:
            held: bytes = protocol.data
            head = held + data[pos : pos + 14 - len(held)] if held else data[pos : pos + 14]
            if len(head) < 2 or len(head) < _header_size(head):
                take = end - pos  # not a whole header yet: Autobahn keeps it
            else:
                size = _header_size(head)
                payload = _payload_size(head)
                take = size - len(held)
                if payload < _LARGE_PAYLOAD:
                    take += payload  # small frames go whole
        if take <= 0 or (pos == 0 and take >= end):
            feed(data[pos:] if pos else data)
            return
        feed(data[pos : pos + take])
        pos += take
        if protocol.state != protocol.STATE_OPEN:
            if pos < end:
                feed(data[pos:])
            return
