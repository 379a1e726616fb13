"""Many sessions, pipelined echo: a workload where the daemon, not the load generator, is
the bottleneck (the workers sweep's measure).

The Python client (:mod:`bench.client`) costs ~40 us of CPU per echo round trip and the
asyncio remote ~10 us, beside the daemon's ~70 us: on 2 cores they take most of a core
themselves, and no number of workers can then show more than ~1.2x. Here both ends are
``bench/echo_load.js`` (Node.js): an echo remote, and a client that keeps ``depth``
64-byte messages in flight on each of ``sockets`` sockets of each of ``sessions``
sessions, parses whole reads in place and answers each read with one write per session.
It checks every echoed byte and counts every send reply.

Both Node processes run at nice 10 by default: on 2 cores shared with the daemon, they
then do not preempt its workers, and they work in larger batches when they run (less CPU
per message for them, and for the daemon). CPU is measured around the timed part, as
elsewhere: the daemon's process tree (each
process too: the workers' balance), the Node client and remote, this process, and the
rest of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.targets import TOKEN, Processes, ServerTarget, start_announcing
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT

SCRIPT = Path(__file__).resolve().parent / "echo_load.js"
#: Defaults: 100 sessions x 4 sockets, up to 64 messages of 64 bytes in flight on each,
#: topped up 16 at a time (the most a socket's 16 unanswered sends allow): the deeper the
#: pipeline, the less the load generator costs per round trip beside the daemon.
SESSIONS = 100
SOCKETS = 4
DEPTH = 64
BATCH = 16
DEFAULT_SHAPE = {"sessions": SESSIONS, "sockets": SOCKETS, "depth": DEPTH, "batch": BATCH}
SIZE = 64
#: The Node processes run at this nice value: the daemon gets the CPU first, and the load
#: generator works in larger batches when it gets its turn (0: the same priority).
NICE = 10


def node(nice: int = 0) -> list[str]:
    """The command that runs Node.js, at ``nice`` (lower priority) if not 0."""
    found = shutil.which("node")
    if found is None:
        raise RuntimeError("the pipelined workload needs Node.js (node)")
    return ["nice", "-n", str(nice), found] if nice else [found]


def start_echo_remote(processes: Processes, nice: int = NICE) -> tuple[int, int]:
    """Start ``node bench/echo_load.js remote`` (at ``nice``); returns its port and pid."""
    return start_announcing(processes, "echo-remote", [*node(nice), str(SCRIPT), "remote"])


class _Snapshot:
    def __init__(self, target: ServerTarget, client_pid: int, remote_pid: int) -> None:
        self.wall = time.perf_counter()
        self.server = target.cpu()
        pids = [target.pid, *procstat.descendants(target.pid)] if target.pid else []
        self.per_process = {pid: procstat.cpu_seconds(pid, children=True) for pid in pids}
        self.client = procstat.cpu_seconds(client_pid)
        self.remote = procstat.cpu_seconds(remote_pid)
        self.bench = procstat.self_cpu_seconds()
        self.machine = procstat.machine_busy_seconds()


class _Client:
    """The Node client process, driven line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def read(self, key: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise RuntimeError(f"the pipelined client exited ({await self.proc.wait()})")
            message: dict[str, Any] = json.loads(line)
            if "fatal" in message:
                raise RuntimeError(f"the pipelined client failed: {message['fatal']}")
            if key in message:
                return message

    async def command(self, text: str, key: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(key, timeout)


async def pipelined_echo(
    target: ServerTarget,
    remote_port: int,
    remote_pid: int,
    seconds: float,
    sessions: int = SESSIONS,
    sockets: int = SOCKETS,
    depth: int = DEPTH,
    batch: int = BATCH,
    size: int = SIZE,
    warmup: float = 1.0,
    nice: int = NICE,
) -> dict[str, Any]:
    """Run the Node client (at ``nice``) against ``target`` (a tcpsocket daemon) for
    ``seconds`` after ``warmup``; every echoed byte is checked and every send reply
    counted."""
    argv = [
        *node(nice),
        str(SCRIPT),
        "client",
        "--port",
        str(target.port),
        "--token",
        TOKEN,
        "--fingerprint",
        TCPSOCKET_FINGERPRINT,
        "--remote-port",
        str(remote_port),
        "--sessions",
        str(sessions),
        "--sockets",
        str(sockets),
        "--depth",
        str(depth),
        "--batch",
        str(batch),
        "--size",
        str(size),
        "--max-seconds",
        str(int(warmup + seconds + 120)),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
        start_new_session=True,
        preexec_fn=procstat.raise_nofile_limit,
    )
    client = _Client(proc)
    try:
        ready = await client.read("ready", 120)
        await client.command("go", "going")
        await asyncio.sleep(warmup)
        before = _Snapshot(target, proc.pid, remote_pid)
        first = (await client.command("mark", "mark"))["mark"]
        await asyncio.sleep(seconds)
        last = (await client.command("mark", "mark"))["mark"]
        after = _Snapshot(target, proc.pid, remote_pid)
        done = (await client.command("stop", "done", 60))["done"]
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    return summarize(ready, first, last, done, before, after, size)


def summarize(
    ready: dict[str, Any],
    first: dict[str, Any],
    last: dict[str, Any],
    done: dict[str, Any],
    before: _Snapshot,
    after: _Snapshot,
    size: int,
) -> dict[str, Any]:
    """The result: rate from the client's own clock between the marks, CPU in cores from
    /proc around them, and the checks of the whole run."""
    seconds = last["t"] - first["t"]
    wall = after.wall - before.wall
    round_trips = last["echoed_messages"] - first["echoed_messages"]
    server = after.server - before.server
    client = after.client - before.client
    remote = after.remote - before.remote
    bench = after.bench - before.bench
    machine = after.machine - before.machine
    per_process = sorted(
        (after.per_process[pid] - before.per_process.get(pid, 0.0)) / wall
        for pid in after.per_process
    )
    checks = {
        "sends": done["sends"],
        "replies": done["replies_true"] + done["replies_false"],
        "send_errors": done["send_errors"],
        "echoed_bytes": done["echoed_bytes"],
        "mismatched_bytes": done["mismatches"],
        "unechoed_bytes": done["unechoed_bytes"],
        "unanswered_sends": done["unanswered_sends"],
        "errors": done["errors"],
        "error_sample": done["error_sample"],
    }
    checks["ok"] = (
        round_trips > 0
        and checks["replies"] == checks["sends"]
        and checks["echoed_bytes"] == checks["sends"] * size
        and not checks["mismatched_bytes"]
        and not checks["send_errors"]
        and not checks["unechoed_bytes"]
        and not checks["unanswered_sends"]
        and not checks["errors"]
    )
    return {
        "sessions": ready["sessions"],
        "sockets": ready["sockets"],
        "depth": ready["depth"],
        "batch": ready["batch"],
        "size": size,
        "seconds": seconds,
        "wall_seconds": wall,
        "round_trips": round_trips,
        "rt_per_s": round_trips / seconds if seconds else 0.0,
        "server_cpu_us_per_rt": server / round_trips * 1e6 if round_trips else float("nan"),
        "client_cpu_us_per_rt": client / round_trips * 1e6 if round_trips else float("nan"),
        "remote_cpu_us_per_rt": remote / round_trips * 1e6 if round_trips else float("nan"),
        "server_cores": server / wall,
        "server_process_cores": per_process,
        "server_processes": len(per_process),
        "client_cores": client / wall,
        "remote_cores": remote / wall,
        "bench_cores": bench / wall,
        "other_cores": max(0.0, machine - server - client - remote - bench) / wall,
        "replies_false": done["replies_false"],
        "checks": checks,
    }
