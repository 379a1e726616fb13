"""The three ways to reach the remote, and the server processes behind them."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.client import (
    DaemonStream,
    Session,
    Stream,
    open_direct,
    open_session,
    open_websockify,
)
from tcpsocket.messages import Event

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_limits() -> None:  # runs in each child before exec
    procstat.raise_nofile_limit()


class Processes:
    """Every process the benchmark starts; ``stop_all`` ends them (and their children)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        stdout: Any = None,
        path_first: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the repository with its log in ``logdir``.

        ``path_first`` goes before everything on PYTHONPATH (another tcpsocket tree).
        """
        log = open(self.logdir / f"{name}.log", "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [
                *filter(None, [path_first, str(REPO)]),
                *filter(None, env.get("PYTHONPATH", "").split(os.pathsep)),
            ]
        )
        env.pop("WS_RUNTIME_TOKEN", None)
        env.update(extra_env or {})
        proc = subprocess.Popen(
            argv,
            # Not the repository: "python -m" puts the working directory first on
            # sys.path, which would shadow ``path_first``.
            cwd=self.logdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            preexec_fn=_raise_limits,
            start_new_session=True,  # own process group: stop() reaches forked children
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the process group this benchmark created for ``proc``, then SIGKILL it."""
        if proc in self.procs:
            self.procs.remove(proc)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, forked children included
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s: {proc.args!r}")


def _script(name: str) -> str | None:
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def daemon_command(
    port: int, settings: dict[str, int], mode: str = "auto"
) -> tuple[list[str], str]:
    """How to start the daemon, and which way was chosen.

    ``twistd -n tcpsocket`` if the plugin is registered; else ``python -m twisted``
    (twistd) run in the repository, which finds the in-tree plugin; else (or when a
    setting has no command-line option) ``python -m bench.launch_daemon``.
    """
    cli_options = {
        "max_sockets_per_session",
        "high_water_mark",
        "max_send_buffer",
        "max_sessions",
        "max_message_size",
        "session_buffer",
        "connect_timeout",
        "handshake_timeout",
        "close_timeout",
    }
    options: list[str] = []
    for name, value in settings.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    listen = f"tcp:{port}:interface=127.0.0.1"
    # The benchmark's remotes are on loopback, which the daemon denies by default.
    tail = ["tcpsocket", "--listen", listen, "--token", TOKEN, "--allow", "127.0.0.1:*", *options]
    twistd_head = ["-n", "--pidfile=", "--logfile", "-"]
    if mode in ("auto", "twistd") and set(settings) <= cli_options:
        twistd = _script("twistd")
        candidates = []
        if twistd:
            candidates.append(([twistd], "twistd"))
        candidates.append(([sys.executable, "-m", "twisted"], "python -m twisted"))
        for head, how in candidates:
            env = dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            )
            probe = subprocess.run(
                [*head, "--help"],
                cwd=tempfile.gettempdir(),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if "tcpsocket" in probe.stdout:
                return [*head, *twistd_head, *tail], how
        if mode == "twistd":
            raise RuntimeError("the tcpsocket twistd plugin is not registered")
    launcher = [sys.executable, "-m", "bench.launch_daemon", "--port", str(port), "--token", TOKEN]
    for name, value in settings.items():
        launcher += ["--set", f"{name}={value}"]
    return launcher, "bench.launch_daemon"


async def _prove(stream: Stream) -> None:
    """Make ``stream`` an echo stream and check it works with a one-byte round trip."""
    await stream.write(b"E")
    await stream.write(b".")
    await stream.until(1)


class Target:
    """One way to reach the remote."""

    name = ""
    pid: int | None = None

    def __init__(self, remote_port: int) -> None:
        self.remote_port = remote_port
        self._many_sessions: list[Session] = []

    def cpu(self) -> float:
        return procstat.tree_cpu_seconds(self.pid) if self.pid else 0.0

    def memory(self) -> procstat.TreeMemory | None:
        return procstat.tree_memory(self.pid) if self.pid else None

    async def open(self) -> Stream:
        """A fresh stream on its own connection."""
        raise NotImplementedError

    async def release(self, stream: Stream) -> None:
        await stream.close()

    async def open_many(
        self, count: int, sessions: int, in_flight: int, should_stop: Any
    ) -> tuple[list[Stream], list[str]]:
        """Open up to ``count`` echo streams, each proven by one round trip.

        ``should_stop(failures, attempts)`` ends opening early.
        """
        gate = asyncio.Semaphore(in_flight)
        streams: list[Stream] = []
        failures: list[str] = []

        async def one() -> None:
            async with gate:
                if should_stop(len(failures), len(streams) + len(failures)):
                    return
                try:
                    stream = await asyncio.wait_for(self.open(), 60)
                    await asyncio.wait_for(_prove(stream), 60)
                    streams.append(stream)
                except Exception as e:
                    failures.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(one() for _ in range(count)))
        return streams, failures

    async def close_many(self, streams: list[Stream]) -> None:
        gate = asyncio.Semaphore(500)

        async def one(stream: Stream) -> None:
            async with gate:
                try:
                    await asyncio.wait_for(self.release(stream), 10)
                except Exception:
                    pass

        await asyncio.gather(*(one(s) for s in streams))

    def describe(self) -> str:
        return self.name


class DirectTarget(Target):
    name = "direct"

    async def open(self) -> Stream:
        return await open_direct(self.remote_port)


class ServerTarget(Target):
    """A target with its own server process (started and stopped by the benchmark)."""

    def __init__(self, remote_port: int, processes: Processes) -> None:
        super().__init__(remote_port)
        self.processes = processes
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.how = ""

    path_first: str | None = None
    extra_env: dict[str, str] | None = None

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.stop()
        self.port = free_port()
        argv = self.argv(self.port)
        self.proc = self.processes.start(
            self.name, argv, path_first=self.path_first, extra_env=self.extra_env
        )
        self.pid = self.proc.pid
        wait_port(self.port, self.proc)
        self.command = argv

    def stop(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc)
            self.proc = None
            self.pid = None

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} server is not running")


class WebsockifyTarget(ServerTarget):
    name = "websockify"

    def argv(self, port: int) -> list[str]:
        self.how = "python -m websockify (forks one process per connection)"
        return [
            sys.executable,
            "-m",
            "websockify",
            f"127.0.0.1:{port}",
            f"127.0.0.1:{self.remote_port}",
        ]

    async def open(self) -> Stream:
        return await open_websockify(self.port)


class DaemonTarget(ServerTarget):
    name = "tcpsocket"

    def __init__(
        self,
        remote_port: int,
        processes: Processes,
        settings: dict[str, int],
        mode: str,
        source: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(remote_port, processes)
        self.settings = settings
        self.mode = mode
        self.path_first = source
        self.extra_env = env

    def argv(self, port: int) -> list[str]:
        argv, self.how = daemon_command(port, self.settings, self.mode)
        return argv

    async def open(self) -> Stream:
        session = await open_session(self.port, TOKEN)
        return await session.open("127.0.0.1", self.remote_port)

    async def release(self, stream: Stream) -> None:
        assert isinstance(stream, DaemonStream)
        await stream.session.close()

    async def open_many(
        self, count: int, sessions: int, in_flight: int, should_stop: Any
    ) -> tuple[list[Stream], list[str]]:
        gate = asyncio.Semaphore(in_flight)
        opened: list[Session] = []
        failures: list[str] = []

        async def new_session() -> None:
            async with gate:
                try:
                    opened.append(await asyncio.wait_for(open_session(self.port, TOKEN), 60))
                except Exception as e:
                    failures.append(f"session: {type(e).__name__}: {e}")

        await asyncio.gather(*(new_session() for _ in range(sessions)))
        if not opened:
            return [], failures
        streams: list[Stream] = []

        async def one(session: Session) -> None:
            async with gate:
                if should_stop(len(failures), len(streams) + len(failures)):
                    return
                try:
                    stream = await asyncio.wait_for(
                        session.open("127.0.0.1", self.remote_port, (Event.DATA,)), 60
                    )
                    await asyncio.wait_for(_prove(stream), 60)
                    streams.append(stream)
                except Exception as e:
                    failures.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(one(opened[i % len(opened)]) for i in range(count)))
        self._many_sessions = opened
        return streams, failures

    async def close_many(self, streams: list[Stream]) -> None:
        sessions, self._many_sessions = self._many_sessions, []
        await asyncio.gather(
            *(asyncio.wait_for(s.close(), 10) for s in sessions), return_exceptions=True
        )
