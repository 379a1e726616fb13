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

__all__ = ["buffered", "queue", "set_read_size", "write_through"]

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def buffered(transport: Any) -> int:
    """Bytes a TCP transport counts against its ``bufferSize`` (what pauses its producer).

    0 for transports that are not Twisted TCP connections.
    """
    try:
        return len(transport.dataBuffer) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return 0


def _direct(transport: Any) -> bool:
    """Whether ``transport`` is a plain TCP connection with nothing queued, open for writing."""
    return bool(
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport._writeDisconnecting
        and not getattr(transport, "TLS", False)
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
    if not issubclass(cls, tcp.Connection) or getattr(transport, "TLS", False):
        return False
    if not issubclass(cls, _SizedReads):
        sized = _sized_classes.get(cls)
        if sized is None:
            sized = _sized_classes[cls] = type(cls.__name__, (_SizedReads, cls), {})
        transport.__class__ = sized
    transport.readSize = size
    return True
