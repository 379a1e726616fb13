"""Whole small messages taken around Autobahn's frame machinery (``_private.feed_frames``
with ``unmask``) behave exactly as through Autobahn.

Each case feeds the same client bytes, after a real opening handshake, to three
server protocols: Autobahn alone (``_dataReceived``, Autobahn unmasking), and
``feed_frames`` without and with the fast path (the session's unmasking, as the
daemon does).  All must deliver the same messages and close codes, write the same
bytes and end in the same parser state, whole and cut into two reads at many
offsets; the fast path must also count the same traffic as ``feed_frames`` without
it.  (Fed a frame at a time, Autobahn does not count the wire octets that follow a
frame after which the connection failed: ``feed_frames`` did so before the fast path.)
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket import _private, fastpath
from tests.session_helpers import pattern

MASK = b"\x9a\x01\xff\x37"

HANDSHAKE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: localhost\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def frame(
    payload: bytes,
    opcode: int = 2,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    long_form: bool = False,
) -> bytes:
    """A client frame; ``long_form`` writes a short length in 16 bits (not minimal)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126 and not long_form:
        head = struct.pack(">BB", first, bit | length)
    elif length < 65536:
        head = struct.pack(">BBH", first, bit | 126, length)
    else:
        head = struct.pack(">BBQ", first, bit | 127, length)
    if not masked:
        return head + payload
    return head + MASK + fastpath.unmask(payload, MASK, 0)


class Recorder(WebSocketServerProtocol):
    """Records what Autobahn hands over; unmasks in ``onFrameData`` like the session
    when Autobahn does not."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.parsed = 0

    def processData(self) -> bool:
        self.parsed += 1
        result: bool = super().processData()
        return result

    def onFrameData(self, payload: bytes) -> bool | None:
        mask: Any = self.current_frame.mask
        if not self.applyMask and mask and payload:
            offset = self.current_frame_masker.pointer() - len(payload)
            payload = fastpath.unmask(payload, mask, offset)
        result: bool | None = super().onFrameData(payload)
        return result

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.events.append(("message", payload, isBinary))
        if payload == b"close me":
            self.sendClose(4000, "asked")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.events.append(("close", wasClean, code, reason))


class Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None  # Autobahn unregisters when it drops the connection


def opened(fast: bool, **options: Any) -> tuple[Recorder, StringTransport]:
    """A server protocol after its opening handshake; ``fast``: it unmasks itself."""
    factory = WebSocketServerFactory("ws://localhost")
    factory.protocol = Recorder
    factory.setProtocolOptions(applyMask=not fast, failByDrop=False, **options)
    _private.use_reactor_timers(factory, Clock())
    protocol: Recorder = factory.buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    protocol._dataReceived(HANDSHAKE)
    assert protocol.state == protocol.STATE_OPEN, transport.value()
    transport.clear()
    return protocol, transport


def state(protocol: Recorder, transport: StringTransport) -> dict[str, Any]:
    stats = protocol.trafficStats
    return {
        "events": protocol.events,
        "written": transport.value(),
        "disconnecting": transport.disconnecting,
        "state": protocol.state,
        "held": protocol.data,
        "in frame": protocol.current_frame is not None,
        "inside message": protocol.inside_message,
        "failed": protocol.failedByMe,
        "stats": {
            name: getattr(stats, name)
            for name in (
                "incomingOctetsWireLevel",
                "incomingOctetsWebSocketLevel",
                "incomingOctetsAppLevel",
                "incomingWebSocketFrames",
                "incomingWebSocketMessages",
            )
        },
    }


def through_autobahn(reads: list[bytes], **options: Any) -> dict[str, Any]:
    protocol, transport = opened(fast=False, **options)
    for data in reads:
        protocol._dataReceived(data)
    return state(protocol, transport)


def fed(reads: list[bytes], fast: bool = True, **options: Any) -> tuple[dict[str, Any], int]:
    """The state after ``reads`` through ``feed_frames`` (with the fast path if ``fast``),
    and how often Autobahn parsed."""
    protocol, transport = opened(fast=True, **options)
    for data in reads:
        _private.feed_frames(protocol, data, fastpath.unmask if fast else None)
    return state(protocol, transport), protocol.parsed


def close_code(written: bytes) -> int:
    """The code of the close frame the server wrote (its only frame here)."""
    assert written[0] == 0x88, written
    code: int = struct.unpack(">H", written[2:4])[0]
    return code


def cuts(data: bytes) -> list[list[bytes]]:
    """``data`` whole, and cut in two at every offset of its first and last 40 bytes and
    at every 37th offset between."""
    offsets = sorted(
        {*range(1, min(40, len(data))), *range(40, len(data) - 40, 37)}
        | {*range(max(1, len(data) - 40), len(data))}
    )
    return [[data]] + [[data[:i], data[i:]] for i in offsets]


class WholeMessageTests(SynchronousTestCase):
    def same(self, data: bytes, **options: Any) -> int:
        """Check ``data`` whole and cut; return how often Autobahn parsed it whole."""
        parsed_whole = -1
        for reads in cuts(data):
            where = [len(r) for r in reads]
            expected = through_autobahn(reads, **options)
            before, _ = fed(reads, fast=False, **options)
            got, parsed = fed(reads, **options)
            self.assertEqual(got, before, where)
            if got["state"] != WebSocketServerProtocol.STATE_OPEN:
                for one in (got, expected):
                    del one["stats"]["incomingOctetsWireLevel"]
            self.assertEqual(got, expected, where)
            if len(reads) == 1:
                parsed_whole = parsed
        return parsed_whole

    def test_small_binary_messages_skip_the_parser(self) -> None:
        for size in (0, 1, 3, 4, 64, 125, 126, 127, 500, 1023):
            data = frame(pattern(size, seed=size))
            self.assertEqual(self.same(data), 0, size)
        self.assertEqual(self.same(b"".join(frame(pattern(n, seed=n)) for n in range(20))), 0)

    def test_the_fast_path_hands_over_the_unmasked_payload(self) -> None:
        got, parsed = fed([frame(b"hello") + frame(b"") + frame(pattern(300))])
        self.assertEqual(parsed, 0)
        self.assertEqual(
            got["events"],
            [("message", b"hello", True), ("message", b"", True), ("message", pattern(300), True)],
        )
        self.assertEqual(got["stats"]["incomingWebSocketMessages"], 3)

    def test_large_frames_go_to_autobahn(self) -> None:
        self.assertGreater(self.same(frame(pattern(1024)) + frame(b"after")), 0)
        self.assertGreater(self.same(frame(pattern(70_000))), 0)

    def test_fragmented_messages_and_control_frames_between(self) -> None:
        ping = frame(b"ping!", opcode=9)
        data = (
            frame(b"one", fin=False)
            + ping
            + frame(b"two", opcode=0, fin=False)
            + frame(b"", opcode=0, fin=False)
            + frame(b"three", opcode=0)
            + frame(b"whole")
        )
        self.assertGreater(self.same(data), 0)
        got, _ = fed([data])
        self.assertEqual(
            got["events"], [("message", b"onetwothree", True), ("message", b"whole", True)]
        )
        self.assertIn(b"\x8a\x05ping!", got["written"])  # the pong

    def test_an_unfragmented_frame_inside_a_fragmented_message_is_a_protocol_error(self) -> None:
        self.same(frame(b"one", fin=False) + frame(b"two") + frame(b"three"))
        got, _ = fed([frame(b"one", fin=False) + frame(b"two")])
        self.assertEqual(close_code(got["written"]), 1002)

    def test_rsv_bits_reserved_opcodes_and_text(self) -> None:
        for rsv in range(1, 8):
            self.same(frame(b"data", rsv=rsv) + frame(b"more"))
        for opcode in (3, 7, 11, 15):
            self.same(frame(b"data", opcode=opcode))
        self.same(frame("text é".encode(), opcode=1) + frame(b"\xff\xfe", opcode=1))
        got, _ = fed([frame(b"data", rsv=4)])
        self.assertEqual(close_code(got["written"]), 1002)

    def test_unmasked_client_frames_are_refused(self) -> None:
        self.same(frame(b"data", masked=False) + frame(b"more"))
        got, _ = fed([frame(b"data", masked=False)])
        self.assertEqual(close_code(got["written"]), 1002)
        self.assertEqual(got["events"], [])

    def test_length_not_in_minimal_form_is_refused(self) -> None:
        self.same(frame(b"short", long_form=True) + frame(b"more"))
        got, _ = fed([frame(b"short", long_form=True)])
        self.assertEqual(close_code(got["written"]), 1002)

    def test_over_the_size_limits(self) -> None:
        for options in (
            {"maxMessagePayloadSize": 100},
            {"maxFramePayloadSize": 100},
            {"maxMessagePayloadSize": 100, "maxFramePayloadSize": 100},
        ):
            self.same(frame(pattern(100)) + frame(pattern(101)) + frame(b"after"), **options)
            got, _ = fed([frame(pattern(101))], **options)
            self.assertEqual(close_code(got["written"]), 1009, options)
            self.assertEqual(got["events"], [], options)

    def test_after_a_close_the_rest_goes_to_autobahn(self) -> None:
        data = frame(b"close me") + frame(b"late") + frame(b"", opcode=8)
        self.same(data)
        got, _ = fed([data])
        # Autobahn still delivers what arrives while it closes.
        self.assertEqual(
            got["events"], [("message", b"close me", True), ("message", b"late", True)]
        )
        self.assertEqual(close_code(got["written"]), 4000)
        self.same(frame(struct.pack(">H", 1000), opcode=8) + frame(b"after the close"))

    def test_a_ping_outstanding_is_answered_by_any_frame(self) -> None:
        # Autobahn cancels its ping timeout on any data frame: it parses such frames.
        for fast in (False, True):
            protocol, _ = opened(fast, autoPingInterval=10, autoPingTimeout=5)
            protocol._sendAutoPing()
            self.assertIsNotNone(protocol.autoPingTimeoutCall)
            if fast:
                _private.feed_frames(protocol, frame(b"data"), fastpath.unmask)
                self.assertGreater(protocol.parsed, 0)
            else:
                protocol._dataReceived(frame(b"data"))
            self.assertIsNone(protocol.autoPingTimeoutCall)
            self.assertEqual(protocol.events, [("message", b"data", True)])

    def test_message_listeners_are_fired(self) -> None:
        heard: list[bytes] = []
        protocol, _ = opened(fast=True)
        protocol.on("message", lambda payload, is_binary: heard.append(payload))
        _private.feed_frames(protocol, frame(b"data"), fastpath.unmask)
        self.assertEqual(heard, [b"data"])
        self.assertEqual(protocol.events, [("message", b"data", True)])

    def test_frame_logging_sees_every_frame(self) -> None:
        protocol, _ = opened(fast=True)
        protocol.logFrames = True
        logged: list[Any] = []
        protocol.logRxFrame = lambda header, payload: logged.append(header.length)  # type: ignore[method-assign]
        _private.feed_frames(protocol, frame(b"data"), fastpath.unmask)
        self.assertEqual(logged, [4])
        self.assertEqual(protocol.events, [("message", b"data", True)])

    def test_without_unmask_every_frame_goes_to_autobahn(self) -> None:
        protocol, _ = opened(fast=True)
        _private.feed_frames(protocol, frame(b"data") + frame(b"more"))
        self.assertEqual(protocol.parsed, 4)  # a header and a payload each
        self.assertEqual(protocol.events, [("message", b"data", True), ("message", b"more", True)])
