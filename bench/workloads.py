"""The workloads: bulk download/upload, 64-byte echo, 100 streams on one WebSocket,
many sockets.

Each returns a dict of plain numbers. CPU is measured from /proc around the timed part
only (connection setup and teardown excluded): the target's server process tree
(websockify's forked children included), the remote process and this client.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

from bench import procstat
from bench.client import DaemonStream, Stream
from bench.targets import Target

GiB = 1 << 30
MB = 1_000_000
CHUNK = 64 * 1024
_PAYLOAD = os.urandom(CHUNK)


class Meter:
    """Wall time and CPU of the server tree, the remote and the client over one phase."""

    def __init__(self, target: Target, remote_pid: int) -> None:
        self.target = target
        self.remote_pid = remote_pid

    def __enter__(self) -> Meter:
        self.server0 = self.target.cpu()
        self.remote0 = procstat.cpu_seconds(self.remote_pid)
        self.client0 = procstat.self_cpu_seconds()
        self.machine0 = procstat.machine_busy_seconds()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.t0
        self.server = self.target.cpu() - self.server0
        self.remote = procstat.cpu_seconds(self.remote_pid) - self.remote0
        self.client = procstat.self_cpu_seconds() - self.client0
        machine = procstat.machine_busy_seconds() - self.machine0
        # CPU used by everything else on the machine meanwhile (other jobs, kernel
        # threads): a sign that the numbers were disturbed.
        self.other = max(0.0, machine - self.server - self.remote - self.client)

    def __exit__(self, *exc: Any) -> None:
        if not hasattr(self, "wall"):
            self.stop()

    def cpu(self, per: float, unit: str) -> dict[str, float]:
        """CPU seconds of each process divided by ``per`` (e.g. GiB moved); no server
        figures for a target without a server process (direct TCP)."""
        found = {
            f"remote_cpu_{unit}": self.remote / per,
            f"client_cpu_{unit}": self.client / per,
            "client_cpu_util": self.client / self.wall if self.wall else 0.0,
            "other_cpu_util": self.other / self.wall if self.wall else 0.0,
        }
        if self.target.has_server:
            found[f"server_cpu_{unit}"] = self.server / per
            found["server_cpu_util"] = self.server / self.wall if self.wall else 0.0
        return found


def _daemon_stats(stream: Stream) -> dict[str, int]:
    return stream.stats() if isinstance(stream, DaemonStream) else {}


async def bulk_download(target: Target, remote_pid: int, size: int) -> dict[str, Any]:
    stream = await target.open()
    try:
        with Meter(target, remote_pid) as meter:
            await stream.write(b"S" + size.to_bytes(8, "big"))
            await asyncio.wait_for(stream.until(size), 600)
            meter.stop()
        if stream.received != size:
            raise AssertionError(f"download: got {stream.received} bytes, wanted {size}")
        return {
            "bytes": size,
            "seconds": meter.wall,
            "MBps": size / meter.wall / MB,
            **meter.cpu(size / GiB, "s_per_GiB"),
        }
    finally:
        await target.release(stream)


async def bulk_upload(target: Target, remote_pid: int, size: int) -> dict[str, Any]:
    stream = await target.open()
    stream.keep = bytearray()
    block = memoryview(_PAYLOAD)
    try:
        with Meter(target, remote_pid) as meter:
            await stream.write(b"K" + size.to_bytes(8, "big"))
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                await stream.write(_PAYLOAD if n == CHUNK else bytes(block[:n]))
                sent += n
            await asyncio.wait_for(stream.until(8), 600)  # the sink has every byte
            await asyncio.wait_for(stream.flushed(), 60)  # and every send was answered
            meter.stop()
        counted = int.from_bytes(stream.keep[:8], "big")
        if counted != size:
            raise AssertionError(f"upload: sink counted {counted} bytes, wanted {size}")
        return {
            "bytes": size,
            "seconds": meter.wall,
            "MBps": size / meter.wall / MB,
            **meter.cpu(size / GiB, "s_per_GiB"),
            **_daemon_stats(stream),
        }
    finally:
        await target.release(stream)


def jain_index(values: list[int] | list[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2): 1 when all equal, 1/n when one
    value has everything; 1 for no values or all zero (nothing was shared unfairly)."""
    if not values:
        return 1.0
    squares = sum(float(v) * v for v in values)
    if not squares:
        return 1.0
    total = float(sum(values))
    return total * total / (len(values) * squares)


async def many_streams_download(
    target: Target,
    remote_pid: int,
    count: int,
    size: int,
    stall_seconds: float = 10.0,
) -> dict[str, Any]:
    """``count`` streams download ``size`` bytes each at once: on one WebSocket for a
    multiplexing target (one tcpsocket session, one Wisp connection), on ``count`` plain
    connections for direct TCP.

    Reports the aggregate MB/s and the fairness at half-time, the moment half of all the
    bytes have arrived: Jain's index of the per-stream byte counts, and how many streams
    are still at 0 bytes. A transfer that makes no progress for ``stall_seconds`` is
    reported as stalled, with what had arrived.
    """
    streams = await target.open_group(count)
    try:
        total = count * size
        arrived = 0
        half: list[int] = []

        def observe(n: int) -> None:
            nonlocal arrived
            arrived += n
            if not half and arrived >= total // 2:
                half.extend(s.received for s in streams)

        for stream in streams:
            stream.observer = observe
        loop = asyncio.get_running_loop()
        with Meter(target, remote_pid) as meter:
            for stream in streams:
                await stream.write(b"S" + size.to_bytes(8, "big"))
            done = asyncio.ensure_future(
                asyncio.gather(*(s.until(size) for s in streams), return_exceptions=True)
            )
            done.add_done_callback(lambda f: f.cancelled() or f.exception())
            seen, progress_at, stalled = -1, loop.time(), False
            while not done.done():
                await asyncio.wait({done}, timeout=0.25)
                if arrived != seen:
                    seen, progress_at = arrived, loop.time()
                elif loop.time() - progress_at > stall_seconds:
                    stalled = True
                    done.cancel()
                    break
            meter.stop()
        errors = [] if stalled else [r for r in done.result() if isinstance(r, BaseException)]
        finished = sum(1 for s in streams if s.received >= size)
        result: dict[str, Any] = {
            "streams": count,
            "bytes_per_stream": size,
            "bytes": arrived,
            "seconds": meter.wall,
            "streams_finished": finished,
            "errors": len(errors),
            "error_sample": [f"{type(e).__name__}: {e}" for e in errors[:3]],
            **meter.cpu(max(arrived, 1) / GiB, "s_per_GiB"),
        }
        if stalled:
            result["stalled"] = (
                f"stalled after {arrived / MB:,.0f} of {total / MB:,.0f} MB,"
                f" {finished} of {count} streams done"
            )
        elif errors or finished < count:
            result["failed"] = f"{count - finished} of {count} streams did not finish"
        else:
            result["MBps"] = total / meter.wall / MB
        if half:
            result["half_jain"] = jain_index(half)
            result["half_streams_at_zero"] = sum(1 for b in half if b == 0)
            result["half_min_max_bytes"] = [min(half), max(half)]
        return result
    finally:
        await target.release_group(streams)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class EchoRun:
    """One socket, one ``size``-byte message in flight; timed in rounds so that the
    targets can take turns (noise on the machine then hits them alike)."""

    def __init__(self, target: Target, remote_pid: int, size: int = 64) -> None:
        self.target = target
        self.remote_pid = remote_pid
        self.message = os.urandom(size)
        self.latencies: list[int] = []
        self.expected = 0
        self.wall = self.server = self.remote = self.client = self.other = 0.0
        self.stream: Stream | None = None

    async def open(self, warmup: int = 200) -> None:
        self.stream = await self.target.open()
        self.stream.keep = bytearray()
        await self.stream.write(b"E")
        for _ in range(warmup):
            await self._round_trip()

    async def _round_trip(self) -> None:
        stream = self.stream
        assert stream is not None and stream.keep is not None
        await stream.write(self.message)
        self.expected += len(self.message)
        await asyncio.wait_for(stream.until(self.expected), 10)
        if stream.keep != self.message:
            raise AssertionError("echo: wrong bytes came back")
        stream.keep.clear()

    async def run(self, seconds: float) -> None:
        stream = self.stream
        assert stream is not None and stream.keep is not None
        loop = asyncio.get_running_loop()
        clock = time.perf_counter_ns
        message, size, latencies = self.message, len(self.message), self.latencies
        with Meter(self.target, self.remote_pid) as meter:
            stop_at = loop.time() + seconds
            while loop.time() < stop_at and len(latencies) < 5_000_000:
                t = clock()
                await stream.write(message)
                self.expected += size
                await stream.until(self.expected)
                latencies.append(clock() - t)
                if stream.keep != message:
                    raise AssertionError("echo: wrong bytes came back")
                stream.keep.clear()
            meter.stop()
        self.wall += meter.wall
        self.server += meter.server
        self.remote += meter.remote
        self.client += meter.client
        self.other += meter.other

    async def close(self) -> None:
        if self.stream is not None:
            await self.target.release(self.stream)

    def result(self) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        count = len(latencies)
        per = count / 1e6 if count else float("nan")
        wall = self.wall or float("nan")
        found = {
            "round_trips": count,
            "seconds": self.wall,
            "rt_per_s": count / wall,
            "p50_us": _percentile(latencies, 0.50) / 1000,
            "p90_us": _percentile(latencies, 0.90) / 1000,
            "p99_us": _percentile(latencies, 0.99) / 1000,
            "mean_us": statistics.fmean(latencies) / 1000 if latencies else float("nan"),
            "remote_cpu_us_per_rt": self.remote / per,
            "client_cpu_us_per_rt": self.client / per,
            "client_cpu_util": self.client / wall,
            "other_cpu_util": self.other / wall,
        }
        if self.target.has_server:
            found["server_cpu_us_per_rt"] = self.server / per
            found["server_cpu_util"] = self.server / wall
        return found


async def echo(target: Target, remote_pid: int, seconds: float, size: int = 64) -> dict[str, Any]:
    """One target alone: ``seconds`` of one-in-flight echo."""
    run = EchoRun(target, remote_pid, size)
    try:
        await run.open()
        await run.run(seconds)
        return run.result()
    finally:
        await run.close()


async def many_sockets(
    target: Target,
    remote_pid: int,
    count: int,
    sessions: int,
    echo_seconds: float,
    open_budget: float,
    in_flight: int = 100,
    min_available_kib: int = 3 * 1024 * 1024,
) -> dict[str, Any]:
    """Open ``count`` idle echo sockets (over ``sessions`` sessions for tcpsocket; each
    proven by a 1-byte round trip), then make them all echo 64-byte messages at once for
    ``echo_seconds``.

    Opening stops early when the open budget is spent, when MemAvailable falls below
    ``min_available_kib``, or when more than 5 % of the attempts (and at least 20) failed.
    """
    loop = asyncio.get_running_loop()
    result: dict[str, Any] = {"wanted": count, "sessions": sessions}
    memory0 = target.memory()
    started = loop.time()
    stop_reason: list[str] = []
    last_check = [0.0, True]

    def should_stop(failures: int, attempts: int) -> bool:
        if failures >= 20 and failures > 0.05 * attempts:
            if not stop_reason:
                stop_reason.append(f"{failures} of {attempts} opens failed")
            return True
        now = loop.time()
        if now - started > open_budget:
            if not stop_reason:
                stop_reason.append(f"open budget of {open_budget:g} s spent")
            return True
        if now - last_check[0] > 0.25:
            last_check[0] = now
            last_check[1] = procstat.mem_available_kib() > min_available_kib
        if not last_check[1]:
            if not stop_reason:
                stop_reason.append(f"MemAvailable fell below {min_available_kib // 1024} MiB")
            return True
        return False

    streams: list[Stream] = []
    try:
        with Meter(target, remote_pid) as opening:
            streams, failures = await target.open_many(count, sessions, in_flight, should_stop)
            opening.stop()
        opened = len(streams)
        result.update(
            opened=opened,
            open_seconds=opening.wall,
            opens_per_s=opened / opening.wall if opening.wall else 0.0,
            open_failures=len(failures),
            open_failure_sample=failures[:3],
            stopped_opening=stop_reason[0] if stop_reason else "",
            open_server_cpu_s=opening.server,
            open_client_cpu_s=opening.client,
        )
        await asyncio.sleep(0.5)  # let in-flight writes land
        memory1 = target.memory()
        if memory0 is not None and memory1 is not None and opened:
            result.update(
                server_processes=memory1.processes,
                rss_kib_before=memory0.rss_kib,
                rss_kib_idle=memory1.rss_kib,
                rss_kib_per_socket_idle=(memory1.rss_kib - memory0.rss_kib) / opened,
                pss_kib_per_socket_idle=(memory1.pss_kib - memory0.pss_kib) / opened,
            )
        if not opened:
            return result

        message = os.urandom(64)
        counts = [0] * opened
        errors: list[str] = []

        async def run(index: int, stream: Stream, stop_at: float) -> None:
            base = stream.received
            try:
                while loop.time() < stop_at:
                    await stream.write(message)
                    base += 64
                    await stream.until(base)
                    counts[index] += 1
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")

        with Meter(target, remote_pid) as echoing:
            stop_at = loop.time() + echo_seconds
            tasks = [run(i, s, stop_at) for i, s in enumerate(streams)]
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), echo_seconds + 60)
            except asyncio.TimeoutError:
                errors.append("echo phase did not finish within 60 s of its end")
            echoing.stop()
        total = sum(counts)
        if target.has_server:
            result["echo_server_cpu_us_per_rt"] = (
                echoing.server / total * 1e6 if total else float("nan")
            )
        memory2 = target.memory()
        result.update(
            echo_round_trips=total,
            echo_seconds=echoing.wall,
            echo_rt_per_s=total / echoing.wall,
            sockets_that_echoed=sum(1 for c in counts if c),
            echo_errors=len(errors),
            echo_error_sample=errors[:3],
            echo_client_cpu_util=echoing.client / echoing.wall,
            echo_other_cpu_util=echoing.other / echoing.wall,
        )
        if memory0 is not None and memory2 is not None:
            result.update(
                rss_kib_after_echo=memory2.rss_kib,
                rss_kib_per_socket_after_echo=(memory2.rss_kib - memory0.rss_kib) / opened,
                pss_kib_per_socket_after_echo=(memory2.pss_kib - memory0.pss_kib) / opened,
            )
        return result
    finally:
        t = time.perf_counter()
        try:
            await asyncio.wait_for(target.close_many(streams), 120)
        except asyncio.TimeoutError:
            result["close_timeout"] = True
        result["close_seconds"] = time.perf_counter() - t
