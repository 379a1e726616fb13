"""Flow control both ways (protocol.md B.5-B.7, B.10), against real loopback remotes.

The memory bounds checked here, with the defaults (HWM = high_water_mark =
64 KiB, session_buffer = 256 KiB) and a client that keeps at most W sends of
C bytes in flight and stops at a ``false`` until DRAIN:

* upstream, per socket: ``queued_upstream <= (W - 1) * C`` and the TCP
  transport's buffer ``<= HWM + C``; whatever the client does,
  ``queued_upstream <= max_send_buffer`` (the hard cap);
* downstream, per socket: ``held_downstream <= 2 * HWM`` (reading pauses once
  over HWM, and one read is at most HWM bytes);
* per session, the WebSocket transport's buffer ``<= session_buffer + HWM +
  framing`` per socket reading at the moment the session gets congested.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tcpsocket.messages import Core, ObjectRef
from tcpsocket.services.tcpsocket.messages import Event, Method, Reply, SocketReply
from tests.session_helpers import (
    HashingSink,
    HeldSource,
    KiB,
    MiB,
    PausedSink,
    Source,
    kernel_unread,
    listen_small,
    live_sessions,
    manager,
    only,
    pattern,
    raw_client_small,
    shrink_send_buffer,
    shrink_send_buffer_of,
    transport_buffered,
)
from tests.support import Echo, SendAndClose, listen_remote, start_daemon, wait_until

HWM = 64 * KiB
SESSION_BUFFER = 256 * KiB
#: Bytes a DATA event adds around its payload: BaseMessage head, tags and
#: lengths, and the WebSocket frame header.
FRAMING = 32


def daemon_session(site: Any) -> Any:
    return only(live_sessions(site))


class UpstreamTests(TestCase):
    async def test_false_over_high_water_then_one_drain(self) -> None:
        site, port = await start_daemon(self)
        factory, remote_port = await listen_small(self, PausedSink)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=(Event.DRAIN,))
        socket = shrink_send_buffer(site, service, socket_id)
        remote = only(factory.connections)
        chunk = pattern(8 * KiB)
        answers = []
        while not answers or answers[-1]:
            reply = await client.send(service, socket_id, chunk)
            assert reply.reply is Reply.SEND_SUCCESS
            answers.append(reply.value)
            unsent = socket.queued_upstream + transport_buffered(socket.transport)
            # true exactly while the daemon holds no more than the high-water mark
            self.assertEqual(reply.value, unsent <= HWM, (len(answers), unsent))
        self.assertGreater(len(answers), HWM // len(chunk))
        for _ in range(3):  # still over: still false
            reply = await client.send(service, socket_id, chunk)
            self.assertEqual(reply, SocketReply(Reply.SEND_SUCCESS, False))
        total = (len(answers) + 3) * len(chunk)
        await client.settle()
        self.assertEqual(client.stream(service, socket_id).events, [])
        remote.resume()
        drain = await client.stream(service, socket_id).next()
        self.assertEqual(drain, SocketReply(Reply.DRAIN_EVENT, True))
        await wait_until(lambda: len(remote.received) == total)
        await client.settle()
        self.assertEqual(client.stream(service, socket_id).kinds(), [Reply.DRAIN_EVENT])
        self.assertEqual(bytes(remote.received), chunk * (total // len(chunk)))
        reply = await client.send(service, socket_id, b"again")
        self.assertEqual(reply, SocketReply(Reply.SEND_SUCCESS, True))

    async def test_hard_cap(self) -> None:
        cap = 1 * MiB
        site, port = await start_daemon(self, max_send_buffer=cap)
        factory, remote_port = await listen_small(self, PausedSink)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=tuple(Event))
        socket = shrink_send_buffer(site, service, socket_id)
        remote = only(factory.connections)
        accepted = bytearray()
        seed = 0
        while True:  # a client that ignores false
            seed += 1
            data = pattern(96 * KiB, seed)
            reply = await client.send(service, socket_id, data)
            self.assertLessEqual(socket.queued_upstream, cap)
            if reply.reply is Reply.SEND_ERROR:
                break
            accepted += data
        assert reply.detail is not None
        self.assertIn("send buffer full", reply.detail)
        self.assertIn(f"limit {cap}", reply.detail)
        self.assertGreater(socket.queued_upstream + len(data), cap)
        # a small send that fits still goes through; nothing accepted is lost
        reply = await client.send(service, socket_id, b"fits")
        self.assertEqual(reply.reply, Reply.SEND_SUCCESS)
        accepted += b"fits"
        await client.call(service, socket_id, Method.CLOSE)
        remote.resume()
        stream = client.stream(service, socket_id)
        await stream.until_close()
        self.assertNotIn(Reply.ERROR_EVENT, stream.kinds())
        await remote.lost
        self.assertTrue(remote.clean_eof)
        self.assertEqual(len(remote.received), len(accepted))
        self.assertEqual(bytes(remote.received), bytes(accepted))

    async def test_upload_64_mib_to_slow_reader(self) -> None:
        size, chunk, window = 64 * MiB, 32 * KiB, 4
        site, port = await start_daemon(self)
        factory, remote_port = await listen_small(self, HashingSink, rcvbuf=64 * KiB)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(
            service, remote_port, events=(Event.DRAIN, Event.ERROR, Event.CLOSE)
        )
        socket = shrink_send_buffer(site, service, socket_id)
        remote = only(factory.connections)
        payload = pattern(size, seed=64)
        done: defer.Deferred[None] = defer.Deferred()
        st: dict[str, int] = dict.fromkeys(
            (
                "offset",
                "inflight",
                "trues",
                "falses",
                "episodes",
                "drains",
                "queued",
                "transport",
                "wakes",
            ),
            0,
        )
        in_episode = [False]

        def sample() -> None:
            st["queued"] = max(st["queued"], socket.queued_upstream)
            st["transport"] = max(st["transport"], transport_buffered(socket.transport))

        def on_reply(reply: SocketReply) -> None:
            self.assertEqual(reply.reply, Reply.SEND_SUCCESS, reply)
            sample()
            st["inflight"] -= 1
            st["trues" if reply.value else "falses"] += 1
            if reply.value is False:
                if not in_episode[0]:
                    in_episode[0] = True
                    st["episodes"] += 1
                wake()
            kick()

        def on_event(service_id: int, object_id: int, reply: SocketReply) -> None:
            sample()
            if reply.reply is Reply.CLOSE_EVENT:
                return
            self.assertEqual(reply, SocketReply(Reply.DRAIN_EVENT, True))
            self.assertTrue(in_episode[0], "DRAIN without a false before it")
            st["drains"] += 1
            in_episode[0] = False
            kick()

        def kick() -> None:
            while not in_episode[0] and st["inflight"] < window and st["offset"] < size:
                start = st["offset"]
                st["offset"] += chunk
                st["inflight"] += 1
                d = client.send(service, socket_id, payload[start : start + chunk])
                d.addCallback(on_reply).addErrback(done.errback)
                sample()
            if st["offset"] >= size and not st["inflight"] and not in_episode[0]:
                if not done.called:
                    done.callback(None)

        def wake() -> None:
            if remote.paused and in_episode[0]:
                st["wakes"] += 1
                remote.resume()

        # The slow reader reads a burst whenever the daemon says false; if it
        # stops in the middle of an episode, it goes on at the next turn.
        remote.on_pause = lambda: reactor.callLater(0, wake)
        client.event_hooks.append(on_event)
        kick()
        await done
        await client.call(service, socket_id, Method.CLOSE)
        remote.burst = 1 << 62
        remote.resume()
        stream = client.stream(service, socket_id)
        await stream.until_close()
        await remote.lost
        self.assertTrue(remote.clean_eof, remote.reason)
        self.assertEqual(remote.count, size)
        self.assertEqual(remote.digest.hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertGreater(st["trues"], 0, st)
        self.assertGreater(st["episodes"], 2, st)
        self.assertEqual(st["drains"], st["episodes"], st)  # exactly one DRAIN per false
        self.assertLessEqual(st["queued"], (window - 1) * chunk, st)
        self.assertLessEqual(st["transport"], HWM + chunk, st)
        self.assertEqual(stream.kinds().count(Reply.CLOSE_EVENT), 1)
        self.assertNotIn(Reply.ERROR_EVENT, stream.kinds())
        client.assert_one_response_each()


class SuspendTests(TestCase):
    async def test_suspend_backs_up_the_remote_and_resume_continues(self) -> None:
        payload = pattern(16 * MiB, seed=3)
        factory, remote_port = await listen_remote(self, HeldSource, payload)
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=(Event.DATA, Event.CLOSE))
        socket = daemon_session(site).services[service].sockets[socket_id]
        source = only(factory.connections)
        reply = await client.call(service, socket_id, Method.SUSPEND)
        self.assertEqual(reply, SocketReply(Reply.SUSPEND_SUCCESS))
        self.assertTrue(socket.reading_paused)
        source.start()
        # The remote's writes back up: the kernel holds what the daemon does
        # not read, and the remote's transport pauses it as a producer.
        await wait_until(
            lambda: (
                source.paused
                and transport_buffered(source.transport) > 0
                and kernel_unread(socket.transport) > 0
            )
        )
        await client.settle()
        stream = client.stream(service, socket_id)
        self.assertEqual(stream.events, [])
        self.assertEqual(socket.held_downstream, 0)
        self.assertLess(source.offset, len(payload))
        reply = await client.call(service, socket_id, Method.RESUME)
        self.assertEqual(reply, SocketReply(Reply.RESUME_SUCCESS))
        await stream.until_close()
        self.assertEqual(len(stream.data), len(payload))
        self.assertEqual(bytes(stream.data), payload)  # from the exact next byte
        self.assertGreater(source.pauses, 0)

    async def test_suspend_nests(self) -> None:
        site, port = await start_daemon(self)
        _, remote_port = await listen_remote(self, Echo)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=(Event.DATA,))
        socket = daemon_session(site).services[service].sockets[socket_id]
        for _ in range(2):
            reply = await client.call(service, socket_id, Method.SUSPEND)
            self.assertEqual(reply, SocketReply(Reply.SUSPEND_SUCCESS))
        await client.send(service, socket_id, b"echo")
        await wait_until(lambda: kernel_unread(socket.transport) == 4)
        reply = await client.call(service, socket_id, Method.RESUME)
        self.assertEqual(reply, SocketReply(Reply.RESUME_SUCCESS))
        self.assertTrue(socket.reading_paused)
        await client.settle()
        stream = client.stream(service, socket_id)
        self.assertEqual(stream.events, [])
        reply = await client.call(service, socket_id, Method.RESUME)
        self.assertEqual(reply, SocketReply(Reply.RESUME_SUCCESS))
        self.assertEqual(await stream.next(), SocketReply(Reply.DATA_EVENT, b"echo"))
        reply = await client.call(service, socket_id, Method.RESUME)
        self.assertEqual(reply, SocketReply(Reply.RESUME_ERROR, detail="socket is not suspended"))
        client.assert_one_response_each()


class HeldDataTests(TestCase):
    async def test_banner_held_until_data_enabled(self) -> None:
        payload = pattern(16 * MiB, seed=5)
        factory, remote_port = await listen_remote(self, HeldSource, payload)
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        socket = daemon_session(site).services[service].sockets[socket_id]
        source = only(factory.connections)
        source.start()  # speaks first: nobody listens for DATA yet
        await wait_until(lambda: socket.reading_paused and socket.held_downstream > HWM)
        self.assertLessEqual(socket.held_downstream, 2 * HWM)
        # Reading stays paused: the remote backs up instead of the daemon's memory.
        await wait_until(lambda: source.paused and kernel_unread(socket.transport) > 0)
        self.assertLessEqual(socket.held_downstream, 2 * HWM)
        await client.settle()
        self.assertEqual(client.stream(service, socket_id).events, [])
        await client.enable(service, socket_id, Event.DATA, Event.ERROR, Event.CLOSE)
        stream = client.stream(service, socket_id)
        await stream.until_close()
        self.assertEqual(bytes(stream.data), payload)
        await client.settle()
        self.assertIn(Reply.DATA_EVENT, stream.kinds())
        stream.assert_data_then_one_close()

    async def test_send_and_close_at_once(self) -> None:
        payload = pattern(1 * MiB, seed=6)
        _, remote_port = await listen_remote(self, SendAndClose, payload)
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=tuple(Event))
        stream = client.stream(service, socket_id)
        await stream.until_close()
        await client.settle()
        self.assertEqual(bytes(stream.data), payload)
        kinds = stream.kinds()
        self.assertEqual(kinds.count(Reply.CLOSE_EVENT), 1)
        self.assertEqual(kinds[-1], Reply.CLOSE_EVENT)
        self.assertEqual(set(kinds[:-1]), {Reply.DATA_EVENT})


class DownstreamTests(TestCase):
    async def test_congestion_pauses_the_sessions_remotes(self) -> None:
        payload = pattern(16 * MiB, seed=8)
        factory, remote_port = await listen_remote(self, Source, payload)
        _, echo_port = await listen_remote(self, Echo)
        site, port = await start_daemon(self)
        # Small kernel buffers on the WebSocket make a client that stops
        # reading felt at once.
        client, service = await manager(self, port, raw=await raw_client_small(self, port))
        session = daemon_session(site)
        shrink_send_buffer_of(session.transport)
        ids = [await client.open_ok(service, remote_port) for _ in range(2)]
        sockets = [session.services[service].sockets[i] for i in ids]
        client.raw.transport.pauseProducing()
        enabled = [
            client.request(0, 0, ObjectRef(Core.ENABLE_EVENT, service, i, Event.DATA).encode())
            for i in ids
        ]
        await wait_until(lambda: session.congested)
        await wait_until(lambda: all(s.reading_paused for s in sockets))
        sources = list(factory.connections)
        await wait_until(lambda: all(s.paused for s in sources))
        limit = SESSION_BUFFER + 2 * (HWM + FRAMING)
        self.assertLessEqual(transport_buffered(session.transport), limit)
        for socket in sockets:
            self.assertLessEqual(socket.held_downstream, 2 * HWM)
        # Another session is not affected.
        other, other_service = await manager(self, port)
        echo_id = await other.open_ok(other_service, echo_port, events=(Event.DATA,))
        await other.send(other_service, echo_id, b"unaffected")
        await wait_until(lambda: bytes(other.stream(other_service, echo_id).data) == b"unaffected")
        self.assertTrue(session.congested)
        # The client reads again: everything arrives.
        client.raw.transport.resumeProducing()
        self.assertEqual(await defer.gatherResults(enabled), [b"\x03\x01"] * 2)
        for socket_id in ids:
            stream = client.stream(service, socket_id)
            await wait_until(lambda s=stream: len(s.data) == len(payload), timeout=20)
            self.assertEqual(bytes(stream.data), payload)

    async def test_download_64_mib_to_slow_client(self) -> None:
        size, stall_every = 64 * MiB, 4 * MiB
        payload = pattern(size, seed=9)
        factory, remote_port = await listen_remote(self, Source, payload)
        site, port = await start_daemon(self)
        raw = await raw_client_small(self, port, rcvbuf=64 * KiB)
        client, service = await manager(self, port, raw=raw)
        session = daemon_session(site)
        shrink_send_buffer_of(session.transport, 64 * KiB)
        socket_id = await client.open_ok(service, remote_port)
        socket = session.services[service].sockets[socket_id]
        source = only(factory.connections)
        st = dict.fromkeys(("held", "session", "congested", "paused", "stalls", "count"), 0)
        digest = hashlib.sha256()
        next_stall = [stall_every]
        stalls: list[defer.Deferred[None]] = []

        original = session.send_event

        def sampling_send_event(service_id: int, object_id: int, content: bytes) -> None:
            original(service_id, object_id, content)
            st["held"] = max(st["held"], socket.held_downstream)
            st["session"] = max(st["session"], transport_buffered(session.transport))

        session.send_event = sampling_send_event

        async def stall() -> None:
            # The client stops reading until the daemon notices and pauses the remote.
            raw = client.raw
            raw.transport.pauseProducing()
            # (Near the end the remote may have nothing left to fill the buffers.)
            await wait_until(
                lambda: (session.congested and socket.reading_paused) or socket.state != "open"
            )
            if session.congested:
                st["congested"] += 1
            st["held"] = max(st["held"], socket.held_downstream)
            st["session"] = max(st["session"], transport_buffered(session.transport))
            raw.transport.resumeProducing()

        def sink(data: bytes) -> None:
            digest.update(data)
            st["count"] += len(data)
            if st["count"] >= next_stall[0]:
                next_stall[0] += stall_every
                st["stalls"] += 1
                stalls.append(defer.ensureDeferred(stall()))

        stream = client.stream(service, socket_id)
        stream.data_sink = sink
        await client.enable(service, socket_id, Event.DATA, Event.ERROR, Event.CLOSE)
        event = await stream.next()
        self.assertEqual(event, SocketReply(Reply.CLOSE_EVENT))
        await defer.gatherResults(stalls)
        self.assertEqual(st["count"], size)
        self.assertEqual(digest.hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertEqual(stream.kinds(), [Reply.CLOSE_EVENT])
        self.assertGreaterEqual(st["congested"], size // stall_every - 1, st)
        self.assertGreater(source.pauses, 0)
        # A socket holds one large read (the only one of its session) or under twice
        # the mark; the WebSocket holds its buffer plus the one read that filled it.
        read_size = session.config.read_size
        self.assertLessEqual(st["held"], max(2 * HWM, read_size), st)
        self.assertLessEqual(st["session"], SESSION_BUFFER + read_size + FRAMING, st)
