"""The three ways to reach the remote, and the server processes behind them."""

from __future__ import annotations

import asyncio
import json
import os
import re
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
from bench.tlscert import TLS_NAME
from bench.wisp_client import WispSession, WispStream, open_wisp
from tcpsocket.services.tcpsocket.messages import Event

REPO = Path(__file__).resolve().parent.parent
#: Long enough for a daemon that wants a minimum token length.
TOKEN = "bench-token-0123456789abcdef0123456789abcdef"
#: The daemon may deny loopback destinations by default: the benchmark allows them.
ALLOW = "127.0.0.1:*"
WISP_NODE_PACKAGE = "wisp-server-node"
WISP_NODE_VERSION = "1.1.8"


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


def start_remote(processes: Processes, tls_dir: Path | None = None) -> tuple[int, int]:
    """Start ``python -m bench.remote`` (serving TLS with the files of ``tls_dir``, if
    given); returns its port and process id."""
    argv = [sys.executable, "-m", "bench.remote"]
    if tls_dir is not None:
        argv += ["--tls-dir", str(tls_dir)]
    return start_announcing(processes, "remote-tls" if tls_dir is not None else "remote", argv)


def start_announcing(processes: Processes, name: str, argv: list[str]) -> tuple[int, int]:
    """Start ``argv`` as ``name``, a server that prints one JSON line with its ``port`` and
    ``pid`` once it listens; returns them."""
    proc = processes.start(name, argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    if not line:
        raise RuntimeError(f"{name} did not start; see {processes.logdir}/{name}.log")
    found = json.loads(line)
    return int(found["port"]), int(found["pid"])


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


def _daemon_env(source: str | None) -> dict[str, str]:
    path = [source, str(REPO), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))


def _twistd_heads() -> list[tuple[list[str], str]]:
    twistd = _script("twistd")
    heads = [([twistd], "twistd")] if twistd else []
    return [*heads, ([sys.executable, "-m", "twisted"], "python -m twisted")]


def daemon_help(source: str | None = None) -> str | None:
    """``twistd tcpsocket --help`` of the daemon the benchmark would run (None: no plugin)."""
    for head, _ in _twistd_heads():
        probe = subprocess.run(
            [*head, "tcpsocket", "--help"],
            cwd=tempfile.gettempdir(),
            env=_daemon_env(source),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode == 0 and "--listen" in probe.stdout:
            return probe.stdout
    return None


def lists_option(help_text: str | None, option: str) -> bool:
    """Whether a usage text lists ``option`` (``--workers``: ``--workers=`` or ``--workers N``)."""
    if not help_text:
        return False
    return re.search(rf"(?m)^\s*(-\w, )?{re.escape(option)}(=|\s|$)", help_text) is not None


def daemon_command(
    port: int,
    settings: dict[str, int],
    mode: str = "auto",
    workers: int | None = None,
    source: str | None = None,
) -> tuple[list[str], str]:
    """How to start the daemon, and which way was chosen.

    ``twistd -n tcpsocket`` if the plugin is registered; else ``python -m twisted``
    (twistd) run in the repository, which finds the in-tree plugin; else (or when a
    setting has no command-line option) ``python -m bench.launch_daemon``. Loopback
    destinations are allowed explicitly (``--allow 127.0.0.1:*``); ``workers`` adds
    ``--workers N`` (twistd only: the caller checks that the daemon lists it).
    """
    cli_options = {
        "max_sockets_per_session",
        "high_water_mark",
        "max_send_buffer",
        "max_sessions",
        "max_message_size",
        "session_buffer",
        "read_size",
        "connect_timeout",
        "handshake_timeout",
        "close_timeout",
    }
    options: list[str] = []
    for name, value in settings.items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    if workers is not None:
        options += ["--workers", str(workers)]
    listen = f"tcp:{port}:interface=127.0.0.1"
    tail = ["tcpsocket", "--listen", listen, "--token", TOKEN, "--allow", ALLOW, *options]
    twistd_head = ["-n", "--pidfile=", "--logfile", "-"]
    if mode in ("auto", "twistd") and set(settings) <= cli_options:
        for head, how in _twistd_heads():
            probe = subprocess.run(
                [*head, "--help"],
                cwd=tempfile.gettempdir(),
                env=_daemon_env(source),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if "tcpsocket" in probe.stdout:
                return [*head, *twistd_head, *tail], how
        if mode == "twistd":
            raise RuntimeError("the tcpsocket twistd plugin is not registered")
    if workers is not None:
        raise RuntimeError("--workers needs the twistd plugin, not bench.launch_daemon")
    launcher = [sys.executable, "-m", "bench.launch_daemon", "--port", str(port), "--token", TOKEN]
    launcher += ["--allow", ALLOW]
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
    #: A server process of its own whose CPU is measured (direct TCP has none).
    has_server = True
    #: Many streams on one connection (the 100-stream workload), or one per stream.
    multiplexes = False

    def __init__(self, remote_port: int) -> None:
        self.remote_port = remote_port

    def cpu(self) -> float:
        return procstat.tree_cpu_seconds(self.pid) if self.pid else 0.0

    def memory(self) -> procstat.TreeMemory | None:
        return procstat.tree_memory(self.pid) if self.pid else None

    async def open(self) -> Stream:
        """A fresh stream on its own connection."""
        raise NotImplementedError

    async def release(self, stream: Stream) -> None:
        await stream.close()

    async def open_group(self, count: int) -> list[Stream]:
        """``count`` streams for the 100-stream workload: all on one connection for a
        multiplexing target, else one connection each."""
        results = await asyncio.gather(*(self.open() for _ in range(count)), return_exceptions=True)
        streams = [r for r in results if isinstance(r, Stream)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.release_group(streams)
            raise errors[0]
        return streams

    async def release_group(self, streams: list[Stream]) -> None:
        await self.close_many(streams)

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
    has_server = False

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
        self.command: list[str] = []

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


class MuxTarget(ServerTarget):
    """A server that multiplexes streams over one WebSocket (a tcpsocket session, a
    Wisp connection). ``open`` gives each stream a connection of its own; ``open_group``
    and ``open_many`` share connections."""

    multiplexes = True

    def __init__(self, remote_port: int, processes: Processes) -> None:
        super().__init__(remote_port, processes)
        self._sessions: list[Any] = []

    async def new_session(self) -> Any:
        raise NotImplementedError

    async def open_on(self, session: Any, data_only: bool = False) -> Stream:
        """A stream to the remote on ``session``."""
        raise NotImplementedError

    async def open(self) -> Stream:
        session = await self.new_session()
        try:
            return await self.open_on(session)
        except BaseException:
            await session.close()
            raise

    async def open_group(self, count: int) -> list[Stream]:
        session = await asyncio.wait_for(self.new_session(), 60)
        self._sessions.append(session)
        try:
            return [await asyncio.wait_for(self.open_on(session), 60) for _ in range(count)]
        except BaseException:
            await self.release_group([])
            raise

    async def open_many(
        self, count: int, sessions: int, in_flight: int, should_stop: Any
    ) -> tuple[list[Stream], list[str]]:
        gate = asyncio.Semaphore(in_flight)
        opened: list[Any] = []
        failures: list[str] = []

        async def new_session() -> None:
            async with gate:
                try:
                    opened.append(await asyncio.wait_for(self.new_session(), 60))
                except Exception as e:
                    failures.append(f"session: {type(e).__name__}: {e}")

        await asyncio.gather(*(new_session() for _ in range(sessions)))
        self._sessions += opened
        if not opened:
            return [], failures
        streams: list[Stream] = []

        async def one(session: Any) -> None:
            async with gate:
                if should_stop(len(failures), len(streams) + len(failures)):
                    return
                try:
                    stream = await asyncio.wait_for(self.open_on(session, data_only=True), 60)
                    await asyncio.wait_for(_prove(stream), 60)
                    streams.append(stream)
                except Exception as e:
                    failures.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(one(opened[i % len(opened)]) for i in range(count)))
        return streams, failures

    async def close_many(self, streams: list[Stream]) -> None:
        sessions, self._sessions = self._sessions, []
        await asyncio.gather(
            *(asyncio.wait_for(s.close(), 10) for s in sessions), return_exceptions=True
        )


class DaemonTarget(MuxTarget):
    name = "tcpsocket"

    def __init__(
        self,
        remote_port: int,
        processes: Processes,
        settings: dict[str, int],
        mode: str,
        source: str | None = None,
        env: dict[str, str] | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(remote_port, processes)
        self.settings = settings
        self.mode = mode
        self.path_first = source
        self.extra_env = env
        self.workers = workers
        if workers is not None:
            self.name = f"tcpsocket-w{workers}"

    def argv(self, port: int) -> list[str]:
        argv, self.how = daemon_command(
            port, self.settings, self.mode, self.workers, self.path_first
        )
        return argv

    async def new_session(self) -> Session:
        return await open_session(self.port, TOKEN)

    async def open_on(self, session: Any, data_only: bool = False) -> Stream:
        # The echo streams of the many-sockets workload only need DATA events.
        events = (Event.DATA,) if data_only else tuple(Event)
        stream: DaemonStream = await session.open("127.0.0.1", self.remote_port, events)
        return stream

    async def release(self, stream: Stream) -> None:
        assert isinstance(stream, DaemonStream)
        await stream.session.close()


class DaemonTLSTarget(DaemonTarget):
    """tcpsocket's SecureTcpSocketManager: the daemon runs TLS to a TLS remote.

    The daemon trusts the bench's CA through ``--tls-ca-file`` and verifies the remote's
    certificate for ``localhost``, as always; compare with ``tcpsocket`` for the cost of TLS.
    """

    name = "tcpsocket-tls"

    def __init__(self, remote_port: int, processes: Processes, ca_file: Path, **kw: Any) -> None:
        super().__init__(remote_port, processes, **kw)
        self.ca_file = ca_file

    def argv(self, port: int) -> list[str]:
        argv = super().argv(port)
        if self.how == "bench.launch_daemon":
            raise RuntimeError("the TLS target needs the twistd plugin (--tls-ca-file)")
        return [*argv, "--tls-ca-file", str(self.ca_file)]

    async def new_session(self) -> Session:
        return await open_session(self.port, TOKEN, secure=True)

    async def open_on(self, session: Any, data_only: bool = False) -> Stream:
        events = (Event.DATA,) if data_only else tuple(Event)
        # An address (no name lookup per open, as for the plain target), and the
        # certificate's name for SNI and verification.
        stream: DaemonStream = await session.open(
            "127.0.0.1", self.remote_port, events, secure=True, server_name=TLS_NAME
        )
        return stream


class WispTarget(MuxTarget):
    """A Wisp server, through the benchmark's own Wisp v1 client."""

    async def new_session(self) -> WispSession:
        return await open_wisp(self.port, "/")

    async def open_on(self, session: Any, data_only: bool = False) -> Stream:
        assert isinstance(session, WispSession)
        return session.open("127.0.0.1", self.remote_port)

    async def release(self, stream: Stream) -> None:
        assert isinstance(stream, WispStream)
        await stream.session.close()


class WispPythonTarget(WispTarget):
    """wisp-python (PyPI), asyncio on uvloop: one server process (``--threads 1``)."""

    name = "wisp-python"

    def argv(self, port: int) -> list[str]:
        self.how = "python -m wisp.server --threads 1 (one process; uvloop)"
        return [
            sys.executable,
            "-m",
            "wisp.server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            "1",
            "--allow-loopback",
            "--log-level",
            "warning",
        ]


def wisp_node_dir() -> Path:
    """Where the benchmark keeps its npm install of wisp-server-node (outside the repo)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tcpsocket-bench" / f"{WISP_NODE_PACKAGE}-{WISP_NODE_VERSION}"


def ensure_wisp_node(prefix: Path) -> Path:
    """Install wisp-server-node with npm under ``prefix`` unless it is there; returns the
    ``node_modules`` directory."""
    modules = prefix / "node_modules"
    manifest = modules / WISP_NODE_PACKAGE / "package.json"
    if not manifest.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("the wisp-server-node target needs npm (and node)")
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                f"{WISP_NODE_PACKAGE}@{WISP_NODE_VERSION}",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
    version = json.loads(manifest.read_text())["version"]
    if version != WISP_NODE_VERSION:
        raise RuntimeError(f"{manifest} is version {version}, wanted {WISP_NODE_VERSION}")
    return modules


class WispNodeTarget(WispTarget):
    """wisp-server-node (npm) on Node.js, started by ``bench/wisp_node_server.js``."""

    name = "wisp-server-node"

    def __init__(self, remote_port: int, processes: Processes, prefix: Path | None = None) -> None:
        super().__init__(remote_port, processes)
        self.prefix = prefix or wisp_node_dir()

    def argv(self, port: int) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the wisp-server-node target needs Node.js (node)")
        self.extra_env = {"NODE_PATH": str(ensure_wisp_node(self.prefix))}
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        self.how = f"node {version.strip()}, {WISP_NODE_PACKAGE} {WISP_NODE_VERSION}"
        return [node, str(REPO / "bench" / "wisp_node_server.js"), str(port)]
