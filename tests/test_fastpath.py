"""The data path's fast writes and sized reads, on real loopback TCP connections.

A counting wrapper around a transport's socket shows the system calls each
path makes (deterministic: it counts calls, not time).
"""

from __future__ import annotations

import socket as socketlib
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tcpsocket import fastpath
from tcpsocket._private import buffered, set_read_size, write_through
from tcpsocket.config import ServerConfig
from tcpsocket.memory import set_top_pad
from tcpsocket.services.tcpsocket.messages import Event, Reply
from tcpsocket.session import SMALL_READ
from tcpsocket.tokens import TokenStore
from tests.session_helpers import (
    Recording,
    kernel_unread,
    live_sessions,
    manager,
    only,
    pattern,
    transport_buffered,
)
from tests.support import Remote, listen_remote, start_daemon, wait_until

KiB = 1024
MiB = 1024 * KiB


class CountingSocket:
    """Forwards to a real socket, counting the sends."""

    def __init__(self, real: socketlib.socket) -> None:
        self._real = real
        self.sends: list[int] = []

    def send(self, data: Any) -> int:
        sent = self._real.send(data)
        self.sends.append(1)
        return sent

    def sendmsg(self, buffers: Any) -> int:
        sent = self._real.sendmsg(buffers)
        self.sends.append(len(buffers))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Client(Protocol):
    def connectionMade(self) -> None:
        self.received = bytearray()
        self.reads: list[int] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.reads.append(len(data))


@implementer(IPushProducer)
class PauseRecorder:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


def recording_producer(client: Client, buffer_size: int) -> PauseRecorder:
    """A :class:`PauseRecorder` registered on ``client``'s transport, which pauses it above
    ``buffer_size`` unsent bytes."""
    producer = PauseRecorder()
    client.transport.bufferSize = buffer_size
    client.transport.registerProducer(producer, True)
    return producer


async def connected(test: TestCase, remote: type[Remote]) -> tuple[Any, Client, CountingSocket]:
    """A loopback connection to a ``remote``: (the remote's factory, our protocol, our socket)."""
    factory, port = await listen_remote(test, remote)
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Client())
    test.addCleanup(client.transport.abortConnection)
    counting = CountingSocket(client.transport.socket)
    client.transport.socket = counting
    await wait_until(lambda: len(factory.connections) == 1)
    return factory, client, counting


class WriteThroughTests(TestCase):
    async def test_sent_at_once_when_nothing_is_queued(self) -> None:
        factory, client, counting = await connected(self, Remote)
        sent = write_through(client.transport, (b"head", b"body"))
        # Handed to the kernel in this reactor turn, in one sendmsg: nothing queued.
        self.assertEqual(sent, 8)
        self.assertEqual(counting.sends, [2])
        self.assertEqual(buffered(client.transport), 0)
        await wait_until(lambda: bytes(factory.received) == b"headbody")

    async def test_queued_behind_what_the_transport_holds(self) -> None:
        factory, client, counting = await connected(self, Remote)
        client.transport.write(b"first ")
        self.assertEqual(write_through(client.transport, (b"second",)), 0)
        self.assertEqual(counting.sends, [])  # Twisted sends both on its own turn
        await wait_until(lambda: bytes(factory.received) == b"first second")

    async def test_what_the_kernel_does_not_take_is_queued_in_order(self) -> None:
        factory, client, _ = await connected(self, Recording)
        remote = factory.connections[0]
        remote.transport.pauseProducing()  # the remote stops reading: the kernel fills up
        client.transport.socket.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_SNDBUF, 16 * KiB)
        producer = recording_producer(client, 64 * KiB)
        data = pattern(8 * MiB, seed=3)
        direct = 0
        for offset in range(0, len(data), 256 * KiB):
            direct += write_through(client.transport, (data[offset : offset + 256 * KiB],))
        self.assertLess(direct, len(data))
        # What the kernel did not take is queued, and pauses the producer as a write would.
        self.assertEqual(transport_buffered(client.transport), len(data) - direct)
        self.assertGreaterEqual(producer.paused, 1)
        remote.transport.resumeProducing()
        await wait_until(lambda: len(remote.received) == len(data), timeout=30)
        self.assertEqual(bytes(remote.received), data)
        await wait_until(lambda: producer.resumed >= 1)
        client.transport.unregisterProducer()

    async def test_falls_back_on_a_transport_that_is_not_tcp(self) -> None:
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        self.assertEqual(write_through(transport, (b"a", b"b")), 0)
        self.assertEqual(transport.value(), b"ab")


class BatchTests(TestCase):
    async def test_one_send_per_batch_in_order(self) -> None:
        factory, client, counting = await connected(self, Remote)
        with fastpath.batch():
            for n in range(10):
                fastpath.write(client.transport, (b"%d," % n,))
            with fastpath.batch():  # nested: still gathered
                fastpath.write(client.transport, (b"x",))
            self.assertEqual(counting.sends, [])
        self.assertEqual(counting.sends, [11])
        await wait_until(lambda: bytes(factory.received) == b"0,1,2,3,4,5,6,7,8,9,x")

    def test_other_transports_are_not_held(self) -> None:
        # TLS, UNIX and in-memory transports buffer and pause producers themselves.
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        with fastpath.batch():
            fastpath.write(transport, (b"now",))
            self.assertEqual(transport.value(), b"now")

    async def test_outside_a_batch_writes_go_at_once(self) -> None:
        _, client, counting = await connected(self, Remote)
        fastpath.write(client.transport, (b"a",))
        fastpath.write(client.transport, (b"b",))
        self.assertEqual(counting.sends, [1, 1])

    async def test_gathered_until_the_next_reactor_turn(self) -> None:
        from twisted.internet.task import Clock

        factory, client, counting = await connected(self, Remote)
        clock = Clock()
        fastpath.gather_this_turn(clock)
        fastpath.write(client.transport, (b"one ",))
        fastpath.gather_this_turn(clock)  # a batch is open: it only gathers too
        fastpath.write(client.transport, (b"two",))
        self.assertEqual(counting.sends, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(counting.sends, [2])
        await wait_until(lambda: bytes(factory.received) == b"one two")

    async def test_flush_hands_over_what_was_gathered(self) -> None:
        factory, client, counting = await connected(self, Remote)
        with fastpath.batch():
            fastpath.write(client.transport, (b"gathered ",))
            fastpath.flush(client.transport)
            self.assertEqual(counting.sends, [1])
            client.transport.write(b"then Twisted's")
        await wait_until(lambda: bytes(factory.received) == b"gathered then Twisted's")

    async def test_writes_adding_up_past_the_buffer_size_are_written_through(self) -> None:
        factory, client, counting = await connected(self, Remote)
        producer = recording_producer(client, 10)
        with fastpath.batch():
            fastpath.write(client.transport, (b"12345",))
            fastpath.write(client.transport, (b"67890",))
            self.assertEqual(counting.sends, [])  # 10 bytes: not over the buffer size
            fastpath.write(client.transport, (b"!",))
            # 11: over; as without the batch, the kernel takes them at once (one sendmsg)
            # and the producer is not paused for bytes that are not buffered.
            self.assertEqual(counting.sends, [3])
            self.assertEqual(buffered(client.transport), 0)
            self.assertEqual(producer.paused, 0)
            fastpath.write(client.transport, (b"?",))  # gathered again
            self.assertEqual(counting.sends, [3])
        self.assertEqual(counting.sends, [3, 1])
        await wait_until(lambda: bytes(factory.received) == b"1234567890!?")
        client.transport.unregisterProducer()

    async def test_a_write_over_the_buffer_size_pauses_the_producer(self) -> None:
        # As Twisted's write would: a send over the high-water mark answers false.
        factory, client, counting = await connected(self, Remote)
        producer = recording_producer(client, 10)
        with fastpath.batch():
            fastpath.write(client.transport, (b"12345",))
            fastpath.write(client.transport, (b"67890!67890",))
            self.assertEqual(counting.sends, [1])  # what was gathered goes first
            self.assertEqual(producer.paused, 1)
            self.assertEqual(buffered(client.transport), 11)
            fastpath.write(client.transport, (b"?",))  # behind the queue: Twisted's write
        await wait_until(lambda: bytes(factory.received) == b"1234567890!67890?")
        await wait_until(lambda: producer.resumed == 1)
        client.transport.unregisterProducer()

    async def test_discarded_for_an_aborted_transport(self) -> None:
        _, client, counting = await connected(self, Remote)
        with fastpath.batch():
            fastpath.write(client.transport, (b"12345",))
            self.assertEqual(fastpath.discard(client.transport), 5)
            self.assertEqual(fastpath.discard(client.transport), 0)
            client.transport.abortConnection()
        self.assertEqual(counting.sends, [])

    async def test_a_batch_is_flushed_when_its_reader_raises(self) -> None:
        factory, client, _ = await connected(self, Remote)
        with self.assertRaises(ValueError), fastpath.batch():
            fastpath.write(client.transport, (b"kept",))
            raise ValueError
        await wait_until(lambda: bytes(factory.received) == b"kept")


class Source(Remote):
    """Writes the factory's payload at once, once connected."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.factory.payload)  # type: ignore[union-attr]


class SizedClient(Client):
    """Pauses its producer over 4 KiB, and reads up to 512 KiB at once."""

    def connectionMade(self) -> None:
        super().connectionMade()
        transport: Any = self.transport
        transport.bufferSize = 4 * KiB
        self.sized = set_read_size(transport, 512 * KiB)


class SizerClient(Client):
    """Reads 2 KiB at a time for its first 20 reads, then up to 512 KiB: it says so per read."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.asked = 0
        self.sized = set_read_size(self.transport, self)

    def next_read_size(self) -> int:
        self.asked += 1
        return 2 * KiB if len(self.reads) < 20 else 512 * KiB


class ReadSizeTests(TestCase):
    async def read_all(self, client: SizedClient | SizerClient, seed: int) -> None:
        """``client`` reads 2 MiB from a loopback source; every byte arrives, in order."""
        payload = pattern(2 * MiB, seed=seed)
        _, port = await listen_remote(self, Source, payload)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(client.transport.abortConnection)
        await wait_until(lambda: len(client.received) >= len(payload), timeout=30)
        self.assertEqual(bytes(client.received), payload)
        self.assertTrue(client.sized)

    async def test_reads_larger_than_the_buffer_size(self) -> None:
        client = SizedClient()
        await self.read_all(client, seed=4)
        self.assertTrue(ITCPTransport.providedBy(client.transport))
        self.assertEqual(client.transport.bufferSize, 4 * KiB)  # the producer's threshold
        self.assertLessEqual(max(client.reads), 512 * KiB)
        self.assertGreater(max(client.reads), 4 * KiB)

    async def test_reads_sized_by_the_protocol_before_each_read(self) -> None:
        client = SizerClient()
        await self.read_all(client, seed=7)
        self.assertGreaterEqual(client.asked, len(client.reads))
        self.assertEqual(max(client.reads[:20]), 2 * KiB)
        self.assertGreater(max(client.reads[20:]), 2 * KiB)
        self.assertLessEqual(max(client.reads), 512 * KiB)
        # The transport holds its protocol weakly: no cycle through the sizer.
        self.assertIs(client.transport.readSizer(), client)

    def test_not_for_other_transports(self) -> None:
        from twisted.internet import unix
        from twisted.internet.testing import StringTransport

        self.assertFalse(set_read_size(StringTransport(), 1 * MiB))
        # UNIX connections read file descriptors along with bytes: left alone.
        self.assertFalse(set_read_size(object.__new__(unix.Server), 1 * MiB))


class SessionTests(TestCase):
    async def test_pipelined_sends_answered_in_order_and_byte_exact(self) -> None:
        factory, remote_port = await listen_remote(self, Recording)
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        chunks = [pattern(n * 97 + 1, seed=n) for n in range(200)]
        order: list[int] = []
        waits = []
        for n, chunk in enumerate(chunks):  # all in one turn: pipelined on the wire
            d = client.send(service, socket_id, chunk)
            d.addCallback(lambda reply, n=n: order.append(n) or reply)
            waits.append(d)
        replies = await defer.gatherResults(waits)
        self.assertEqual(order, list(range(len(chunks))))
        self.assertTrue(all(reply.reply is Reply.SEND_SUCCESS for reply in replies))
        await wait_until(lambda: len(factory.received) == sum(map(len, chunks)))
        self.assertEqual(bytes(factory.received), b"".join(chunks))

    async def test_reads_of_a_remote_are_sized_apart_from_the_high_water_mark(self) -> None:
        payload = pattern(4 * MiB, seed=5)
        _, remote_port = await listen_remote(self, Source, payload)
        site, port = await start_daemon(self, read_size=1 * MiB)
        client, service = await manager(self, port)
        sizes: list[int] = []
        client.event_hooks.append(
            lambda _s, _o, reply: (
                sizes.append(len(reply.value)) if reply.reply is Reply.DATA_EVENT else None
            )
        )
        socket_id = await client.open_ok(service, remote_port)
        socket = only(live_sessions(site)).services[service].sockets[socket_id]
        socket.transport.socket.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_RCVBUF, 2 * MiB)
        # Without a DATA listener the daemon reads no more than the mark at once, and
        # stops; the remote's bytes back up in the kernel.
        await wait_until(
            lambda: socket.reading_paused and kernel_unread(socket.transport) > 128 * KiB
        )
        self.assertLessEqual(socket.held_downstream, 2 * 64 * KiB)
        await client.enable(service, socket_id, Event.DATA)
        stream = client.stream(service, socket_id)
        await wait_until(lambda: len(stream.data) >= len(payload), timeout=30)
        self.assertEqual(bytes(stream.data), payload)
        # Held DATA was read a mark at a time; once it flows, reads (and so DATA
        # events) go over the 64 KiB mark, never over the read size.
        self.assertLessEqual(max(sizes[:2]), 64 * KiB)
        self.assertGreater(max(sizes), 64 * KiB)
        self.assertLessEqual(max(sizes), 1 * MiB)

    async def test_concurrent_bulk_reads_share_a_write_to_the_client(self) -> None:
        payloads = [pattern(2 * MiB, seed=n) for n in (6, 7)]
        remotes = [await listen_remote(self, Remote) for _ in payloads]
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_ids = [await client.open_ok(service, remote_port) for _, remote_port in remotes]
        session = only(live_sessions(site))
        counting = CountingSocket(session.transport.socket)
        session.transport.socket = counting
        streams = [client.stream(service, socket_id) for socket_id in socket_ids]
        for socket_id in socket_ids:
            await client.enable(service, socket_id, Event.DATA)
        # Both remotes send at once, to a client that takes DATA: nothing is held.
        for (factory, _), payload in zip(remotes, payloads, strict=True):
            only(factory.connections).transport.write(payload)
        total = sum(map(len, payloads))
        await wait_until(lambda: sum(len(stream.data) for stream in streams) >= total, timeout=30)
        self.assertEqual([bytes(stream.data) for stream in streams], payloads)
        # Alone, a DATA event is one send (a frame head and its body); both
        # sockets' reads of one reactor turn went out in one sendmsg.
        self.assertGreaterEqual(max(counting.sends), 4)

    async def test_client_reads_sized_apart_from_the_session_buffer(self) -> None:
        factory, remote_port = await listen_remote(self, Recording)
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        session = only(live_sessions(site))
        self.assertEqual(session.next_read_size(), SMALL_READ)  # requests: small reads
        reads: list[int] = []
        original = session.dataReceived

        def recording(data: bytes) -> None:
            reads.append(len(data))
            original(data)

        session.dataReceived = recording
        chunks = [pattern(256 * KiB, seed=n) for n in range(16)]
        replies = await defer.gatherResults([client.send(service, socket_id, c) for c in chunks])
        self.assertTrue(all(reply.reply is Reply.SEND_SUCCESS for reply in replies))
        await wait_until(lambda: len(factory.received) == 4 * MiB, timeout=30)
        self.assertEqual(bytes(factory.received), b"".join(chunks))
        # An upload is read in reads over the session buffer (the old read size).
        self.assertGreater(max(reads), 256 * KiB)
        self.assertLessEqual(max(reads), MiB)


class UnmaskTests(TestCase):
    def test_same_as_autobahn_at_every_offset_and_size(self) -> None:
        from autobahn.websocket.xormasker import create_xor_masker  # type: ignore[attr-defined]

        mask = b"\x9a\x01\xff\x37"
        for size in (0, 1, 3, 4, 5, 63, 64, 1023, 1024, 1025, 70_000):
            frame = pattern(size + 3, seed=size)
            whole = create_xor_masker(mask, len(frame)).process(frame)
            for offset in range(4):
                part = frame[offset : offset + size]
                self.assertEqual(
                    fastpath.unmask(part, mask, offset),
                    whole[offset : offset + size],
                    (size, offset),
                )

    async def test_masked_frames_split_across_reads_arrive_whole(self) -> None:
        # Messages of many sizes, written a few bytes at a time: frames and their
        # masks are cut at every offset, and each piece is unmasked apart.
        factory, remote_port = await listen_remote(self, Recording)
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        transport: Any = client.raw.transport
        real_write = transport.write

        later = [0]

        def trickle(data: bytes) -> None:
            # A piece per reactor turn or so (each on its own timer): the daemon
            # reads the frames in pieces cut at every offset (97 = 1 mod 4).
            for start in range(0, len(data), 97):
                later[0] += 1
                reactor.callLater(later[0] * 0.002, real_write, data[start : start + 97])

        transport.write = trickle
        chunks = [pattern(size, seed=size) for size in (1, 5, 200, 1500, 3000)]
        for chunk in chunks:
            reply = await client.send(service, socket_id, chunk)
            self.assertIs(reply.reply, Reply.SEND_SUCCESS)
        del transport.write
        await wait_until(lambda: len(factory.received) == sum(map(len, chunks)))
        self.assertEqual(bytes(factory.received), b"".join(chunks))


class OrderTests(TestCase):
    async def test_replies_gathered_before_a_close_leave_before_it(self) -> None:
        # Requests and a close frame in one read: the replies gathered for the
        # read go out before Autobahn's close reply (sendData flushes first).
        factory, remote_port = await listen_remote(self, Recording)
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        arrived: list[str] = []
        sends = [client.send(service, socket_id, b"x%d" % n) for n in range(5)]
        for d in sends:
            d.addCallback(lambda reply: arrived.append("reply") or reply)
        on_close_frame = client.raw.onCloseFrame

        def close_frame(code: Any, reason: Any) -> Any:
            arrived.append("close")
            return on_close_frame(code, reason)

        client.raw.onCloseFrame = close_frame
        client.raw.sendClose(1000)  # same turn: the same TCP write as the requests
        replies = await defer.gatherResults(sends)
        await client.raw.closed
        self.assertEqual(arrived, ["reply"] * 5 + ["close"])
        self.assertTrue(all(reply.reply is Reply.SEND_SUCCESS for reply in replies))
        await wait_until(lambda: bytes(factory.received) == b"x0x1x2x3x4")


class FrameFeedTests(TestCase):
    async def test_autobahn_is_fed_a_frame_at_a_time(self) -> None:
        factory, remote_port = await listen_remote(self, Recording)
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        session = only(live_sessions(site))
        pieces: list[int] = []
        feed = session._dataReceived

        def recording(data: bytes) -> None:
            pieces.append(len(data))
            feed(data)

        session._dataReceived = recording
        chunks = [pattern(8 * KiB, seed=n) for n in range(6)] + [b"tiny"] * 5
        replies = await defer.gatherResults([client.send(service, socket_id, c) for c in chunks])
        self.assertTrue(all(reply.reply is Reply.SEND_SUCCESS for reply in replies))
        await wait_until(lambda: len(factory.received) == sum(map(len, chunks)))
        self.assertEqual(bytes(factory.received), b"".join(chunks))
        # However the reads fell, no piece held more than one large payload.
        self.assertLessEqual(max(pieces), 8 * KiB + 64)
        self.assertGreaterEqual(len(pieces), 12)


class TopPadTests(TestCase):
    def test_set_on_glibc_and_not_for_zero(self) -> None:
        self.assertFalse(set_top_pad(0))
        import platform

        if platform.libc_ver()[0] == "glibc":
            self.assertTrue(set_top_pad(128 * KiB))  # glibc's own default


class OptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> Any:
        from tcpsocket.tap import Options

        options = Options()
        options.parseOptions(["--token", "t" * 16, *args])
        return options

    def test_defaults_read_in_bulk_apart_from_the_high_water_mark(self) -> None:
        options = self.parse()
        config = options["config"]
        self.assertEqual((config.read_size, options["malloc-top-pad"]), (MiB, 0))
        self.assertEqual(config.high_water_mark, 64 * KiB)
        self.assertEqual(ServerConfig(TokenStore()).read_size, MiB)

    def test_read_size_and_top_pad(self) -> None:
        options = self.parse("--read-size", "262144", "--malloc-top-pad", "4194304")
        self.assertEqual(
            (options["config"].read_size, options["malloc-top-pad"]), (256 * KiB, 4 * MiB)
        )

    def test_bad_values(self) -> None:
        from twisted.python import usage

        for args in (("--read-size", "0"), ("--malloc-top-pad", "-1"), ("--read-size", "x")):
            self.assertRaises(usage.UsageError, self.parse, *args)
        self.assertRaises(ValueError, ServerConfig, TokenStore(), read_size=0)

    def test_the_daemon_sets_the_top_pad_at_start(self) -> None:
        from unittest import mock

        from tcpsocket import tap

        options = self.parse("--listen", "tcp:0", "--malloc-top-pad", "4194304")
        with mock.patch.object(tap, "set_top_pad") as set_pad:
            tap.makeService(options)
        set_pad.assert_called_once_with(4 * MiB)
