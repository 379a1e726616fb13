"""Faults on real loopback servers: each ends as doc/behaviour.md says, descriptors released.

Also the daemon's log lines for them (close codes, who closed first, failed
opens), read from ``twisted.logger`` events.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import (
    IHostnameResolver,
)
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tcpsocket.services.tcpsocket.messages import Event, Method, Reply, SocketReply
from tests.session_helpers import (
    KiB,
    MiB,
    PausedSink,
    Recording,
    black_hole,
    fill,
    listen_small,
    live_sessions,
    manager,
    only,
    pattern,
    shrink_send_buffer,
)
from tests.support import (
    NameTable,
    Remote,
    capture_logs,
    listen_remote,
    open_sockets,
    start_daemon,
    wait_until,
)

ALL_EVENTS = (Event.DATA, Event.DRAIN, Event.ERROR, Event.CLOSE)


def formatted(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


class ResetMidTransfer(Recording):
    """Sends 1 MiB, then resets the connection."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(pattern(MiB, seed=3))  # type: ignore[union-attr]
        reactor.callLater(0, self.transport.abortConnection)  # type: ignore[attr-defined,union-attr]


class HalfClose(Recording):
    """Sends a line, half-closes, and keeps reading."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(b"last line\r\n")  # type: ignore[union-attr]
        self.transport.loseWriteConnection()  # type: ignore[union-attr]


@implementer(IHostnameResolver)
class RemoteFaultTests(TestCase):
    async def finish(self, client: Any, baseline: int) -> None:
        """The client leaves; every descriptor the daemon used is released."""
        client.raw.sendClose(1000)
        await client.raw.closed
        await wait_until(lambda: open_sockets() <= baseline)

    async def test_remote_resets_mid_transfer(self) -> None:
        logs = capture_logs(self)
        _, port = await start_daemon(self)
        _, remote_port = await listen_remote(self, ResetMidTransfer)
        baseline = open_sockets()
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        stream = client.stream(service, socket_id)
        await stream.until_close()
        kinds = stream.kinds()
        self.assertEqual(kinds[-2:], [Reply.ERROR_EVENT, Reply.CLOSE_EVENT])
        self.assertEqual(set(kinds[:-2]) - {Reply.DATA_EVENT}, set())
        self.assertEqual(stream.events[-2].value, "connection reset by peer")
        # What arrived is a prefix of what was sent (the reset may discard the rest).
        self.assertEqual(bytes(stream.data), pattern(MiB, seed=3)[: len(stream.data)])
        self.assertIn("closed by the remote", "\n".join(formatted(logs)))
        await self.finish(client, baseline)

    async def test_remote_half_closes(self) -> None:
        site, port = await start_daemon(self)
        factory, remote_port = await listen_remote(self, HalfClose)
        baseline = open_sockets()
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        stream = client.stream(service, socket_id)
        await stream.until_close()
        stream.assert_data_then_one_close()
        self.assertEqual(bytes(stream.data), b"last line\r\n")
        remote = factory.connections[0] if factory.connections else None
        if remote is not None:
            await remote.lost
        self.assertEqual(only(live_sessions(site)).sockets_in_use, 0)
        await self.finish(client, baseline)

    async def test_remote_accepts_and_never_reads(self) -> None:
        site, port = await start_daemon(self, close_timeout=0.5, max_send_buffer=1 * MiB)
        factory, remote_port = await listen_small(self, PausedSink)
        baseline = open_sockets()
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        shrink_send_buffer(site, service, socket_id)
        await fill(client, service, socket_id, chunk=64 * KiB)
        # Past the hard cap, send fails with the reason.
        refused = None
        for _ in range(64):
            reply = await client.send(service, socket_id, b"z" * 64 * KiB)
            if reply.reply is Reply.SEND_ERROR:
                refused = reply
                break
        assert refused is not None and refused.detail is not None
        self.assertIn("send buffer full", refused.detail)
        # close cannot flush: after the close timeout, ERROR says what was lost, then CLOSE.
        await client.call(service, socket_id, Method.CLOSE)
        stream = client.stream(service, socket_id)
        await stream.until_close()
        error = stream.events[-2]
        self.assertEqual(error.reply, Reply.ERROR_EVENT)
        assert isinstance(error.value, str)
        self.assertTrue(error.value.startswith("close timed out after 0.5 s; "), error.value)
        self.assertIn("accepted bytes were not delivered", error.value)
        self.assertEqual(stream.events[-1], SocketReply(Reply.CLOSE_EVENT))
        only(factory.connections).resume()  # so that the remote sees the reset
        await self.finish(client, baseline)

    async def test_remote_never_accepts(self) -> None:
        site, port = await start_daemon(self, connect_timeout=0.3)
        hole = black_hole(self)
        baseline = open_sockets()
        client, service = await manager(self, port)
        reply = await client.open(service, "127.0.0.1", hole)
        self.assertEqual(reply.reply, Reply.OPEN_ERROR)
        self.assertEqual(reply.detail, f"connect timeout (127.0.0.1 port {hole})")
        self.assertEqual(only(live_sessions(site)).sockets_in_use, 0)
        await self.finish(client, baseline)

    async def test_name_lookup_fails(self) -> None:
        logs = capture_logs(self)
        resolver = NameTable()  # answers every name with no address
        _, port = await start_daemon(self, resolver=resolver)
        baseline = open_sockets()
        client, service = await manager(self, port)
        reply = await client.open(service, "nowhere.example", 25)
        self.assertEqual(reply.reply, Reply.OPEN_ERROR)
        self.assertEqual(reply.detail, "host name lookup failed (nowhere.example port 25)")
        self.assertEqual(resolver.asked, ["nowhere.example"])
        lines = formatted(logs)
        self.assertIn(
            "open of test to nowhere.example port 25 failed: host name lookup failed", lines
        )
        await self.finish(client, baseline)

    async def test_name_lookup_never_answers(self) -> None:
        resolver = NameTable(silent=frozenset({"silent.example"}))
        self.addCleanup(resolver.answer_silent)
        site, port = await start_daemon(self, resolver=resolver, connect_timeout=0.3)
        baseline = open_sockets()
        client, service = await manager(self, port)
        reply = await client.open(service, "silent.example", 25)
        self.assertEqual(reply.reply, Reply.OPEN_ERROR)
        self.assertEqual(reply.detail, "connect timeout (silent.example port 25)")
        self.assertEqual(only(live_sessions(site)).sockets_in_use, 0)
        await self.finish(client, baseline)


class ClientFaultTests(TestCase):
    async def test_client_vanishes_without_a_close_frame(self) -> None:
        logs = capture_logs(self)
        site, port = await start_daemon(self)
        factory, remote_port = await listen_remote(self, Recording)
        baseline = open_sockets()
        client, service = await manager(self, port)
        for _ in range(3):
            socket_id = await client.open_ok(service, remote_port, events=ALL_EVENTS)
            await client.send(service, socket_id, b"accepted")
        # The TCP connection is dropped: no close frame.
        client.raw.transport.abortConnection()
        await client.raw.closed
        await wait_until(lambda: not live_sessions(site))
        await wait_until(lambda: not factory.connections)
        self.assertEqual(len(site.session_factory.connections), 0)
        await wait_until(lambda: open_sockets() <= baseline)
        self.assertEqual(bytes(factory.received), b"accepted" * 3)
        self.assertTrue(
            any("connection lost without a close frame" in line for line in formatted(logs))
        )


class LogTests(TestCase):
    async def test_close_codes_are_logged_as_sent(self) -> None:
        logs = capture_logs(self)
        site, port = await start_daemon(self, max_message_size=1024)
        client, _ = await manager(self, port)
        client.raw.send(b"\0" * 4096)  # too big: the daemon closes with 1009
        code, _ = await client.raw.closed
        self.assertEqual(code, 1009)
        await wait_until(lambda: not live_sessions(site))
        ended = [e for e in logs if "ended ({how})" in e.get("log_format", "")]
        self.assertEqual(len(ended), 1)
        self.assertEqual(ended[0]["close_code"], 1009)
        self.assertEqual(ended[0]["closed_by"], "the daemon")
        self.assertIn("code 1009", formatted(ended)[0])
        self.assertIn("closed by the daemon", formatted(ended)[0])

    async def test_no_factory_noise_and_who_closed_first(self) -> None:
        logs = capture_logs(self)
        _, port = await start_daemon(self)
        factory, remote_port = await listen_remote(self, Remote)
        client, service = await manager(self, port)
        first = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        second = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        await client.call(service, first, Method.CLOSE)
        await client.stream(service, first).until_close()
        factory.connections[-1].transport.loseConnection()  # type: ignore[union-attr]
        await client.stream(service, second).until_close()
        lines = formatted(logs)
        text = "\n".join(lines)
        # (The test's own factories still say so; the daemon's per-socket ones do not.)
        self.assertNotIn("_SocketFactory", text)
        self.assertNotIn("_WrappingFactory", text)
        self.assertIn("Starting factory <tests.support.RemoteFactory", text)
        self.assertNotIn("closed after", text)
        self.assertEqual(len([x for x in lines if "closed by the client" in x]), 1, text)
        self.assertEqual(len([x for x in lines if "closed by the remote" in x]), 1, text)
