"""RemoteSocket's state machine, without a network: StringTransport and a Clock."""

from __future__ import annotations

from typing import Any
from unittest import mock

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.fairness import FairShare
from tcpsocket.remote import DETACHED, RemoteSocket, SocketError, SocketOwner, describe_failure
from tcpsocket.services.tcpsocket.messages import Event, Reply, SocketReply, decode_socket_reply
from tests.support import test_config as make_config

HWM = 16


class FakeOwner(SocketOwner):
    """Records what a socket reports to its owner; congestion through a real FairShare."""

    def __init__(self) -> None:
        self.events: list[SocketReply] = []
        self.finished = 0
        self.share = FairShare()

    def send_event(self, socket: RemoteSocket, content: bytes) -> None:
        self.events.append(decode_socket_reply(content))

    def socket_finished(self, socket: RemoteSocket) -> None:
        self.finished += 1
        self.share.forget(socket)

    @property
    def congested(self) -> bool:
        return self.share.congested

    @property
    def is_congested(self) -> bool:
        return self.share.congested

    @is_congested.setter
    def is_congested(self, value: bool) -> None:
        self.share.congested = value

    @property
    def waiting_for_room(self) -> int:
        return len(self.share)

    def wait_for_room(self, socket: RemoteSocket) -> None:
        self.share.wait(socket)

    def stop_waiting(self, socket: RemoteSocket) -> None:
        self.share.forget(socket)

    @property
    def waiting(self) -> list[Any]:
        return list(self.share._waiting)

    def drain(self) -> None:
        """The WebSocket has room again (what its transport tells the FairShare)."""
        self.share.resumeProducing()

    def kinds(self) -> list[Reply]:
        return [e.reply for e in self.events]

    def data(self) -> bytes:
        return b"".join(e.value for e in self.events if isinstance(e.value, bytes))


class FlowTransport(StringTransport):
    """A StringTransport that behaves like a TCP transport towards its producer.

    Like ``FileDescriptor``: ``write`` pauses a streaming producer when more
    than ``bufferSize`` bytes are unsent; :meth:`flush` plays the kernel taking
    bytes, and resumes a paused producer once nothing is left - unless the
    transport is disconnecting without a producer, when it "closes".
    """

    def __init__(self) -> None:
        super().__init__()
        self.bufferSize = 1 << 16
        self.unsent = 0
        self.producer_paused = False
        self.delivered = bytearray()
        self.closes = 0
        self.max_unsent = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        self.max_unsent = max(self.max_unsent, self.unsent)
        if self.producer is not None and self.unsent > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def flush(self, count: int | None = None) -> None:
        """The kernel takes ``count`` bytes (all by default)."""
        count = self.unsent if count is None else min(count, self.unsent)
        written = self.value()
        start = len(self.delivered)
        self.delivered += written[start : start + count]
        self.unsent -= count
        if self.unsent:
            return
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        elif self.disconnecting:
            self.closes += 1


def make(**overrides: Any) -> tuple[RemoteSocket, FlowTransport, FakeOwner, Clock]:
    overrides.setdefault("high_water_mark", HWM)
    overrides.setdefault("max_send_buffer", 4 * HWM)
    clock = Clock()
    owner = FakeOwner()
    socket = RemoteSocket(make_config(**overrides), owner, clock)
    transport = FlowTransport()
    socket.makeConnection(transport)
    return socket, transport, owner, clock


class SendTests(SynchronousTestCase):
    def test_connected(self) -> None:
        socket, transport, _, _ = make()
        self.assertEqual(socket.state, "open")
        self.assertEqual(transport.bufferSize, HWM)
        self.assertIsNotNone(transport.producer)
        self.assertTrue(transport.streaming)

    def test_send_true_under_high_water(self) -> None:
        socket, transport, owner, _ = make()
        self.assertTrue(socket.send(b"a" * HWM))
        self.assertEqual(transport.value(), b"a" * HWM)
        self.assertEqual(socket.queued_upstream, 0)
        self.assertTrue(socket.send(b""))
        self.assertEqual(owner.events, [])

    def test_false_then_one_drain(self) -> None:
        socket, transport, owner, _ = make()
        socket.set_event_enabled(Event.DRAIN, True)
        self.assertFalse(socket.send(b"a" * (HWM + 1)))  # the transport pauses us
        self.assertFalse(socket.send(b"b"))  # queued behind the paused transport
        self.assertEqual(socket.queued_upstream, 1)
        self.assertFalse(socket.send(b"c"))
        self.assertEqual(owner.events, [])
        transport.flush()  # resumes us: the queue goes out, under the mark again
        self.assertEqual(socket.queued_upstream, 0)
        self.assertEqual(owner.kinds(), [Reply.DRAIN_EVENT])
        transport.flush()
        self.assertEqual(owner.kinds(), [Reply.DRAIN_EVENT])
        self.assertIs(owner.events[0].value, True)
        self.assertEqual(bytes(transport.delivered), b"a" * (HWM + 1) + b"bc")
        # Nothing more is owed: later drains send no DRAIN.
        self.assertTrue(socket.send(b"d"))
        transport.flush()
        self.assertEqual(owner.kinds(), [Reply.DRAIN_EVENT])

    def test_drain_once_over_several_pauses(self) -> None:
        socket, transport, owner, _ = make()
        socket.set_event_enabled(Event.DRAIN, True)
        transport.producer.pauseProducing()
        transport.producer_paused = True
        chunks = [bytes([65 + i]) * 10 for i in range(6)]
        answers = [socket.send(chunk) for chunk in chunks]
        self.assertEqual(answers, [False] * 6)
        self.assertEqual(socket.queued_upstream, 60)
        rounds = 0
        while transport.unsent or socket.queued_upstream or transport.producer_paused:
            transport.flush()
            rounds += 1
            self.assertLess(rounds, 20)
        self.assertGreater(rounds, 1)
        self.assertEqual(bytes(transport.delivered), b"".join(chunks))
        self.assertEqual(owner.kinds(), [Reply.DRAIN_EVENT])

    def test_drain_held_until_enabled(self) -> None:
        socket, transport, owner, _ = make()
        self.assertFalse(socket.send(b"a" * (HWM + 1)))
        transport.flush()
        self.assertEqual(owner.events, [])
        socket.set_event_enabled(Event.DRAIN, True)
        self.assertEqual(owner.kinds(), [Reply.DRAIN_EVENT])
        socket.set_event_enabled(Event.DRAIN, True)
        self.assertEqual(owner.kinds(), [Reply.DRAIN_EVENT])

    def test_hard_cap(self) -> None:
        socket, transport, _, _ = make(max_send_buffer=2 * HWM)
        transport.producer.pauseProducing()
        transport.producer_paused = True
        self.assertFalse(socket.send(b"a" * 20))
        self.assertFalse(socket.send(b"b" * 12))  # exactly the cap
        with self.assertRaises(SocketError) as raised:
            socket.send(b"c")
        self.assertIn("send buffer full", str(raised.exception))
        self.assertEqual(socket.queued_upstream, 32)
        self.assertEqual(socket.bytes_sent, 32)
        while transport.unsent or socket.queued_upstream:
            transport.flush()
        self.assertEqual(bytes(transport.delivered), b"a" * 20 + b"b" * 12)

    def test_send_when_not_open(self) -> None:
        socket, _, _, _ = make()
        socket.close()
        with self.assertRaises(SocketError) as raised:
            socket.send(b"x")
        self.assertIn("closing", str(raised.exception))
        socket.connectionLost(Failure(error.ConnectionDone()))
        with self.assertRaises(SocketError) as raised:
            socket.send(b"x")
        self.assertIn("closed", str(raised.exception))


class ReadingTests(SynchronousTestCase):
    def test_suspend_nests(self) -> None:
        socket, transport, _, _ = make()
        self.assertEqual(transport.producerState, "producing")
        socket.suspend()
        socket.suspend()
        self.assertTrue(socket.reading_paused)
        self.assertEqual(transport.producerState, "paused")
        socket.resume()
        self.assertEqual(transport.producerState, "paused")
        socket.resume()
        self.assertFalse(socket.reading_paused)
        self.assertEqual(transport.producerState, "producing")
        with self.assertRaises(SocketError) as raised:
            socket.resume()
        self.assertIn("not suspended", str(raised.exception))

    def test_suspend_after_closed_holds_data_until_resume(self) -> None:
        # The connection is gone but DATA and CLOSE are still to be delivered:
        # suspend and resume keep working and keep their meaning.
        socket, _, owner, _ = make()
        socket.dataReceived(b"last words")
        socket.connectionLost(Failure(error.ConnectionDone()))
        socket.suspend()
        for event in Event:
            socket.set_event_enabled(event, True)
        self.assertEqual(owner.events, [])
        socket.resume()
        self.assertEqual(owner.kinds(), [Reply.DATA_EVENT, Reply.CLOSE_EVENT])
        self.assertEqual(owner.data(), b"last words")
        self.assertRaises(SocketError, socket.resume)

    def test_data_held_while_suspended(self) -> None:
        socket, _, owner, _ = make()
        socket.set_event_enabled(Event.DATA, True)
        socket.suspend()
        self.assertTrue(socket.reading_paused)
        socket.dataReceived(b"in flight")  # read before the pause took effect
        self.assertEqual(owner.events, [])
        self.assertEqual(socket.held_downstream, 9)
        socket.resume()
        self.assertEqual(owner.data(), b"in flight")
        self.assertFalse(socket.reading_paused)

    def test_data_held_while_congested(self) -> None:
        socket, _, owner, _ = make()
        socket.set_event_enabled(Event.DATA, True)
        owner.is_congested = True
        socket.dataReceived(b"late read")
        self.assertEqual(owner.events, [])
        self.assertEqual(owner.waiting, [socket])
        self.assertFalse(socket.reading_paused)  # under its own high-water mark
        owner.drain()
        self.assertEqual(owner.data(), b"late read")
        self.assertEqual(owner.waiting, [])

    def test_turns_deliver_one_data_event_each(self) -> None:
        first, _, owner, _ = make()
        second = RemoteSocket(first.config, owner, first._clock)
        second.makeConnection(FlowTransport())
        for socket in (first, second):
            socket.set_event_enabled(Event.DATA, True)
            socket.set_event_enabled(Event.CLOSE, True)
        owner.is_congested = True
        first.dataReceived(b"a1")
        first.dataReceived(b"a2")
        second.dataReceived(b"b1")
        first.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(owner.waiting, [first, second])
        turns: list[RemoteSocket] = []
        serve = RemoteSocket.serve_turn

        def recording(socket: RemoteSocket, shared: bool = False) -> bool:
            turns.append(socket)
            return serve(socket, shared)

        with mock.patch.object(RemoteSocket, "serve_turn", recording):
            owner.drain()
        self.assertEqual(turns, [first, second, first])
        self.assertEqual(owner.data(), b"a1b1a2")
        self.assertEqual(owner.kinds()[-1], Reply.CLOSE_EVENT)
        self.assertEqual(owner.finished, 1)

    def test_reads_large_only_in_a_bulk_transfer_the_client_takes(self) -> None:
        big = 64 * HWM
        socket, _, owner, _ = make(read_size=big)
        self.assertEqual(socket.next_read_size(), HWM)  # nobody listens for DATA yet
        socket.dataReceived(b"a" * HWM)
        self.assertEqual(socket.next_read_size(), HWM)  # held: the bound stays 2 x HWM
        socket.set_event_enabled(Event.DATA, True)
        self.assertEqual(socket.next_read_size(), big)  # a full read, and DATA flows
        socket.dataReceived(b"small")
        self.assertEqual(socket.next_read_size(), HWM)  # small exchanges read small
        socket.dataReceived(b"b" * HWM)
        self.assertEqual(socket.next_read_size(), big)
        # A congested session: one large read is held, by one socket at a time.
        other, _, _, _ = make(read_size=big)
        other.owner = owner
        other.set_event_enabled(Event.DATA, True)
        other.dataReceived(b"o")
        owner.is_congested = True
        self.assertEqual(socket.next_read_size(), big)
        socket.dataReceived(b"c" * big)
        self.assertEqual(socket.held_downstream, big)
        self.assertTrue(socket.reading_paused)
        self.assertEqual(socket.next_read_size(), HWM)  # it holds already
        other.dataReceived(b"o" * HWM)
        self.assertEqual(owner.bulk_readers, 2)
        self.assertEqual(other.next_read_size(), HWM)  # two bulk transfers read a mark each
        self.assertEqual(owner.waiting, [socket, other])
        # Turns are a mark each while others wait: the large read is cut; once
        # nobody else waits, its rest goes whole.
        before = len(owner.events)
        owner.drain()
        turns = [e.value for e in owner.events[before:] if isinstance(e.value, bytes)]
        self.assertEqual(turns, [b"c" * HWM, b"o" * HWM, b"c" * (big - HWM)])
        self.assertEqual((socket.held_downstream, other.held_downstream), (0, 0))
        self.assertEqual(socket.next_read_size(), HWM)
        other.dataReceived(b"x")  # the other transfer is not bulk any more
        self.assertEqual(owner.bulk_readers, 1)
        self.assertEqual(socket.next_read_size(), big)
        other.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(owner.bulk_readers, 1)
        socket.suspend()
        self.assertEqual(socket.next_read_size(), HWM)
        socket.resume()
        self.assertEqual(socket.next_read_size(), big)
        socket.set_event_enabled(Event.DATA, False)
        self.assertEqual(socket.next_read_size(), HWM)
        socket.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(owner.bulk_readers, 0)
        small, _, _, _ = make(read_size=HWM // 4)
        small.set_event_enabled(Event.DATA, True)
        small.dataReceived(b"d" * HWM)
        self.assertEqual(small.next_read_size(), HWM // 4)

    def test_data_held_until_enabled(self) -> None:
        socket, transport, owner, _ = make()
        socket.dataReceived(b"a" * HWM)
        self.assertEqual(socket.held_downstream, HWM)
        self.assertFalse(socket.reading_paused)
        socket.dataReceived(b"b")
        self.assertTrue(socket.reading_paused)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(owner.events, [])
        socket.set_event_enabled(Event.DATA, True)
        self.assertEqual(owner.data(), b"a" * HWM + b"b")
        self.assertEqual(socket.held_downstream, 0)
        self.assertFalse(socket.reading_paused)
        self.assertEqual(transport.producerState, "producing")
        socket.dataReceived(b"c")  # now delivered at once
        self.assertEqual(owner.data(), b"a" * HWM + b"bc")

    def test_data_disabled_again(self) -> None:
        socket, _, owner, _ = make()
        socket.set_event_enabled(Event.DATA, True)
        socket.dataReceived(b"1")
        socket.set_event_enabled(Event.DATA, False)
        socket.dataReceived(b"2")
        self.assertEqual(owner.data(), b"1")
        self.assertEqual(socket.held_downstream, 1)
        socket.set_event_enabled(Event.DATA, True)
        self.assertEqual(owner.data(), b"12")

    def test_suspended_and_held(self) -> None:
        socket, transport, _, _ = make()
        socket.suspend()
        socket.dataReceived(b"a" * (HWM + 1))
        socket.set_event_enabled(Event.DATA, True)
        self.assertTrue(socket.reading_paused)  # still suspended
        socket.resume()
        self.assertEqual(transport.producerState, "producing")

    def test_a_pass_stops_when_congested_again_and_resumes_there(self) -> None:
        first, _, owner, _ = make()
        sockets = [first] + [RemoteSocket(first.config, owner, first._clock) for _ in range(2)]
        for socket in sockets[1:]:
            socket.makeConnection(FlowTransport())
        for socket in sockets:
            socket.set_event_enabled(Event.DATA, True)
        owner.share.pauseProducing()
        for name, socket in zip("abc", sockets, strict=True):
            socket.dataReceived(name.encode() + b"1")
            socket.dataReceived(name.encode() + b"2")
        sent = owner.send_event

        def congest_after_second(socket: RemoteSocket, content: bytes) -> None:
            sent(socket, content)
            if len(owner.events) == 2:
                owner.share.pauseProducing()  # the transport is full again

        with mock.patch.object(owner, "send_event", congest_after_second):
            owner.drain()
        self.assertEqual(owner.data(), b"a1b1")
        self.assertEqual(owner.waiting, [sockets[2], sockets[0], sockets[1]])
        owner.drain()
        self.assertEqual(owner.data(), b"a1b1c1a2b2c2")
        self.assertEqual(owner.waiting, [])

    def test_congestion_pauses_at_the_high_water_mark(self) -> None:
        socket, transport, owner, _ = make()
        socket.set_event_enabled(Event.DATA, True)
        owner.is_congested = True
        socket.dataReceived(b"a" * HWM)
        self.assertEqual(transport.producerState, "producing")
        socket.dataReceived(b"b")
        self.assertTrue(socket.reading_paused)
        self.assertEqual(transport.producerState, "paused")
        owner.drain()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(owner.data(), b"a" * HWM + b"b")


class EventOrderTests(SynchronousTestCase):
    def lose(self, socket: RemoteSocket, exc: Exception) -> None:
        socket.connectionLost(Failure(exc))

    def test_clean_close_only_close(self) -> None:
        socket, _, owner, _ = make()
        socket.set_event_enabled(Event.CLOSE, True)
        socket.set_event_enabled(Event.ERROR, True)
        self.lose(socket, error.ConnectionDone())
        self.assertEqual(owner.kinds(), [Reply.CLOSE_EVENT])
        self.assertEqual(owner.finished, 1)
        self.assertTrue(socket.finished)

    def test_error_then_close(self) -> None:
        socket, _, owner, _ = make()
        for event in Event:
            socket.set_event_enabled(event, True)
        socket.dataReceived(b"x")
        self.lose(socket, error.ConnectionLost())
        self.assertEqual(owner.kinds(), [Reply.DATA_EVENT, Reply.ERROR_EVENT, Reply.CLOSE_EVENT])
        self.assertEqual(owner.events[1].value, "connection reset by peer")

    def test_error_dropped_when_only_close_listens(self) -> None:
        socket, _, owner, _ = make()
        socket.set_event_enabled(Event.CLOSE, True)
        self.lose(socket, error.ConnectionLost())
        self.assertEqual(owner.kinds(), [Reply.CLOSE_EVENT])

    def test_error_waits_when_nothing_listens(self) -> None:
        socket, _, owner, _ = make()
        self.lose(socket, error.ConnectionLost())
        self.assertEqual(owner.events, [])
        self.assertFalse(socket.finished)
        socket.set_event_enabled(Event.ERROR, True)
        self.assertEqual(owner.kinds(), [Reply.ERROR_EVENT])
        socket.set_event_enabled(Event.CLOSE, True)
        self.assertEqual(owner.kinds(), [Reply.ERROR_EVENT, Reply.CLOSE_EVENT])

    def test_data_before_error_and_close(self) -> None:
        socket, _, owner, _ = make()
        socket.set_event_enabled(Event.CLOSE, True)
        socket.set_event_enabled(Event.ERROR, True)
        socket.dataReceived(b"held")
        self.lose(socket, error.ConnectionLost())
        self.assertEqual(owner.events, [])  # DATA blocks everything behind it
        socket.set_event_enabled(Event.DATA, True)
        self.assertEqual(owner.kinds(), [Reply.DATA_EVENT, Reply.ERROR_EVENT, Reply.CLOSE_EVENT])
        self.assertEqual(owner.events[0].value, b"held")

    def test_close_exactly_once_and_last(self) -> None:
        socket, _, owner, _ = make()
        for event in Event:
            socket.set_event_enabled(event, True)
        self.lose(socket, error.ConnectionDone())
        for event in Event:
            socket.set_event_enabled(event, True)
        socket.close()
        self.assertEqual(owner.kinds(), [Reply.CLOSE_EVENT])
        self.assertEqual(owner.finished, 1)

    def test_remote_fin(self) -> None:
        socket, transport, owner, _ = make()
        socket.set_event_enabled(Event.DATA, True)
        socket.set_event_enabled(Event.CLOSE, True)
        transport.producer.pauseProducing()
        transport.producer_paused = True
        socket.send(b"queued")
        socket.dataReceived(b"last words")
        socket.readConnectionLost()
        self.assertEqual(socket.state, "closing")
        self.assertFalse(transport.disconnecting)  # writes what is queued first
        transport.flush()
        transport.flush()
        self.assertEqual(bytes(transport.delivered), b"queued")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.closes, 1)
        self.lose(socket, error.ConnectionDone())
        self.assertEqual(owner.kinds(), [Reply.DATA_EVENT, Reply.CLOSE_EVENT])

    def test_unsent_data_reported(self) -> None:
        socket, transport, owner, _ = make()
        socket.set_event_enabled(Event.ERROR, True)
        transport.producer.pauseProducing()
        transport.producer_paused = True
        socket.send(b"12345")
        self.lose(socket, error.ConnectionDone())
        self.assertEqual(owner.kinds(), [Reply.ERROR_EVENT])
        self.assertEqual(
            owner.events[0].value,
            "connection closed by the remote; 5 accepted bytes were not delivered",
        )
        self.assertEqual(socket.queued_upstream, 0)


class CloseTests(SynchronousTestCase):
    def test_close_idempotent(self) -> None:
        socket, transport, _, clock = make()
        socket.close()
        socket.close()
        self.assertEqual(socket.state, "closing")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        socket.connectionLost(Failure(error.ConnectionDone()))
        socket.close()
        self.assertEqual(socket.state, "closed")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_flushes_queue_first(self) -> None:
        socket, transport, _, _ = make()
        transport.producer.pauseProducing()
        transport.producer_paused = True
        socket.send(b"a" * 40)
        socket.close()
        self.assertFalse(transport.disconnecting)
        while not transport.closes:
            transport.flush(7)
        self.assertEqual(bytes(transport.delivered), b"a" * 40)

    def test_close_after_false_really_closes(self) -> None:
        # A transport with a paused producer resumes it instead of closing when
        # its buffer empties: the socket must let go of the transport first.
        socket, transport, _, clock = make()
        self.assertFalse(socket.send(b"a" * (HWM * 3)))
        socket.close()
        self.assertIsNone(transport.producer)
        transport.flush()
        self.assertEqual(transport.closes, 1)
        self.assertFalse(transport.disconnected)  # not aborted
        socket.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_timeout_aborts(self) -> None:
        socket, transport, owner, clock = make(close_timeout=5)
        socket.set_event_enabled(Event.ERROR, True)
        socket.set_event_enabled(Event.CLOSE, True)
        transport.producer.pauseProducing()
        transport.producer_paused = True
        socket.send(b"stuck")
        socket.close()
        clock.advance(4.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)  # abortConnection
        socket.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(owner.kinds(), [Reply.ERROR_EVENT, Reply.CLOSE_EVENT])
        self.assertEqual(
            owner.events[0].value, "close timed out after 5 s; 5 accepted bytes were not delivered"
        )

    def test_detach(self) -> None:
        socket, transport, owner, _ = make()
        socket.suspend()
        socket.dataReceived(b"undelivered")
        socket.detach()
        self.assertIs(socket.owner, DETACHED)
        self.assertEqual(socket.held_downstream, 0)
        self.assertFalse(socket.reading_paused)  # drain the remote while closing
        self.assertEqual(socket.state, "closing")
        self.assertTrue(transport.disconnecting)
        socket.dataReceived(b"more")
        socket.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(owner.events, [])
        self.assertEqual(owner.finished, 0)

    def test_detach_flushes(self) -> None:
        socket, transport, _, _ = make()
        transport.producer.pauseProducing()
        transport.producer_paused = True
        socket.send(b"accepted")
        socket.detach()
        self.assertFalse(transport.disconnecting)
        transport.flush()
        transport.flush()
        self.assertEqual(bytes(transport.delivered), b"accepted")
        self.assertEqual(transport.closes, 1)


class DescribeFailureTests(SynchronousTestCase):
    def test_reasons(self) -> None:
        cases = [
            (error.ConnectionRefusedError(), "connection refused"),
            (error.DNSLookupError("x"), "host name lookup failed"),
            (error.TimeoutError(), "connect timeout"),
            (error.ConnectingCancelledError(None), "connect timeout"),
            (error.NoRouteError(), "host unreachable"),
            (error.ConnectionLost(), "connection reset by peer"),
            (ValueError("odd thing."), "odd thing"),
        ]
        for exc, text in cases:
            self.assertEqual(describe_failure(Failure(exc)), text)
