"""Attacks before authentication, and on the WebSocket itself, against a real daemon.

Cross-site WebSocket hijacking (Origin), the lockout by unauthenticated
WebSockets, unfinished huge first messages, failed-handshake budgets, ping
floods, the absolute handshake deadline, keepalive pings and idle sessions.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase

from tcpsocket.messages import HasService, decode_base, encode_handshake, encode_request
from tests.security_helpers import (
    LogCapture,
    client_frame,
    http_exchange,
    raw_tcp,
    rss,
    status,
    upgrade_request,
)
from tests.session_helpers import MiB, live_sessions, manager, session
from tests.support import (
    TOKEN,
    Echo,
    RawClient,
    listen_remote,
    raw_client,
    raw_client_on,
    start_daemon,
    wait_until,
)


async def pause(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d


async def client_from(test: Any, port: int, bind: str = "127.0.0.1", **kw: Any) -> RawClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(bind, 0))
    return await raw_client_on(test, endpoint, f"ws://127.0.0.1:{port}/ws", **kw)


class OriginTests(TestCase):
    async def upgrade(self, port: int, origin: bytes | None) -> int:
        extra = b"" if origin is None else b"Origin: " + origin + b"\r\n"
        return status(await http_exchange(self, port, upgrade_request(extra=extra)))

    async def test_cross_site_page_refused_before_the_handshake(self) -> None:
        site, port = await start_daemon(self, allowed_origins=frozenset())
        logs = LogCapture(self)
        self.assertEqual(await self.upgrade(port, b"https://evil.example"), 403)
        await wait_until(lambda: len(site.admission) == 0)
        mismatch = logs.matching("origin mismatch")
        self.assertEqual(len(mismatch), 1, logs.lines)
        self.assertIn("https://evil.example", mismatch[0])
        self.assertFalse(logs.matching("invalid token"))

    async def test_own_pages_and_native_clients_allowed(self) -> None:
        _, port = await start_daemon(self, allowed_origins=frozenset())
        self.assertEqual(await self.upgrade(port, b"http://127.0.0.1"), 101)
        self.assertEqual(await self.upgrade(port, None), 101)
        client = await client_from(self, port, origin=f"http://127.0.0.1:{port}")
        await session(self, port, raw=client)
        # Same host, another port: another origin.
        self.assertEqual(await self.upgrade(port, b"http://127.0.0.1:1"), 403)

    async def test_listed_origins_and_any(self) -> None:
        _, port = await start_daemon(self, allowed_origins=frozenset({"https://App.example"}))
        self.assertEqual(await self.upgrade(port, b"https://app.example"), 101)
        self.assertEqual(await self.upgrade(port, b"https://other.example"), 403)
        _, any_port = await start_daemon(self, allowed_origins=frozenset({"*"}))
        self.assertEqual(await self.upgrade(any_port, b"https://other.example"), 101)

    async def test_origin_is_escaped_in_logs(self) -> None:
        _, port = await start_daemon(self, allowed_origins=frozenset())
        logs = LogCapture(self)
        # U+202E (right-to-left override) would reverse what follows on a terminal;
        # headers arrive as Latin-1, where its UTF-8 bytes hold a C1 control, \x80.
        origin = "https://e\u202evil.example" + "x" * 500
        self.assertEqual(await self.upgrade(port, origin.encode()), 403)
        (line,) = logs.matching("origin mismatch")
        self.assertNotIn("\x80", line)
        self.assertIn("\\x80", line)
        self.assertIn("(523 chars)", line)
        self.assertLess(len(line), 400)


class LockoutTests(TestCase):
    async def test_1024_unauthenticated_websockets_do_not_lock_out(self) -> None:
        site, port = await start_daemon(self)
        squatters = [await raw_client(self, port) for _ in range(1024)]
        self.assertLessEqual(len(site.admission), site.session_factory.config.max_pending)
        # A legitimate client from the same address still gets a session.
        client = await session(self, port)
        await client.settle()
        dropped = sum(c.closed.called for c in squatters)
        self.assertGreaterEqual(dropped, 1024 - 128, "the oldest pending ones made room")

    async def test_pending_connections_do_not_take_session_slots(self) -> None:
        site, port = await start_daemon(self, max_sessions=1)
        for _ in range(5):
            await raw_client(self, port)
        first = await session(self, port)
        await first.settle()
        response = await http_exchange(self, port, upgrade_request())
        self.assertEqual(status(response), 503, "authenticated sessions are what is capped")
        await wait_until(lambda: len(site.admission) == 5)

    async def test_token_accepted_when_full_gets_1013(self) -> None:
        _, port = await start_daemon(self, max_sessions=1)
        first, second = await raw_client(self, port), await raw_client(self, port)
        await session(self, port, raw=first)
        second.send(encode_handshake(TOKEN))
        self.assertEqual(await second.next(), b"\x00")
        self.assertEqual(await second.closed, (1013, "too many sessions"))

    async def test_handshake_deadline_runs_from_tcp_accept(self) -> None:
        site, port = await start_daemon(self, handshake_timeout=5.0)
        client = await raw_tcp(self, port)
        await wait_until(lambda: len(site.admission) == 1)
        await pause(1.0)
        client.write(upgrade_request())
        await wait_until(lambda: len(live_sessions(site)) == 1)
        (protocol,) = live_sessions(site)
        deadline = protocol._handshake_timer.getTime()
        self.assertLessEqual(deadline, protocol._pending.accepted + 5.0 + 0.01)
        self.assertLess(deadline, reactor.seconds() + 5.0 - 0.5)  # type: ignore[attr-defined]


class FirstMessageTests(TestCase):
    async def test_100_unfinished_16_mib_first_messages_stay_small(self) -> None:
        site, port = await start_daemon(self)
        logs = LogCapture(self)
        before = rss()
        clients = [await raw_client(self, port) for _ in range(100)]
        for client in clients:
            # A 16 MiB binary message announced, 64 KiB of it sent, the rest never.
            client.transport.write(client_frame(2, b"\0" * 64 * 1024, length=16 * MiB))
        closes = [await c.closed for c in clients]
        self.assertEqual({code for code, _ in closes}, {1009})
        # Bound: 100 x 16 MiB was 1.6 GiB; what is left is buffers, well under 32 MiB.
        self.assertLess(rss() - before, 32 * MiB)
        await wait_until(lambda: len(site.admission) == 0)
        # Autobahn's lines about these clients count against the pre-auth log budget.
        self.assertEqual(len(logs.matching("failing WebSocket connection (code=1009)")), 20)

    async def test_first_message_limit_lifted_after_the_token(self) -> None:
        _, port = await start_daemon(self, handshake_message_size=64)
        raw = await raw_client(self, port)
        raw.send(encode_handshake("x" * 100))
        code, _ = await raw.closed
        self.assertEqual(code, 1009)
        client = await session(self, port)
        # A 1 KiB request after the handshake: answered (HasService of a long name).
        await client.request(0, 0, HasService("n" * 1024).encode())


class FragmentTests(TestCase):
    async def test_endless_empty_fragments_closed(self) -> None:
        site, port = await start_daemon(self)
        client = await session(self, port)
        (protocol,) = live_sessions(site)
        fragments = client_frame(2, b"", fin=False) + client_frame(0, b"", fin=False) * 100_000
        client.raw.transport.write(fragments)
        code, reason = await client.raw.closed
        self.assertEqual((code, reason), (1009, "a message of more than 4096 fragments"))
        # What was kept of that message: at most one read's worth of list entries.
        self.assertLess(len(protocol.message_data or ()), 20_000)

    async def test_fragmented_message_within_the_limit(self) -> None:
        _, port = await start_daemon(self)
        client = await session(self, port)
        request = encode_request(0, 0, 1001, HasService("x" * 2000).encode())
        pieces = [request[i : i + 100] for i in range(0, len(request), 100)]
        frames = client_frame(2, pieces[0], fin=False)
        frames += b"".join(client_frame(0, piece, fin=False) for piece in pieces[1:-1])
        frames += client_frame(0, pieces[-1])
        client.raw.transport.write(frames)
        await client.settle()
        (answer,) = client.unexpected  # the response to request 1001, not awaited by the client
        self.assertEqual(decode_base(answer).request, 1001)


class FailedHandshakeTests(TestCase):
    async def attempt(self, port: int, token: str, bind: str = "127.0.0.1") -> bytes:
        raw = await client_from(self, port, bind)
        raw.send(encode_handshake(token))
        ack = await raw.next()
        assert isinstance(ack, bytes)
        if ack == b"\x00":
            await raw.closed
        return ack

    async def test_failures_are_budgeted_per_address(self) -> None:
        _, port = await start_daemon(self, failed_handshakes_per_minute=3)
        logs = LogCapture(self)
        for _ in range(3):
            self.assertEqual(await self.attempt(port, "wrong-token-0123456789"), b"\x00")
        # Out of budget: not even the right token is checked from this address.
        self.assertEqual(await self.attempt(port, TOKEN), b"\x00")
        self.assertTrue(logs.matching("too many failed handshakes"))
        # Another address is not affected.
        self.assertEqual(await self.attempt(port, TOKEN, bind="127.0.0.2"), b"\x01")

    async def test_failure_log_lines_are_budgeted(self) -> None:
        _, port = await start_daemon(self, failed_handshakes_per_minute=1000)
        logs = LogCapture(self)
        for _ in range(30):
            await self.attempt(port, "wrong-token-0123456789")
        self.assertEqual(len(logs.matching("invalid token")), 20)


class PingTests(TestCase):
    async def test_ping_flood_closes_that_connection_only(self) -> None:
        _, port = await start_daemon(self)
        canary = await session(self, port)
        flooder = await session(self, port)
        flooder.raw.transport.write(client_frame(9) * 100_000)
        for _ in range(20):
            await canary.settle()
        code, _ = await flooder.raw.closed
        self.assertIn(code, (1008, None))
        await canary.settle()

    async def test_pings_within_budget_are_answered(self) -> None:
        _, port = await start_daemon(self)
        client = await session(self, port)
        pongs: list[bytes] = []
        client.raw.onPong = pongs.append  # type: ignore[method-assign]
        for i in range(10):
            client.raw.sendPing(b"%d" % i)
        await wait_until(lambda: len(pongs) == 10)
        await client.settle()


class _Deaf(RawClient):
    """Does not answer pings."""

    def onPing(self, payload: bytes) -> None:
        pass


class KeepaliveTests(TestCase):
    async def test_client_that_stops_answering_pings_is_dropped(self) -> None:
        site, port = await start_daemon(self, keepalive_interval=0.2, keepalive_timeout=0.2)
        healthy = await session(self, port)
        deaf = await session(self, port)
        deaf.raw.onPing = _Deaf.onPing.__get__(deaf.raw)  # type: ignore[method-assign]
        await deaf.raw.closed
        await pause(0.6)
        await healthy.settle()
        self.assertEqual(len(live_sessions(site)), 1)

    async def test_idle_session_closed(self) -> None:
        _, port = await start_daemon(self, idle_timeout=0.5)
        client = await session(self, port)
        self.assertEqual(await client.raw.closed, (1001, "idle timeout"))

    async def test_session_with_a_socket_not_idle(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        _, port = await start_daemon(self, idle_timeout=0.3)
        client, service = await manager(self, port)
        await client.open_ok(service, remote_port)
        await pause(1.0)
        self.assertFalse(client.raw.closed.called)
        await client.settle()

    async def test_active_session_not_idle(self) -> None:
        _, port = await start_daemon(self, idle_timeout=0.5)
        client = await session(self, port)
        for _ in range(8):
            await pause(0.15)
            await client.settle()
        self.assertFalse(client.raw.closed.called)
