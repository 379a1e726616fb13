"""Budgets after authentication, against a real daemon on loopback."""

from __future__ import annotations

import resource
import socket
import threading
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from tcpsocket.budgets import Budgets, raise_nofile_limit
from tcpsocket.config import ServerConfig
from tcpsocket.messages import GetService, GetServiceResult, decode_core_response
from tcpsocket.resolve import LookupRefused, Lookups
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import Event, Method, Reply
from tcpsocket.tokens import TokenStore
from tests.session_helpers import (
    KiB,
    MiB,
    PausedSink,
    SessionClient,
    free_port,
    listen_small,
    live_sessions,
    manager,
    only,
    pattern,
    session,
    shrink_send_buffer_of,
)
from tests.support import (
    Echo,
    NameTable,
    listen_remote,
    start_daemon,
    start_twistd,
    wait_until,
)


async def open_detail(client: SessionClient, service: int, host: str, port: int) -> str:
    reply = await client.open(service, host, port)
    assert reply.reply is Reply.OPEN_ERROR, reply
    assert isinstance(reply.detail, str)
    return reply.detail


class LookupTests(TestCase):
    async def test_lookups_that_never_answer_do_not_starve_other_sessions(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        resolver = NameTable({"ok.example": ["127.0.0.1"]}, silent=frozenset({"hang.example"}))
        self.addCleanup(resolver.answer_silent)
        site, port = await start_daemon(
            self,
            resolver=resolver,
            connect_timeout=30,
            max_lookups_per_session=4,
            max_lookups=12,
        )
        attacker, service = await manager(self, port)
        pending = [
            defer.ensureDeferred(attacker.open(service, "hang.example", 80)) for _ in range(40)
        ]
        replies = await defer.gatherResults(pending[4:])
        for reply in replies:
            self.assertEqual(reply.reply, Reply.OPEN_ERROR)
            self.assertEqual(
                reply.detail, "too many name lookups in progress in this session (limit 4)"
            )
        self.assertEqual(resolver.asked, ["hang.example"] * 4)
        # Another session's lookups still work at once.
        victim, victim_service = await manager(self, port)
        await victim.open_ok(victim_service, remote_port, host="ok.example")
        # The held lookups end when the resolver answers (here: with nothing).
        resolver.answer_silent()
        for reply in await defer.gatherResults(pending[:4]):
            self.assertEqual(reply.detail, "host name lookup failed (hang.example port 80)")
        self.assertEqual(site.session_factory.budgets.lookups.in_progress, 0)

    async def test_global_lookup_cap_answers_at_once(self) -> None:
        resolver = NameTable(silent=frozenset({"hang.example"}))
        self.addCleanup(resolver.answer_silent)
        _, port = await start_daemon(
            self, resolver=resolver, max_lookups_per_session=2, max_lookups=2
        )
        first, service = await manager(self, port)
        held = [defer.ensureDeferred(first.open(service, "hang.example", 80)) for _ in range(2)]
        second, other = await manager(self, port)
        detail = await open_detail(second, other, "hang.example", 80)
        self.assertEqual(detail, "too many name lookups in progress (daemon limit 2)")
        resolver.answer_silent()
        await defer.gatherResults(held)

    async def test_lookup_timeout_answers_the_open(self) -> None:
        resolver = NameTable(silent=frozenset({"hang.example"}))
        self.addCleanup(resolver.answer_silent)
        _, port = await start_daemon(self, resolver=resolver, connect_timeout=0.2)
        client, service = await manager(self, port)
        detail = await open_detail(client, service, "hang.example", 80)
        self.assertEqual(detail, "connect timeout (hang.example port 80)")


class SocketBudgetTests(TestCase):
    async def test_total_sockets_across_sessions(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        site, port = await start_daemon(self, max_sockets=3)
        first, service = await manager(self, port)
        await first.open_ok(service, remote_port)
        kept = await first.open_ok(service, remote_port, events=(Event.CLOSE,))
        second, other = await manager(self, port)
        await second.open_ok(other, remote_port)
        detail = await open_detail(second, other, "127.0.0.1", remote_port)
        self.assertEqual(detail, "too many sockets open in the daemon (limit 3)")
        self.assertTrue(await first.release(service, kept))
        await second.open_ok(other, remote_port)
        budgets = site.session_factory.budgets
        self.assertEqual(budgets.sockets, 3)
        # Every socket is given back when the sessions end.
        first.raw.sendClose(1000)
        second.raw.sendClose(1000)
        await wait_until(lambda: budgets.sockets == 0)

    async def test_services_per_session(self) -> None:
        site, port = await start_daemon(self, max_services_per_session=3)
        client = await session(self, port)
        ids = [await client.get_service() for _ in range(3)]
        content = await client.request(
            0, 0, GetService("TcpSocketManager", TCPSOCKET_FINGERPRINT).encode()
        )
        response = decode_core_response(content)
        self.assertEqual(response.result, GetServiceResult.INTERNAL_ERROR)
        self.assertEqual(response.value, "too many services in this session (limit 3)")
        # A service object the client lets go of (api-daemon's runtime does so on
        # garbage collection) is answered false, as api-daemon does, and keeps
        # working; it makes room for a new one only once it has no socket left.
        _, remote_port = await listen_remote(self, Echo)
        kept = await client.open_ok(ids[1], remote_port, events=(Event.CLOSE,))
        self.assertFalse(await client.release(ids[1], 0))
        refused = decode_core_response(
            await client.request(
                0, 0, GetService("TcpSocketManager", TCPSOCKET_FINGERPRINT).encode()
            )
        )
        self.assertEqual(refused.result, GetServiceResult.INTERNAL_ERROR)
        self.assertFalse(await client.release(ids[0], 0))
        third = await client.get_service()
        self.assertNotIn(ids[0], only(live_sessions(site)).services)
        self.assertEqual(await client.release(ids[0], 0), False)
        # The released service with a live socket still works, and counts until
        # that socket is closed.
        self.assertEqual((await client.call(ids[1], kept, Method.CLOSE)).reply, Reply.CLOSE_SUCCESS)
        await client.stream(ids[1], kept).until_close()
        fourth = await client.get_service()
        self.assertEqual(set(only(live_sessions(site)).services), {ids[2], third, fourth})
        client.assert_one_response_each()


class UpstreamBudgetTests(TestCase):
    async def fill_until_error(self, client: SessionClient, service: int, socket_id: int) -> str:
        for seed in range(1, 1000):
            reply = await client.send(service, socket_id, pattern(128 * KiB, seed))
            if reply.reply is Reply.SEND_ERROR:
                assert reply.detail is not None
                return reply.detail
        raise AssertionError("send never failed")

    async def stalled_socket(self, site: Any, client: SessionClient, service: int) -> int:
        """A socket to a remote that does not read, with a small kernel send buffer."""
        factory, remote_port = await listen_small(self, PausedSink)
        socket_id = await client.open_ok(service, remote_port, events=tuple(Event))
        await wait_until(lambda: len(factory.connections) == 1)
        peer = only(factory.connections).transport.getPeer().port
        for daemon_session in live_sessions(site):
            for daemon_socket in daemon_session.services[service].sockets.values():
                if daemon_socket.transport.getHost().port == peer:
                    shrink_send_buffer_of(daemon_socket.transport)
        return socket_id

    async def test_per_session_upstream_bytes(self) -> None:
        site, port = await start_daemon(self, max_session_send_buffer=1 * MiB)
        client, service = await manager(self, port)
        sockets = [await self.stalled_socket(site, client, service) for _ in range(3)]
        detail = await self.fill_until_error(client, service, sockets[0])
        self.assertIn("session send buffers full", detail)
        self.assertIn(f"limit {MiB}", detail)
        # The session's other sockets share the budget; a tiny send still fits.
        detail = await self.fill_until_error(client, service, sockets[1])
        self.assertIn("session send buffers full", detail)
        held = sum(s.queued_upstream for s in site.session_factory.budgets._holding)
        self.assertLessEqual(held, MiB)
        # Another session has its own budget.
        other, other_service = await manager(self, port)
        socket_id = await self.stalled_socket(site, other, other_service)
        reply = await other.send(other_service, socket_id, pattern(128 * KiB))
        self.assertEqual(reply.reply, Reply.SEND_SUCCESS)

    async def test_total_upstream_bytes(self) -> None:
        site, port = await start_daemon(self, max_total_send_buffer=1 * MiB)
        first, service = await manager(self, port)
        socket_id = await self.stalled_socket(site, first, service)
        detail = await self.fill_until_error(first, service, socket_id)
        self.assertIn("daemon send buffers full", detail)
        second, other = await manager(self, port)
        socket_id = await self.stalled_socket(site, second, other)
        detail = await self.fill_until_error(second, other, socket_id)
        self.assertIn("daemon send buffers full", detail)
        held = sum(s.queued_upstream for s in site.session_factory.budgets._holding)
        self.assertLessEqual(held, MiB)
        # Sockets that are gone are forgotten (no reference kept).
        first.raw.sendClose(1000)
        second.raw.sendClose(1000)
        await wait_until(lambda: not site.session_factory.budgets._holding)


class NofileTests(TestCase):
    def test_raise_nofile_limit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        self.assertEqual(raise_nofile_limit(), hard)

    async def test_four_sessions_of_256_sockets_under_nofile_1024(self) -> None:
        """The attack of issue 7: under ``ulimit -n 1024``, sessions open 256 sockets each.

        With the default options, the daemon fits its session and socket caps
        to the limit: the sockets past the cap get a clean error, and a new
        client still gets its session (no EMFILE, nobody dropped).
        """
        _, remote_port = await listen_remote(self, Echo)
        number = free_port()
        collect, _ = await start_twistd(
            self, "--max-sockets-per-session", "256", port=number, nofile=1024
        )
        budgets = Budgets(ServerConfig(tokens=TokenStore()), reactor, nofile=1024)
        sessions, limit = budgets.max_sessions, budgets.max_sockets
        self.assertEqual((sessions, limit), (224, 672))
        self.assertIn(
            f"at most {sessions} sessions and {limit} remote sockets", collect.output.decode()
        )
        opened = 0
        for _ in range(4):
            client, service = await manager(self, number)
            replies = await defer.gatherResults(
                [
                    defer.ensureDeferred(client.open(service, "127.0.0.1", remote_port))
                    for _ in range(256)
                ]
            )
            for reply in replies:
                if reply.reply is Reply.OPEN_SUCCESS:
                    opened += 1
                else:
                    self.assertEqual(
                        reply.detail, f"too many sockets open in the daemon (limit {limit})"
                    )
        self.assertEqual(opened, limit)
        # A new client still gets in, and a clean error.
        other, other_service = await manager(self, number)
        detail = await open_detail(other, other_service, "127.0.0.1", remote_port)
        self.assertIn("too many sockets open in the daemon", detail)
        self.assertNotIn("Too many open files", collect.output.decode())


class DefaultResolverTests(TestCase):
    """The default resolver: getaddrinfo on the daemon's own threads (a fake getaddrinfo here)."""

    async def test_own_thread_pool_capped(self) -> None:
        release = threading.Event()
        self.addCleanup(release.set)

        names: list[str] = []

        def getaddrinfo(host: str, port: int, *args: object) -> list[tuple[object, ...]]:
            names.append(threading.current_thread().name)
            if host == "hang.example":
                release.wait(30)
                return []
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        lookups = Lookups(reactor, None, per_owner=2, total=2, getaddrinfo=getaddrinfo)
        self.addCleanup(lookups.stop)
        self.assertEqual(await lookups.lookup("a", "ok.example", 80), ["127.0.0.1"])
        hanging = [lookups.lookup(owner, "hang.example", 80) for owner in ("a", "b")]
        with self.assertRaises(LookupRefused) as refused:
            lookups.lookup("c", "ok.example", 80)
        detail = "too many name lookups in progress (daemon limit 2)"
        self.assertEqual(str(refused.exception), detail)
        # The lookups ran on the daemon's pool; the reactor's is free.
        self.assertTrue(all("tcpsocket-lookups" in name for name in names), names)
        self.assertEqual(await threads.deferToThread(lambda: 7), 7)
        release.set()
        for pending in hanging:
            with self.assertRaises(LookupRefused):
                await pending
        self.assertEqual(lookups.in_progress, 0)
        self.assertEqual(await lookups.lookup("c", "ok.example", 80), ["127.0.0.1"])
