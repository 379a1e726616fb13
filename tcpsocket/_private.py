"""Every use of Twisted's and Autobahn's private state, in one place.

Each function here reads or writes something that Twisted or Autobahn does
not promise to keep; ``tests/test_private_canaries.py`` has one canary per
function that fails loudly when a new release changes it, and ``setup.py``
bounds the versions they were checked with.  Nothing here imports a server
module (``twisted.web``, Autobahn's server), so :mod:`tcpsocket.client` can
use it.
"""

from __future__ import annotations

import errno
import struct
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.internet import main, tcp
from twisted.internet._resolver import GAIResolver  # the public resolver, on a pool of ours
from twisted.internet.interfaces import IDelayedCall
from twisted.python import log

__all__ = [
    "GAIResolver",
    "ReadSizer",
    "binary_frame_head",
    "buffered",
    "cancel_autobahn_timers",
    "client_tls_for",
    "dispatch_without_log_context",
    "drop_autobahn_futures",
    "drop_message_data",
    "feed_frames",
    "option_handlers",
    "plain_tcp",
    "queue",
    "raise_listen_errors",
    "record_verify_errors",
    "request_has_body",
    "set_buffer_size",
    "set_read_size",
    "transport_unsent",
    "trust_root",
    "use_reactor_timers",
    "write_through",
]


# -- Autobahn ------------------------------------------------------------------


class _Timer:
    """A delayed call whose ``cancel()`` may be called again, or after it ran (as txaio's)."""

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def active(self) -> bool:
        return self._call.active()

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ReactorTimer:
    """What Autobahn expects of ``factory._batched_timer``."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Timer:
        return _Timer(self._reactor.callLater(delay, func, *args, **kw))


def use_reactor_timers(factory: Any, reactor: Any) -> None:
    """Make an Autobahn WebSocket factory schedule its timers on ``reactor``.

    Autobahn asks its factories for ``_batched_timer.call_later``; its own
    batches timers per 200 ms bucket on the global reactor, and leaves
    cancelled buckets armed.  These are exact, cancel cleanly, and follow the
    reactor (or test clock) the factory was given.
    """
    factory._batched_timer = ReactorTimer(reactor)


#: Autobahn's timers of a connection, which it leaves armed when the peer drops it.
AUTOBAHN_TIMERS = (
    "closeHandshakeTimeoutCall",
    "openHandshakeTimeoutCall",
    "autoPingPendingCall",
    "autoPingTimeoutCall",
)


def cancel_autobahn_timers(protocol: Any) -> None:
    """Cancel and forget Autobahn's own timers of ``protocol``."""
    for name in AUTOBAHN_TIMERS:
        timer = getattr(protocol, name, None)
        if timer is not None and timer.active():
            timer.cancel()
        setattr(protocol, name, None)


def drop_autobahn_futures(protocol: Any) -> None:
    """Break the cycle between a protocol and the futures Autobahn gives it as result."""
    protocol.is_open = protocol.is_closed = None


def drop_message_data(protocol: Any) -> None:
    """Forget the fragments Autobahn collected of the message being received."""
    protocol.message_data = []


_FRAME_7 = struct.Struct(">BB")
_FRAME_16 = struct.Struct(">BBH")
_FRAME_64 = struct.Struct(">BBQ")


def binary_frame_head(length: int) -> bytes:
    """The header of an unmasked, unfragmented binary frame of ``length`` payload bytes:
    what Autobahn's ``sendMessage`` writes for a server without extensions."""
    if length < 126:
        return _FRAME_7.pack(0x82, length)
    if length < 65536:
        return _FRAME_16.pack(0x82, 126, length)
    return _FRAME_64.pack(0x82, 127, length)


# -- Twisted -------------------------------------------------------------------


def _innermost(transport: Any) -> Any:
    """The transport under protocol wrappers such as TLS (``TLSMemoryBIOProtocol``)."""
    from twisted.protocols.policies import ProtocolWrapper

    while isinstance(transport, ProtocolWrapper) and transport.transport is not None:
        transport = transport.transport
    return transport


def set_buffer_size(transport: Any, size: int) -> None:
    """Make ``transport`` pause its producer above ``size`` unsent bytes, and read as much
    at once.

    ``bufferSize`` is an attribute of Twisted's ``FileDescriptor``; on a TLS
    wrapper (a ``ProtocolWrapper``) it would be silently lost, so it is set on
    the socket transport under it too.
    """
    transport.bufferSize = size
    inner = _innermost(transport)
    if inner is not transport:
        inner.bufferSize = size


def transport_unsent(transport: Any) -> int:
    """Bytes a Twisted TCP transport still holds (not yet taken by the kernel).

    Reads ``FileDescriptor`` internals (0 for other transports).
    """
    try:
        return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)
    except (AttributeError, TypeError):
        return 0


def request_has_body(channel: Any) -> bool:
    """Whether the request whose headers an ``HTTPChannel`` just parsed announces a body."""
    return channel._transferDecoder is not None and channel.length != 0


def raise_listen_errors(service: Any) -> None:
    """Make a ``StreamServerEndpointService`` fail ``startService`` when it cannot listen
    (as ``strports.service`` does)."""
    service._raiseSynchronously = True


def option_handlers(options: Any) -> dict[str, Any]:
    """The parameter handlers of a ``twisted.python.usage.Options``, by long name."""
    handlers: dict[str, Any] = options._dispatch
    return handlers


class SystemTrustAndFile:
    """An ``IOpenSSLTrustRoot``: the system's trust store, plus the CAs of a PEM file.

    Twisted's trust roots (``platformTrust``, ``trustRootFromCertificates``)
    trust one or the other; this one does both.  The interface's one method,
    ``_addCACertsToContext``, is private to Twisted.
    """

    def __init__(self, ca_file: str | None) -> None:
        self.ca_file = ca_file

    def _addCACertsToContext(self, context: Any) -> None:
        context.set_default_verify_paths()
        if self.ca_file is not None:
            context.load_verify_locations(self.ca_file)


def trust_root(ca_file: str | None) -> Any:
    """:class:`SystemTrustAndFile` as the ``IOpenSSLTrustRoot`` it provides."""
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from zope.interface import directlyProvides

    root = SystemTrustAndFile(ca_file)
    directlyProvides(root, IOpenSSLTrustRoot)
    return root


def record_verify_errors(
    creator: Any, tls_protocol: Any, connection: Any, record: Callable[[int], None]
) -> None:
    """Make ``connection`` (made by ``creator``, an ``optionsForClientTLS`` result) call
    ``record`` with each OpenSSL X509_V_ERR code of the peer's chain, verifying exactly as
    Twisted does (its ``_verifyCB``, hostname check included).

    pyOpenSSL has no ``get_verify_result``, and the verify callback is the only place
    the reason (expired, unknown authority...) is known.
    """
    from OpenSSL import SSL
    from twisted.internet._sslverify import _verifyCB

    twisted_callback = _verifyCB(tls_protocol, creator._hostnameIsDnsName, creator._hostnameASCII)

    def verify(conn: Any, certificate: Any, code: int, depth: int, ok: int) -> bool:
        if not ok:
            record(code)
        return bool(twisted_callback(conn, certificate, code, depth, bool(ok)))

    connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)


def client_tls_for(name: str, options: Any) -> Any:
    """Twisted's client TLS settings for ``name`` over shared ``CertificateOptions``
    (whose one OpenSSL context every connection then uses).

    ``optionsForClientTLS`` makes a new context per call, and each loads the whole
    system trust store (about 1 MiB per connection); ``ClientTLSOptions`` itself,
    which adds SNI and the host name check to a context, is not exported.
    """
    from twisted.internet._sslverify import ClientTLSOptions

    return ClientTLSOptions(options._makeTLSConnection, name)


# -- data path (issue 11: write-through, read size) ------------------------------------
#
# Relies on ``twisted.internet.tcp.Connection``: its ``socket``, ``connected``,
# ``disconnecting``, ``_writeDisconnected``/``_writeDisconnecting``, ``TLS``, its
# write buffers ``dataBuffer``/``offset``/``_tempDataLen``, and ``doRead`` reading
# ``bufferSize`` bytes and handing them to ``_dataReceived``.

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def buffered(transport: Any) -> int:
    """Bytes a TCP transport counts against its ``bufferSize`` (what pauses its producer).

    0 for transports that are not Twisted TCP connections.
    """
    try:
        return len(transport.dataBuffer) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return 0


#: Per transport class: whether its instances are TCP connections whose socket may be
#: written directly (without TLS started on them).
_plain_classes: dict[type, bool] = {}


def plain_tcp(transport: Any) -> bool:
    """Whether ``transport`` is a Twisted TCP connection whose socket may be written directly."""
    cls = type(transport)
    plain = _plain_classes.get(cls)
    if plain is None:
        plain = _plain_classes[cls] = bool(
            issubclass(cls, tcp.Connection)
            # Not UNIX sockets that pass file descriptors along with their bytes.
            and cls.writeSomeData is tcp.Connection.writeSomeData
        )
    return plain and not transport.TLS


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
        if len(chunks) == 1:
            data = chunks[0]
            sent: int = sock.send(data)
            if sent == len(data):
                return sent
        else:
            sent = sock.sendmsg(chunks)
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


class ReadSizer(Protocol):
    """Says how many bytes a connection reads next (see :func:`set_read_size`)."""

    def next_read_size(self) -> int: ...


class _SizedReads:
    """Mixed into a TCP connection's class: reads ``readSize`` bytes, not ``bufferSize``.

    A ``readSize`` of 0 asks ``readSizer`` before each read.
    """

    readSize: int
    readSizer: Callable[[], ReadSizer | None]

    def doRead(self: Any) -> Any:
        try:
            data = self.socket.recv(self.readSize or self.readSizer().next_read_size())
        except OSError as se:
            if se.args[0] in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(data)


_sized_classes: dict[type, type] = {}


def set_read_size(transport: Any, size: int | ReadSizer) -> bool:
    """Make a TCP connection read up to ``size`` bytes at once, apart from its ``bufferSize``.

    Twisted reads ``bufferSize`` bytes, which is also where the transport pauses
    its producer; this keeps ``bufferSize`` for the latter.  ``size`` may also
    be a :class:`ReadSizer` (the connection's protocol), asked before each read;
    the transport keeps only a weak reference to it (no cycle).  The
    connection's class is swapped for a subclass (no per-connection closure).
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
    if isinstance(size, int):
        transport.readSize = size
    else:
        transport.readSize = 0
        transport.readSizer = weakref.ref(size)
    return True


# Relies on Autobahn's ``WebSocketProtocol`` parser state: ``data`` (the bytes it
# holds), ``current_frame`` (None between frames; ``length``),
# ``current_frame_masker.pointer()`` (payload bytes of the frame handed over) and
# ``inside_message``; and, for whole messages (:func:`_take_whole_message`), on the
# options and state its parser consults for such a frame: ``failedByMe``,
# ``logOctets``, ``logFrames``, ``trackedTimings``, ``autoPingTimeoutCall``,
# ``_listeners`` (of its ``ObservableMixin``), ``maxMessagePayloadSize``,
# ``maxFramePayloadSize`` and the ``trafficStats`` counters.

#: Payloads from this size are handed to Autobahn apart from their header.
_LARGE_PAYLOAD = 1024

#: The first byte of an unfragmented binary frame without RSV bits (FIN, opcode 2).
_FIN_BINARY = 0x82


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


def _take_whole_message(protocol: Any, wire: int, length: int) -> bool:
    """Whether Autobahn, handed a whole unfragmented masked binary frame of ``length``
    payload bytes (``wire`` bytes with its header) between messages, would only count
    it and call ``onMessage``; if so, count it in ``trafficStats`` as Autobahn does.

    Its parser does more when it logs octets or frames, tracks timings, has a
    ping outstanding (the frame cancels its timeout), has ``message`` listeners
    (``fire``), has failed the connection, or when the frame is over a size limit.
    """
    if (
        protocol.inside_message
        or protocol.failedByMe
        or protocol.logOctets
        or protocol.logFrames
        or protocol.trackedTimings
        or protocol.autoPingTimeoutCall
        or protocol._listeners is not None
        or 0 < protocol.maxMessagePayloadSize < length
        or 0 < protocol.maxFramePayloadSize < length
    ):
        return False
    stats = protocol.trafficStats
    stats.incomingOctetsWireLevel += wire
    stats.incomingOctetsWebSocketLevel += length
    stats.incomingOctetsAppLevel += length
    stats.incomingWebSocketFrames += 1
    stats.incomingWebSocketMessages += 1
    return True


def _small_frame(data: bytes, pos: int) -> tuple[int, int]:
    """Where the payload of the masked frame at ``pos`` of ``data`` starts, and its size,
    if the frame is masked and its payload under ``_LARGE_PAYLOAD`` in minimal encoding;
    else (0, 0).  The frame may be cut short: the caller checks that it is all there."""
    rest = len(data) - pos
    if rest < 6:
        return 0, 0
    second = data[pos + 1]
    if 0x80 <= second < 0xFE:  # masked, a 7-bit length
        return pos + 6, second & 0x7F
    if second == 0xFE and rest >= 8:  # masked, a 16-bit length
        length = (data[pos + 2] << 8) | data[pos + 3]
        if 126 <= length < _LARGE_PAYLOAD:
            return pos + 8, length
    return 0, 0


def feed_frames(
    protocol: Any, data: bytes, unmask: Callable[[bytes, bytes, int], bytes] | None = None
) -> None:
    """Hand ``data`` to Autobahn's ``_dataReceived``, cut at frame boundaries.

    Autobahn's own ``dataReceived`` formats a debug line for every read, even
    when debug logging is off: this goes around it.

    Autobahn re-slices its whole buffer for every frame it parses
    (``self.data = self.data[i:]``): a read holding many frames is copied over
    and over.  Fed one frame at a time, and a large payload apart from its
    header, its buffer is empty or one piece, and slicing it whole costs
    nothing.  Autobahn still parses and checks every frame; this only decides
    where to cut.  Outside an open WebSocket, ``data`` is fed whole.

    With ``unmask`` (``unmask(payload, mask, 0)`` gives the payload unmasked), a
    whole message in one small frame (FIN, no RSV bits, binary, masked, under
    1 KiB, arriving between messages and within the size limits) is not parsed
    by Autobahn's frame machinery: it is counted as Autobahn counts it and handed
    to ``protocol._onMessage``, which is all Autobahn would do with it (see
    :func:`_take_whole_message`).  Its ``onMessageBegin``, ``onMessageFrameBegin``
    and ``onFrameData`` are not called for it: a protocol passes ``unmask`` only
    if its own versions of those do nothing else for such a frame.  Every other
    frame, and every frame in any other state, goes to Autobahn as above.
    """
    feed = protocol._dataReceived
    if protocol.state != protocol.STATE_OPEN:
        feed(data)
        return
    end = len(data)
    pos = 0
    while pos < end:
        frame = protocol.current_frame
        if frame is not None:
            take = frame.length - protocol.current_frame_masker.pointer()
        else:
            held: bytes = protocol.data
            if held:
                head = held + data[pos : pos + 14 - len(held)]
            else:
                if unmask is not None and data[pos] == _FIN_BINARY:
                    start, length = _small_frame(data, pos)
                    stop = start + length
                    if start and stop <= end and _take_whole_message(protocol, stop - pos, length):
                        payload = data[start:stop]
                        if length:
                            payload = unmask(payload, data[start - 4 : start], 0)
                        pos = stop
                        protocol._onMessage(payload, True)
                        if protocol.state != protocol.STATE_OPEN:
                            if pos < end:
                                feed(data[pos:])
                            return
                        continue
                head = data[pos : pos + 14]
            if len(head) < 2 or len(head) < _header_size(head):
                take = end - pos  # not a whole header yet: Autobahn keeps it
            else:
                size = _header_size(head)
                payload_size = _payload_size(head)
                take = size - len(held)
                if payload_size < _LARGE_PAYLOAD:
                    take += payload_size  # small frames go whole
        if take <= 0 or (pos == 0 and take >= end):
            feed(data[pos:] if pos else data)
            return
        feed(data[pos : pos + take])
        pos += take
        if protocol.state != protocol.STATE_OPEN:
            if pos < end:
                feed(data[pos:])
            return


# -- Twisted's epoll reactor -----------------------------------------------------
# Relies on ``EPollReactor.doPoll``'s shape (twisted/internet/epollreactor.py): it
# polls ``_poller`` for at most ``len(_selectables)`` events and hands each
# ``(selectable, fd, event)`` to ``_doReadOrWrite`` inside ``log.callWithLogger``;
# and on ``ReactorBase.mainLoop``/``iterate`` calling ``self.doIteration``.


def dispatch_without_log_context(reactor: Any) -> bool:
    """Make Twisted's epoll ``reactor`` hand each ready descriptor to ``_doReadOrWrite``
    with a plain call, not inside ``log.callWithLogger``.

    ``callWithLogger`` calls the descriptor's ``logPrefix()`` and pushes a copied log
    context for every event, so that ``twisted.python.log`` (legacy) lines emitted while
    handling it carry the descriptor as their ``system``: about 16 % of the daemon's
    instructions per echo round trip.  ``twisted.logger`` events, which is all the daemon
    and Autobahn emit, do not use that context.  Everything else is Twisted's: the same
    poll, the same ``_doReadOrWrite``, and an exception that escapes it (a failing
    ``connectionLost``) is logged as ``callWithLogger`` logs it, with the descriptor's
    ``system``, and the loop goes on.  Returns False, changing nothing, for any other
    reactor (another class, or a subclass of ``EPollReactor``).
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    if type(reactor) is not EPollReactor:
        return False
    reactor.doIteration = partial(_poll, reactor)  # type: ignore[method-assign]
    return True


def _poll(reactor: Any, timeout: float | None) -> None:
    try:
        events = reactor._poller.poll(-1 if timeout is None else timeout, len(reactor._selectables))
    except InterruptedError:
        return
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            # Removed while an earlier event of this poll was handled.
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=_system_of(selectable))


def _system_of(selectable: Any) -> str:
    try:
        return str(selectable.logPrefix())
    except Exception:
        return "(buggy logPrefix method)"
