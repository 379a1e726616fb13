"""Sockets of one congested session: served in turn, and no session lost on drain.

Through the real producer path: a real WebSocket client that stops reading,
so that the daemon's WebSocket transport pauses and resumes the session
(``tcpsocket.fairness.FairShare``), and real loopback remotes.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tcpsocket.messages import Core, ObjectRef
from tcpsocket.services.tcpsocket.messages import Event, Reply
from tests.session_helpers import (
    HeldSource,
    KiB,
    MiB,
    live_sessions,
    manager,
    only,
    pattern,
    raw_client_small,
    shrink_send_buffer_of,
)
from tests.support import SendAndClose, listen_remote, start_daemon, wait_until


def jain_index(values: list[int]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


class CongestionTests(TestCase):
    async def test_close_queued_behind_held_data_on_a_congested_session(self) -> None:
        """Regression: delivering a held CLOSE when the WebSocket drains used to
        change the socket table being iterated (RuntimeError, session dropped)."""
        last_words = pattern(40 * KiB, seed=21)
        _, closing_port = await listen_remote(self, SendAndClose, last_words)
        streaming, streaming_port = await listen_remote(self, HeldSource, pattern(8 * MiB))
        site, port = await start_daemon(self)
        client, service = await manager(self, port, raw=await raw_client_small(self, port))
        session = only(live_sessions(site))
        shrink_send_buffer_of(session.transport)
        sockets = session.services[service].sockets
        closing_id = await client.open_ok(service, closing_port)
        streaming_id = await client.open_ok(service, streaming_port)
        closing = sockets[closing_id]
        # The remote sent its bytes and closed: DATA and CLOSE are held (no listener yet).
        await wait_until(lambda: closing.state == "closed")
        self.assertEqual(closing.held_downstream, len(last_words))
        # The client stops reading while the other socket streams: the session congests.
        await client.enable(service, streaming_id, Event.DATA)
        client.raw.transport.pauseProducing()
        only(streaming.connections).start()
        await wait_until(lambda: session.congested)
        # Now the client wants the closed socket's DATA and CLOSE. While it does not read,
        # its requests are not read either (so replies cannot pile up): they wait.
        enabled = [
            client.request(0, 0, ObjectRef(Core.ENABLE_EVENT, service, closing_id, e).encode())
            for e in (Event.DATA, Event.CLOSE)
        ]
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertTrue(session.congested)
        self.assertNotIn(Event.CLOSE, closing._enabled)
        self.assertEqual(closing.held_downstream, len(last_words))
        # The client reads again: its requests are read, and the turns on the shared
        # WebSocket deliver DATA then CLOSE (forgetting the socket), the session lives on.
        client.raw.transport.resumeProducing()
        await defer.gatherResults(enabled)
        stream = client.stream(service, closing_id)
        await stream.until_close()
        stream.assert_data_then_one_close()
        self.assertEqual(bytes(stream.data), last_words)
        self.assertNotIn(closing_id, sockets)
        await wait_until(lambda: len(client.stream(service, streaming_id).data) >= 1 * MiB)
        await client.settle()
        self.assertFalse(client.raw.closed.called)
        self.assertIn(session, live_sessions(site))
        client.assert_one_response_each()

    async def test_streams_share_a_slow_websocket_fairly(self) -> None:
        """50 remotes send without pause on one session whose client reads in stalls:
        by bytes received, every stream gets its share (Jain index >= 0.95)."""
        streams = 50
        source, source_port = await listen_remote(self, HeldSource, pattern(32 * MiB, seed=5))
        site, port = await start_daemon(self)
        client, service = await manager(self, port, raw=await raw_client_small(self, port))
        session = only(live_sessions(site))
        shrink_send_buffer_of(session.transport)
        ids = [await client.open_ok(service, source_port) for _ in range(streams)]
        counts = dict.fromkeys(ids, 0)
        received = [0]
        stall_every, next_stall = 512 * KiB, [512 * KiB]
        stalls: list[defer.Deferred[None]] = []

        async def stall() -> None:
            # The client stops reading until the daemon's WebSocket is full.
            client.raw.transport.pauseProducing()
            await wait_until(lambda: session.congested or client.raw.closed.called)
            client.raw.transport.resumeProducing()

        def counter(socket_id: int) -> object:
            def sink(data: bytes) -> None:
                counts[socket_id] += len(data)
                received[0] += len(data)
                if received[0] >= next_stall[0]:
                    next_stall[0] += stall_every
                    stalls.append(defer.ensureDeferred(stall()))

            return sink

        for socket_id in ids:
            client.stream(service, socket_id).data_sink = counter(socket_id)  # type: ignore[assignment]
            await client.enable(service, socket_id, Event.DATA)
        for connection in list(source.connections):
            assert isinstance(connection, HeldSource)
            connection.start()
        # Each stream is far from its end (32 MiB) when we look.
        target = streams * 256 * KiB
        await wait_until(lambda: received[0] >= target, timeout=60)
        snapshot = [counts[i] for i in ids]
        await defer.gatherResults(stalls)
        fairness = jain_index(snapshot)
        self.assertGreater(len(stalls), 5)
        self.assertEqual([i for i, n in zip(ids, snapshot, strict=True) if n == 0], [])
        self.assertGreaterEqual(fairness, 0.95, sorted(snapshot))
        self.assertEqual(
            [
                e.reply
                for s in ids
                for e in client.stream(service, s).events
                if e.reply is not Reply.DATA_EVENT
            ],
            [],
        )
