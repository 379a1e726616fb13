"""Memory comes back when clients leave: no reference cycles hold sessions or sockets.

Two checks: in this process with the garbage collector off, every daemon
object of a finished session is freed by reference counting alone; and a real
``twistd tcpsocket`` process returns near its baseline RSS after 50 sessions x
4 sockets x 4 MiB echoed, without any forced collection.
"""

from __future__ import annotations

import gc
import os
import weakref
from typing import Any
from unittest import mock

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.memory import HeapTrimmer
from tcpsocket.remote import RemoteSocket
from tcpsocket.services.tcpsocket.messages import Event
from tcpsocket.services.tcpsocket.service import TcpSocketManagerService
from tcpsocket.session import SessionProtocol
from tests.session_helpers import MiB, manager, pattern, unix_manager
from tests.support import (
    Echo,
    Reset,
    listen_remote,
    start_daemon,
    start_twistd,
    wait_until,
)


def tracking(cls: type, alive: list[weakref.ref[Any]]) -> Any:
    """Patch ``cls.__init__`` so that every instance is recorded by weak reference."""
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        alive.append(weakref.ref(self))

    return mock.patch.object(cls, "__init__", init)


async def turns(n: int = 5) -> None:
    for _ in range(n):
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)  # type: ignore[attr-defined]
        await d


class CycleTests(TestCase):
    async def test_finished_sessions_are_freed_without_the_garbage_collector(self) -> None:
        _, echo_port = await listen_remote(self, Echo)
        _, reset_port = await listen_remote(self, Reset)
        site, port = await start_daemon(self)
        alive: list[weakref.ref[Any]] = []
        patches = [
            tracking(c, alive) for c in (SessionProtocol, TcpSocketManagerService, RemoteSocket)
        ]
        for patch in patches:
            patch.start()
            self.addCleanup(patch.stop)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for ending in ("close", "drop", "release"):
            client, service = await manager(self, port)
            ids = [await client.open_ok(service, echo_port, events=(Event.DATA,)) for _ in range(3)]
            reset = await client.open_ok(service, reset_port, events=(Event.DATA, Event.CLOSE))
            await client.send(service, reset, b"x")
            for socket_id in ids:
                await client.send(service, socket_id, pattern(MiB))
            await wait_until(
                lambda c=client, s=service, i=ids: all(len(c.stream(s, n).data) == MiB for n in i)
            )
            if ending == "close":
                client.raw.sendClose(1000)
            elif ending == "drop":
                client.raw.dropConnection(abort=True)
            else:
                await client.release(service, 0)
                client.raw.sendClose(1000)
            await client.raw.closed
        await wait_until(
            lambda: not site.session_factory.sessions and not len(site.session_factory.connections)
        )
        await turns()
        leaked = [type(ref()).__name__ for ref in alive if ref() is not None]
        self.assertEqual(len(alive), 3 * (1 + 1 + 4))
        self.assertEqual(leaked, [])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (or its peak, ``VmHWM``), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


#: How far above its baseline the daemon's RSS may stay once every client left.
RSS_BOUND_MIB = 16


class DaemonMemoryTests(TestCase):
    async def test_rss_returns_near_baseline_after_clients_leave(self) -> None:
        sessions, sockets, size = 50, 4, 4 * MiB
        echo, echo_port = await listen_remote(self, Echo)
        daemon, path = await start_twistd(self)
        pid = daemon.process.pid

        async def run_session(seed: int) -> None:
            client, service = await unix_manager(self, path)
            ids = [
                await client.open_ok(service, echo_port, events=(Event.DATA,))
                for _ in range(sockets)
            ]
            data = pattern(size, seed)
            for socket_id in ids:
                for offset in range(0, size, MiB):
                    await client.send(service, socket_id, data[offset : offset + MiB])
            for socket_id in ids:
                stream = client.stream(service, socket_id)
                await wait_until(lambda s=stream: len(s.data) >= size, timeout=120)
                self.assertEqual(bytes(stream.data), data)
                stream.data.clear()
            client.raw.sendClose(1000)
            await client.raw.closed

        await run_session(0)  # warm-up: imports, code paths, allocator arenas
        await wait_until(lambda: not echo.connections)
        baseline, fds = rss_kib(pid), len(os.listdir(f"/proc/{pid}/fd"))
        await defer.gatherResults([defer.ensureDeferred(run_session(i)) for i in range(sessions)])
        await wait_until(lambda: not echo.connections, timeout=60)
        await turns(20)
        after, peak = rss_kib(pid), rss_kib(pid, "VmHWM")
        figures = (
            f"baseline {baseline // 1024} MiB, peak {peak // 1024} MiB, after {after // 1024} MiB"
        )
        print(f"\ndaemon RSS: {figures}")
        self.assertGreater(peak - baseline, 3 * RSS_BOUND_MIB * 1024, figures)  # a real load
        self.assertLessEqual(after - baseline, RSS_BOUND_MIB * 1024, figures)
        self.assertEqual(len(os.listdir(f"/proc/{pid}/fd")), fds)


class HeapTrimmerTests(SynchronousTestCase):
    def test_trims_when_none_is_left_else_once_per_interval(self) -> None:
        clock = Clock()
        trimmer = HeapTrimmer(clock, interval=10.0)
        trimmed: list[int] = []
        trimmer._trim = lambda pad: trimmed.append(pad) or 1
        trimmer.session_ended(3)
        trimmer.session_ended(2)  # within the interval: not again
        self.assertEqual(trimmer.trims, 1)
        trimmer.session_ended(0)  # the last one: always
        clock.advance(10)
        trimmer.session_ended(1)
        self.assertEqual((trimmer.trims, trimmed), (3, [0, 0, 0]))
