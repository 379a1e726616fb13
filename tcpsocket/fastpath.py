"""Writes that reach the kernel in the same reactor turn, one system call per read.

Outside a batch, :func:`write` sends at once when the transport queues nothing
(:func:`tcpsocket._private.write_through`).  While a session handles one read
of its client (:func:`batch`), the writes it makes to any transport are
gathered, and each transport gets them in one ``sendmsg`` when the read is
handled: pipelined requests keep their batching.  While several sockets of a
session read in bulk, their DATA of one reactor turn is gathered the same way
(:func:`gather_this_turn`, sent when the reactor next runs its due calls).  A
transport's gathered bytes never exceed its ``bufferSize``.  Writes that only
add up past it are written through at once, as without the batch: the
transport pauses its producer only for what the kernel does not take.  A write
over ``bufferSize`` by itself goes to the transport's buffer, which pauses its
producer (a ``send`` over the high-water mark answers false, and DRAIN
follows, as clients expect).  ``send`` and DRAIN stay exact.  Readers run on
the reactor thread only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from autobahn.websocket.xormasker import create_xor_masker  # type: ignore[attr-defined]
from twisted.internet.interfaces import IReactorTime

from tcpsocket._private import buffered, plain_tcp, queue, write_through

__all__ = ["batch", "begin", "discard", "end", "flush", "gather_this_turn", "unmask", "write"]

#: Below this, :func:`unmask` XORs through Python integers; above, Autobahn's NVX.
SMALL_PAYLOAD = 1024


class _Pending:
    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0


class _Batch:
    def __init__(self) -> None:
        self.depth = 0
        # Insertion-ordered: transports are flushed in the order they were first written.
        self.pending: dict[Any, _Pending] = {}


_batch = _Batch()


def write(transport: Any, chunks: Sequence[bytes]) -> None:
    """Write ``chunks`` to ``transport`` in order (gathered while a batch is open)."""
    if not _batch.depth:
        write_through(transport, chunks)
        return
    pending = _batch.pending.get(transport)
    if pending is None:
        if not plain_tcp(transport) or buffered(transport):
            # TLS, UNIX, test doubles: their own buffering is the batch; and behind
            # what a transport queues already, Twisted's own buffering is the batch.
            queue(transport, chunks)
            return
        pending = _batch.pending[transport] = _Pending()
    size = len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))
    limit = getattr(transport, "bufferSize", 0)
    if pending.size + size <= limit:
        pending.chunks.extend(chunks)
        pending.size += size
        return
    del _batch.pending[transport]
    if size > limit:
        # Over the buffer size by itself: the transport pauses its producer for it.
        write_through(transport, pending.chunks)
        queue(transport, chunks)
    else:
        # Only together past it: the kernel takes what it can, as without the batch.
        write_through(transport, [*pending.chunks, *chunks])


def flush(transport: Any) -> None:
    """Hand what the open batch gathered for ``transport`` to it now.

    Called before anything else writes to or closes ``transport``, to keep the order.
    """
    pending = _batch.pending.pop(transport, None)
    if pending is not None:
        write_through(transport, pending.chunks)


def discard(transport: Any) -> int:
    """Drop what the open batch gathered for ``transport`` (it is aborted); return its size."""
    pending = _batch.pending.pop(transport, None)
    return 0 if pending is None else pending.size


def begin() -> None:
    """Open a batch (batches nest); :func:`end` must follow, even on an exception."""
    _batch.depth += 1


def end() -> None:
    """Close a batch: when it is the outermost, send what each transport gathered."""
    _batch.depth -= 1
    if not _batch.depth and _batch.pending:
        pending, _batch.pending = _batch.pending, {}
        for transport, gathered in pending.items():
            write_through(transport, gathered.chunks)


def gather_this_turn(clock: IReactorTime) -> None:
    """Gather writes until ``clock`` runs its due calls (the reactor's next turn), unless a
    batch is open already: what several connections' reads in one turn write goes out together.
    """
    if not _batch.depth:
        begin()
        clock.callLater(0, end)


@contextmanager
def batch() -> Iterator[None]:
    """Gather writes until the outermost batch ends, then send each transport's at once."""
    begin()
    try:
        yield
    finally:
        end()


def unmask(payload: bytes, mask: bytes, offset: int) -> bytes:
    """Unmask ``payload``, the part of a client frame that starts ``offset`` bytes into it.

    Autobahn builds a native masker for every incoming frame (an import, two
    allocations and a copy each time): most of the cost of a small frame.
    Small payloads are XORed as integers instead; large ones still go through
    Autobahn's native masker, which is faster per byte.
    """
    size = len(payload)
    shift = offset & 3
    key = mask[shift:] + mask[:shift]
    if size >= SMALL_PAYLOAD:
        return bytes(create_xor_masker(key, size).process(payload))
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        size, "little"
    )
