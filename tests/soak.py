"""Soak: many sessions echoing random data through a real daemon, with clients coming and going.

``python3 -m tests.soak --minutes 3`` runs the full size (100 sessions x 20
sockets) against a ``twistd tcpsocket`` process and prints its figures;
``tests/test_soak.py`` runs a short version in the suite.

Every socket sends random chunks to a loopback echo server and keeps a
running SHA-256 of what it sent and of what came back; at the end both must
match, byte for byte.  Meanwhile churn clients connect, open a socket, send,
and vanish (half of them without a close frame).  The daemon's RSS is
sampled every second: after the warm-up (the first third) it must stay flat.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import sys
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import UNIXClientEndpoint

from tcpsocket.services.tcpsocket.messages import Event, Reply
from tests.session_helpers import KiB, MiB, SessionClient, manager
from tests.support import Remote, listen_remote, raw_client_on, start_twistd

#: Bytes a socket may have in flight (sent, not yet echoed back).
WINDOW = 128 * KiB


class PlainEcho(Remote):
    """Echoes without keeping what it received."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


@dataclass
class EchoStream:
    """One socket sending random data and checking what comes back."""

    client: SessionClient
    service: int
    socket_id: int
    rng: random.Random
    sent: int = 0
    received: int = 0
    sent_hash: Any = field(default_factory=hashlib.sha256)
    received_hash: Any = field(default_factory=hashlib.sha256)
    _room: defer.Deferred[None] | None = None

    def __post_init__(self) -> None:
        self.client.stream(self.service, self.socket_id).data_sink = self.on_data

    def on_data(self, data: bytes) -> None:
        self.received_hash.update(data)
        self.received += len(data)
        if self._room is not None and self.sent - self.received <= WINDOW:
            room, self._room = self._room, None
            room.callback(None)

    async def run(self, until: float) -> None:
        while reactor.seconds() < until:  # type: ignore[attr-defined]
            chunk = self.rng.randbytes(self.rng.randint(1, 16 * KiB))
            self.sent_hash.update(chunk)
            self.sent += len(chunk)
            reply = await self.client.send(self.service, self.socket_id, chunk)
            if reply.reply is not Reply.SEND_SUCCESS:
                raise AssertionError(f"send failed: {reply}")
            if self.sent - self.received > WINDOW:
                self._room = defer.Deferred()
                await self._room
        while self.received < self.sent:
            self._room = defer.Deferred()
            await self._room

    @property
    def intact(self) -> bool:
        return self.received == self.sent and (
            self.sent_hash.digest() == self.received_hash.digest()
        )


class Cleanups:
    """What ``tests.support`` helpers need from a test, outside trial."""

    def __init__(self) -> None:
        self._calls: list[Any] = []

    def addCleanup(self, call: Any, *args: Any, **kwargs: Any) -> None:
        self._calls.append((call, args, kwargs))

    async def run(self) -> None:
        while self._calls:
            call, args, kwargs = self._calls.pop()
            await defer.maybeDeferred(call, *args, **kwargs)


def raise_nofile(wanted: int = 16384) -> None:
    """Raise this process's descriptor limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no RSS for {pid}")


async def soak(
    test: Any,
    path: str,
    pid: int,
    seconds: float,
    sessions: int = 100,
    sockets: int = 20,
    churn_every: float = 0.05,
) -> dict[str, Any]:
    """Run the soak against the daemon listening at ``path`` (process ``pid``); its figures."""
    echo, echo_port = await listen_remote(test, PlainEcho)
    endpoint = UNIXClientEndpoint(reactor, path)

    async def open_session(index: int) -> list[EchoStream]:
        raw = await raw_client_on(test, endpoint)
        client, service = await manager(test, 0, raw=raw)
        rng = random.Random(index)
        streams = []
        for _ in range(sockets):
            socket_id = await client.open_ok(service, echo_port, events=(Event.DATA,))
            streams.append(EchoStream(client, service, socket_id, random.Random(rng.random())))
        return streams

    opened = await defer.gatherResults(
        [defer.ensureDeferred(open_session(i)) for i in range(sessions)]
    )
    streams = [s for group in opened for s in group]
    start = reactor.seconds()  # type: ignore[attr-defined]
    until = start + seconds
    samples: list[tuple[float, float]] = []
    churn = {"sessions": 0, "dropped": 0, "failed": 0}

    def sample() -> None:
        samples.append((reactor.seconds() - start, rss_mib(pid)))  # type: ignore[attr-defined]

    async def churner(number: int) -> None:
        try:
            raw = await raw_client_on(test, endpoint)
            client, service = await manager(test, 0, raw=raw)
            socket_id = await client.open_ok(service, echo_port, events=(Event.DATA,))
            await client.send(service, socket_id, random.Random(number).randbytes(8 * KiB))
            churn["sessions"] += 1
            if number % 2:
                raw.transport.abortConnection()  # vanishes: no close frame
                churn["dropped"] += 1
            else:
                raw.sendClose(1000)
            await raw.closed
        except Exception:
            churn["failed"] += 1

    churners: list[defer.Deferred[None]] = []
    count = [0]

    def spawn() -> None:
        if reactor.seconds() < until:  # type: ignore[attr-defined]
            count[0] += 1
            churners.append(defer.ensureDeferred(churner(count[0])))

    sampler = task.LoopingCall(sample)
    sampler.start(1.0)
    spawner = task.LoopingCall(spawn)
    spawner.start(churn_every)
    try:
        await defer.gatherResults([defer.ensureDeferred(s.run(until)) for s in streams])
    finally:
        spawner.stop()
        sampler.stop()
    await defer.gatherResults(churners)
    elapsed = reactor.seconds() - start  # type: ignore[attr-defined]
    for group in opened:
        group[0].client.raw.sendClose(1000)
        await group[0].client.raw.closed
    total = sum(s.sent for s in streams)
    third = [rss for t, rss in samples if seconds / 3 <= t <= 2 * seconds / 3]
    last = [rss for t, rss in samples if t > 2 * seconds / 3]
    return {
        "sessions": sessions,
        "sockets": len(streams),
        "seconds": round(elapsed, 1),
        "bytes_echoed": total,
        "MiB_per_s_each_way": round(total / MiB / elapsed, 1),
        "corrupted_or_lost_streams": sum(not s.intact for s in streams),
        "churn_sessions": churn["sessions"],
        "churn_dropped_without_close": churn["dropped"],
        "churn_failed": churn["failed"],
        "rss_mib_first": round(samples[0][1], 1) if samples else None,
        "rss_mib_middle_max": round(max(third), 1) if third else None,
        "rss_mib_last_max": round(max(last), 1) if last else None,
        "rss_mib_peak": round(max(r for _, r in samples), 1) if samples else None,
        "echo_connections_left": len(echo.connections),
    }


def rss_flat(figures: dict[str, Any]) -> bool:
    """After the warm-up, RSS does not grow: the last third stays within 10% + 16 MiB."""
    middle, last = figures["rss_mib_middle_max"], figures["rss_mib_last_max"]
    return bool(middle and last and last <= middle * 1.10 + 16)


async def run_against_twistd(test: Any, seconds: float, **sizes: Any) -> dict[str, Any]:
    raise_nofile()
    daemon, path = await start_twistd(test, "--max-sockets-per-session", "1024")
    return await soak(test, path, daemon.process.pid, seconds, **sizes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--sockets", type=int, default=20)
    args = parser.parse_args(argv)

    async def run(_: Any) -> None:
        cleanups = Cleanups()
        try:
            figures = await run_against_twistd(
                cleanups, args.minutes * 60, sessions=args.sessions, sockets=args.sockets
            )
        finally:
            await cleanups.run()
        figures["rss_flat"] = rss_flat(figures)
        print(json.dumps(figures, indent=2))
        if figures["corrupted_or_lost_streams"] or not figures["rss_flat"]:
            sys.exit(1)

    task.react(lambda r: defer.ensureDeferred(run(r)))


if __name__ == "__main__":
    main()
