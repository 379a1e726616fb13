"""Property-based fuzzing (hypothesis) of the codec and of a live session.

Codec: random bytes and mutated valid messages never raise anything but
``DecodeError``.  Live session: random sequences of messages (valid requests,
mutated ones, random bytes, text frames) sent on a real WebSocket to a real
daemon never cause an unhandled exception in the logs or a 1011 close, and a
canary session on the same daemon keeps echoing.

The suite runs a few examples.  Run longer with, e.g.::

    TCPSOCKET_FUZZ_EXAMPLES=5000 python3 -m pytest tests/test_fuzz.py -q

(doc/security.md gives the count reached.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.bincode import DecodeError, Reader
from tcpsocket.messages import (
    Core,
    GetService,
    GetServiceResult,
    HasService,
    Kind,
    ObjectRef,
    decode_base,
    decode_core_request,
    decode_core_response,
    decode_handshake,
    encode_ack,
    encode_core_bool_response,
    encode_event,
    encode_get_service_response,
    encode_handshake,
    encode_request,
    encode_response,
    split_request,
)
from tcpsocket.policy import AllowList, Rule
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import (
    Event,
    Method,
    Reply,
    decode_socket_reply,
    decode_socket_request,
    encode_data_event,
    encode_method,
    encode_open,
    encode_open_success,
    encode_reply,
    encode_send,
    send_data,
)
from tests.session_helpers import free_port, manager
from tests.support import TOKEN, Echo, listen_remote, raw_client, start_daemon, wait_until

#: Examples per property; raise it to fuzz longer.
EXAMPLES = int(os.environ.get("TCPSOCKET_FUZZ_EXAMPLES", "0") or 0)
FUZZ = settings(
    max_examples=EXAMPLES or 200,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
LIVE = settings(FUZZ, max_examples=EXAMPLES or 25)
LIVE_EXAMPLES = EXAMPLES or 25

DECODERS: list[Callable[[bytes], Any]] = [
    decode_base,
    lambda data: decode_base(data, strict=False),
    decode_handshake,
    decode_core_request,
    decode_socket_request,
    decode_core_response,
    decode_socket_reply,
]

small = st.integers(min_value=0, max_value=5) | st.integers(min_value=0, max_value=2**32 - 1)
text = st.text(max_size=40)


def get_service_response(result: GetServiceResult, value: int) -> bytes:
    if result is GetServiceResult.INTERNAL_ERROR:
        return encode_get_service_response(result, f"error {value}")
    return encode_get_service_response(result, value)


def core_contents(service: int) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(
            lambda name, right: GetService(name, TCPSOCKET_FINGERPRINT if right else "x").encode(),
            st.sampled_from(["TcpSocketManager", "", "other"]) | text,
            st.booleans(),
        ),
        st.builds(lambda name: HasService(name).encode(), text),
        st.builds(
            lambda op, obj, event: ObjectRef(op, service, obj, event).encode(),
            st.sampled_from(list(Core)[2:]),
            small,
            st.none() | st.sampled_from(list(Event)) | small,
        ),
    )


def socket_contents(port: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    # Opens only ever name 127.0.0.1: no name lookups, no traffic beyond loopback.
    return st.one_of(
        st.builds(lambda p: encode_open("127.0.0.1", p), port),
        st.builds(encode_send, st.binary(max_size=256)),
        st.builds(encode_method, st.sampled_from([m for m in Method if m is not Method.OPEN])),
    )


def requests(port: st.SearchStrategy[int]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.builds(
            lambda obj, req, content: encode_request(0, obj, req, content),
            small,
            small,
            core_contents(1),
        ),
        st.builds(
            lambda service, obj, req, content: encode_request(service, obj, req, content),
            st.integers(0, 3),
            small,
            small,
            socket_contents(port),
        ),
    )


valid_messages = st.one_of(
    requests(st.integers(1, 65535)),
    st.builds(encode_handshake, text),
    st.builds(encode_ack, st.booleans()),
    st.builds(
        encode_response,
        small,
        small,
        small,
        st.one_of(
            st.builds(encode_reply, st.sampled_from(list(Reply)), st.none() | text),
            st.builds(encode_open_success, small),
            st.builds(encode_core_bool_response, st.sampled_from(list(Core)), st.booleans()),
            st.builds(get_service_response, st.sampled_from(list(GetServiceResult)), small),
        ),
    ),
    st.builds(encode_event, small, small, st.builds(encode_data_event, st.binary(max_size=64))),
)


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with bytes flipped, cut, inserted or removed."""
    data = bytearray(draw(messages))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif data:
            del data[min(at, len(data) - 1)]
    return bytes(data)


def decodes_or_decode_error(data: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(data)
        except DecodeError:
            pass


class CodecFuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.binary(max_size=512))
    def test_random_bytes(self, data: bytes) -> None:
        decodes_or_decode_error(data)

    @FUZZ
    @given(mutated(valid_messages))
    def test_mutated_messages(self, data: bytes) -> None:
        decodes_or_decode_error(data)

    @FUZZ
    @given(valid_messages)
    def test_valid_messages_decode(self, data: bytes) -> None:
        decodes_or_decode_error(data)


def read_send(content: bytes) -> bytes | None:
    """The data of a send request, read with :class:`Reader` (None: no valid send)."""
    try:
        reader = Reader(content)
        if reader.u32() != Method.SEND:
            return None
        data = reader.binary()
        reader.finish()
    except DecodeError:
        return None
    return data


class FastDecoderTests(SynchronousTestCase):
    """The fast decoders of requests give what the exact ones give, or step aside."""

    def check(self, data: bytes) -> None:
        fast = split_request(data)
        try:
            message = decode_base(data)
        except DecodeError:
            self.assertIsNone(fast)
        else:
            canonical = message.kind is Kind.REQUEST and data == encode_request(
                message.service, message.object, message.request or 0, bytes(message.content)
            )
            if fast is None:
                self.assertFalse(canonical)
            else:
                self.assertIs(message.kind, Kind.REQUEST)
                service, object_id, request, content = fast
                self.assertEqual(
                    (service, object_id, request, bytes(content)),
                    (message.service, message.object, message.request, bytes(message.content)),
                )
        exact = read_send(data)
        quick = send_data(memoryview(data))
        if quick is None:
            self.assertTrue(exact is None or data != encode_send(exact))
        else:
            self.assertEqual(quick, exact)
            self.assertIs(type(quick), bytes)

    def test_edges(self) -> None:
        for data in (
            b"",
            b"\x01",
            encode_request(1, 2, 3, encode_send(b"x")),
            encode_request(2**32 - 1, 2**32 - 1, 2**64 - 1, encode_send(b"y" * 70_000)),
            encode_request(251, 65536, 250, b""),
            b"\xfd" + b"\x00" * 7 + b"\x01\x01\x00\x01\x00",  # a u64 form of a u32
            b"\xfd" + b"\x01" * 8 + b"\x01\x00\x01\x00",  # a service over 32 bits
            b"\x01\xfd" + b"\x01" * 8 + b"\x00\x01\x00",  # an object over 32 bits
            b"\x01\x01\xfb\x00\x00\x01\x00",  # REQUEST in a long form
            b"\x01\x01\x00\x01\x05ab",  # cut short
            b"\x01\x01\x00\xfe\x00",  # a bad marker
            encode_send(b""),
            encode_send(b"z" * 300),
            encode_send(b"z")[:-1],
            encode_send(b"z") + b"\x00",
            b"\x02\xfb\x00\x01z",  # a long form of a short length
        ):
            self.check(data)
        self.assertIsNotNone(split_request(encode_request(251, 65536, 250, b"")))
        self.assertEqual(send_data(encode_send(b"z" * 300)), b"z" * 300)

    @FUZZ
    @given(st.binary(max_size=512))
    def test_random_bytes(self, data: bytes) -> None:
        self.check(data)

    @FUZZ
    @given(mutated(valid_messages))
    def test_mutated_messages(self, data: bytes) -> None:
        self.check(data)
        self.check(data[3:])

    @FUZZ
    @given(valid_messages)
    def test_valid_messages(self, data: bytes) -> None:
        self.check(data)

    @FUZZ
    @given(st.builds(encode_send, st.binary(max_size=600)) | mutated(socket_contents(small)))
    def test_socket_requests(self, data: bytes) -> None:
        self.check(data)


# -- live session ----------------------------------------------------------


class _Cleanups:
    """What ``tests.support`` helpers expect of a test: ``addCleanup``."""

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def addCleanup(self, function: Callable[..., Any], *args: Any) -> None:
        self._calls.append((function, args))

    async def run(self) -> None:
        while self._calls:
            function, args = self._calls.pop()
            await defer.maybeDeferred(function, *args)


def _loopback_only(reactor_: Any, host: str, port: int, timeout: float) -> Any:
    assert host == "127.0.0.1", host  # the policy lets nothing else through
    return TCP4ClientEndpoint(reactor_, host, port, timeout=timeout)


class LiveHarness:
    """A daemon, an echo remote, and a canary session that must stay healthy."""

    async def start(self) -> None:
        self.cleanups = _Cleanups()
        self.echo_factory, self.echo_port = await listen_remote(self.cleanups, Echo)
        self.closed_port = free_port()
        rules = [
            Rule.parse(f"127.0.0.1:{self.echo_port}"),
            Rule.parse(f"127.0.0.1:{self.closed_port}"),
        ]
        self.site, self.port = await start_daemon(
            self.cleanups,
            policy=AllowList(rules),
            connect=_loopback_only,
            max_sockets_per_session=8,
        )
        self.canary, service = await manager(self.cleanups, self.port)
        self.canary_socket = await self.canary.open_ok(
            service, self.echo_port, events=(Event.DATA,)
        )
        self.canary_service = service
        self.failures: list[LogEvent] = []
        self.sequences = 0
        self.frames = 0
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event: LogEvent) -> None:
        if "log_failure" in event or "internal error" in str(event.get("log_format", "")):
            self.failures.append(event)

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        await self.cleanups.run()

    async def canary_echoes(self, payload: bytes) -> None:
        stream = self.canary.stream(self.canary_service, self.canary_socket)
        before = len(stream.data)
        await self.canary.send(self.canary_service, self.canary_socket, payload)
        await wait_until(lambda: len(stream.data) >= before + len(payload))
        assert bytes(stream.data[before:]) == payload

    async def run(self, authenticate: bool, frames: list[tuple[bool, bytes]]) -> None:
        cleanups = _Cleanups()
        raw = await raw_client(cleanups, self.port)
        codes: list[int | None] = []
        raw.closed.addCallback(lambda result: codes.append(result[0]))
        try:
            if authenticate:
                raw.send(encode_handshake(TOKEN))
                await wait_until(lambda: raw.closed.called or len(raw.messages) > 0)
            for binary, payload in frames:
                if raw.closed.called:
                    break
                raw.sendMessage(payload, isBinary=binary)
            if not raw.closed.called:
                # A marked round trip: whatever the frames caused has happened.
                raw.send(encode_request(0, 0, MARK, HasService("").encode()))
                await wait_until(lambda: raw.closed.called or _answered(raw.messages))
        finally:
            await cleanups.run()
        assert 1011 not in codes, codes
        assert not self.failures, self.failures
        self.sequences += 1
        self.frames += len(frames)
        await self.canary_echoes(b"canary %d" % len(frames))


#: The request id of the round trip that ends each example.
MARK = 2**40 + 1


def _answered(messages: Any) -> bool:
    for message in messages:
        if isinstance(message, bytes):
            try:
                if decode_base(message, strict=False).request == MARK:
                    return True
            except DecodeError:
                pass
    return False


def live_frames(echo_port: int, closed_port: int) -> st.SearchStrategy[list[tuple[bool, bytes]]]:
    """Valid requests, then maybe one bad frame (any bad frame ends a session)."""
    port = st.sampled_from([echo_port, closed_port])
    valid = st.lists(st.tuples(st.just(True), requests(port)), max_size=16)
    junk = st.one_of(
        st.tuples(st.just(True), mutated(requests(port))),
        st.tuples(st.just(True), st.binary(max_size=64)),
        st.tuples(st.just(False), st.binary(max_size=16)),
    )
    return st.builds(lambda v, j: v + j, valid, st.lists(junk, max_size=1))


class LiveSessionFuzzTests(TestCase):
    async def test_random_message_sequences(self) -> None:
        harness = LiveHarness()
        await harness.start()
        self.addCleanup(lambda: defer.ensureDeferred(harness.stop()))

        @LIVE
        @given(
            st.sampled_from([True, True, True, False]),
            live_frames(harness.echo_port, harness.closed_port),
        )
        def one(authenticate: bool, frames: list[tuple[bool, bytes]]) -> None:
            # Hypothesis runs in a thread; each example runs on the reactor.
            blockingCallFromThread(
                reactor, lambda: defer.ensureDeferred(harness.run(authenticate, frames))
            )

        await threads.deferToThread(one)
        if EXAMPLES:
            print(f"live session fuzz: {harness.sequences} sequences, {harness.frames} frames")

    # Trial's default of 120 s would stop a long run (TCPSOCKET_FUZZ_EXAMPLES).
    test_random_message_sequences.timeout = 120 + LIVE_EXAMPLES  # type: ignore[attr-defined]
