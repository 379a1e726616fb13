"""``--workers N``: worker processes behind one listening port, balanced by load.

The parent accepts each connection and hands it to the least-loaded worker
through a UNIX socket (``IUNIXTransport.sendFileDescriptor``); the worker
adopts it into its own Site (``IReactorSocket.adoptStreamConnection``).  Each
worker reports its load (its live connections) after every hand-over and
twice a second.  The parent:

- restarts a worker that dies, and logs it;
- on SIGHUP, signals every worker to reload;
- on SIGTERM, stops accepting, signals every worker to stop gracefully
  (:meth:`tcpsocket.site.TcpSocketService.stopService`) and ends once all have;
- serves ``/metrics`` on ``--metrics-listen`` as the sum of the workers'.

Global budgets (sessions, sockets, send buffers, pending connections, name
lookups) are divided among the workers, so that together they stay within
them.  Single-use tokens are shared through ``--used-tokens-file`` (locked
appends) or, for signed tokens, ``--jwt-used-store``.

Control messages are lines: parent to worker ``conn FAMILY`` (with a file
descriptor), ``listen HOST PORT``, ``metrics``; worker to parent ``load N`` and
``metrics LENGTH`` followed by that many bytes of Prometheus text.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver, LineReceiver
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from tcpsocket.observability import Access

__all__ = ["WorkerControl", "WorkerPool", "add_metrics", "divide_budgets", "tcp_listen_address"]

log = Logger()

#: The worker's file descriptor of its control socket.
CONTROL_FD = 3
#: Budgets of ``ServerConfig`` that are global and divided among the workers.
DIVIDED = (
    "max_sessions",
    "max_sockets",
    "max_total_send_buffer",
    "max_pending",
    "max_lookups",
)
#: Connections accepted per readiness event, at most.
ACCEPTS_PER_TURN = 64
#: Longest wait before a worker that died young is started again, in seconds.
RESTART_DELAY_MAX = 5.0
#: Seconds between a worker's load reports when nothing changes.
REPORT_INTERVAL = 0.5


def divide_budgets(config: Any, count: int) -> Any:
    """``config`` with each global budget divided by ``count`` (at least 1 each)."""
    import dataclasses

    return dataclasses.replace(
        config, **{name: max(1, getattr(config, name) // count) for name in DIVIDED}
    )


def tcp_listen_address(description: str) -> tuple[str, int]:
    """(interface, port) of a ``tcp:PORT[:interface=ADDR]`` strport (what workers share)."""
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in ("tcp", "tcp6") or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"--workers needs tcp:PORT:interface=ADDR listeners, not {description!r}")
    interface = "::" if parts[0] == "tcp6" else "0.0.0.0"
    for part in parts[2:]:
        key, _, value = part.partition("=")
        if key == "interface":
            interface = value.replace("\\:", ":")
        elif key != "backlog":
            raise ValueError(f"--workers cannot share {description!r} ({key}=)")
    return interface, int(parts[1])


# -- in the parent ---------------------------------------------------------------


class _Acceptor:
    """A listening socket in the reactor: each connection accepted goes to the pool."""

    def __init__(self, reactor: Any, pool: WorkerPool, interface: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((interface, port))
        self.socket.listen(511)
        self.socket.setblocking(False)
        self.family = family
        self._reactor = reactor
        self._pool = pool

    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "tcpsocket-workers"

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warn("accept failed: {error}", error=str(e))
                return
            self._pool.hand_over(connection, self.family)

    def connectionLost(self, reason: Failure) -> None:
        self.socket.close()

    def stop(self) -> None:
        self._reactor.removeReader(self)
        self.socket.close()


class _ParentControl(LineReceiver):
    """The parent's end of one worker's control socket."""

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self._metrics_left = 0
        self._metrics = bytearray()

    def lineReceived(self, line: bytes) -> None:
        kind, _, value = line.partition(b" ")
        if kind == b"took":
            self.worker.took(int(value))
        elif kind == b"load":
            self.worker.load = int(value)
        elif kind == b"metrics":
            self._metrics_left = int(value)
            self._metrics = bytearray()
            if self._metrics_left:
                self.setRawMode()
            else:
                self._metrics_done()

    def rawDataReceived(self, data: bytes) -> None:
        take = data[: self._metrics_left]
        self._metrics += take
        self._metrics_left -= len(take)
        if not self._metrics_left:
            self._metrics_done()
            self.setLineMode(data[len(take) :])

    def _metrics_done(self) -> None:
        self.worker.metrics_arrived(bytes(self._metrics))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.worker.control_lost()


class _Worker(ProcessProtocol):
    """One worker process, its control socket, and what the parent knows of its load."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.load = 0
        self.handed = 0
        self.control: _ParentControl | None = None
        #: Connections sent but not yet acknowledged (the parent's copies, closed at the ack).
        self.in_flight: deque[socket.socket] = deque()
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None
        #: When it was started (reactor time).
        self.started = pool._reactor.seconds()
        self._metrics_waiting: deque[Deferred[bytes]] = deque()

    def estimate(self) -> int:
        return self.load + len(self.in_flight)

    def took(self, load: int) -> None:
        """The worker adopted the oldest connection in flight: close the parent's copy."""
        if self.in_flight:
            self.in_flight.popleft().close()
        self.load = load

    def send(self, connection: socket.socket, family: int) -> None:
        assert self.control is not None and self.control.transport is not None
        self.control.transport.sendFileDescriptor(connection.fileno())  # type: ignore[attr-defined]
        self.control.transport.write(b"conn %d\n" % family)
        self.in_flight.append(connection)
        self.handed += 1

    def ask_metrics(self) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        if self.control is None or self.control.transport is None:
            d.callback(b"")
            return d
        self._metrics_waiting.append(d)
        self.control.transport.write(b"metrics\n")
        return d

    def metrics_arrived(self, text: bytes) -> None:
        if self._metrics_waiting:
            self._metrics_waiting.popleft().callback(text)

    def control_lost(self) -> None:
        self.control = None
        while self.in_flight:
            self.in_flight.popleft().close()
        while self._metrics_waiting:
            self._metrics_waiting.popleft().callback(b"")

    def processEnded(self, reason: Failure) -> None:
        self.control_lost()
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """The parent of ``--workers N``: accepts, hands over, supervises."""

    def __init__(
        self,
        count: int,
        listen: Sequence[str],
        worker_argv: Sequence[str],
        reactor: Any = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.count = count
        self._listen = [tcp_listen_address(d) for d in listen]
        self._argv = list(worker_argv)
        #: The parent's log file, if it has one: each worker logs next to it.
        self.log_file: str | None = None
        self._reactor = reactor
        self._env = dict(os.environ if env is None else env)
        self.workers: list[_Worker] = []
        self.acceptors: list[_Acceptor] = []
        self.stopping = False
        self.restarts = 0
        self._previous_hup: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.acceptors = [_Acceptor(self._reactor, self, i, p) for i, p in self._listen]

    def startService(self) -> None:
        super().startService()
        if not self.acceptors:
            self.privilegedStartService()
        self.workers = [self._spawn(index) for index in range(self.count)]
        for acceptor in self.acceptors:
            self._reactor.addReader(acceptor)
            host, port = acceptor.address()
            log.info(
                "workers: {count} processes share {host}:{port}",
                count=self.count,
                host=host,
                port=port,
            )
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hangup)

    def _spawn(self, index: int) -> _Worker:
        worker = _Worker(self, index)
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [*self._argv, f"--worker-share={self.count}"]
        if self.log_file:
            # Before the subcommand: twistd's own option; one file per worker (twistd rotates it).
            argv.insert(argv.index("tcpsocket"), f"--logfile={self.log_file}.worker{index}")
        process = self._reactor.spawnProcess(
            worker,
            sys.executable,
            argv,
            env=self._env,
            childFDs={0: "w", 1: 1, 2: 2, CONTROL_FD: child_end.fileno()},
        )
        child_end.close()
        worker.pid = process.pid
        control = _ParentControl(worker)
        self._reactor.adoptStreamConnection(
            parent_end.fileno(), socket.AF_UNIX, _OneProtocol(control)
        )
        parent_end.close()
        worker.control = control
        for acceptor in self.acceptors:
            host, port = acceptor.address()
            assert worker.control is not None and worker.control.transport is not None
            worker.control.transport.write(f"listen {host} {port}\n".encode())
        log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)
        return worker

    def hand_over(self, connection: socket.socket, family: int) -> None:
        """Give ``connection`` to the least-loaded live worker (or drop it if none is)."""
        live = [w for w in self.workers if w.control is not None]
        if not live or self.stopping:
            connection.close()
            return
        worker = min(live, key=lambda w: (w.estimate(), w.handed))
        worker.send(connection, family)

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.stopping:
            log.info("worker {index} (pid {pid}) stopped", index=worker.index, pid=worker.pid)
            return
        self.restarts += 1
        lived = self._reactor.seconds() - worker.started
        # A worker that dies young (a crash at start) is restarted ever later, up to 5 s.
        delay = 0.0 if lived > RESTART_DELAY_MAX else min(RESTART_DELAY_MAX, 0.1 + lived * 2)
        log.error(
            "worker {index} (pid {pid}) died ({why}); restarting it in {delay:.1f} s",
            index=worker.index,
            pid=worker.pid,
            why=str(reason.value),
            delay=delay,
        )
        self._reactor.callLater(delay, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self.stopping:
            self.workers[index] = self._spawn(index)

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self.signal_workers, signal.SIGHUP)

    def signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker."""
        log.info("signalling {count} workers ({sig})", count=len(self.workers), sig=signum)
        for worker in self.workers:
            if worker.pid is None or worker.ended.called:
                continue  # never signal a pid that may have been reused
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass

    def stopService(self) -> Deferred[None]:
        """Stop accepting, stop every worker gracefully, fire once all have ended."""
        super().stopService()
        self.stopping = True
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        for acceptor in self.acceptors:
            acceptor.stop()
        log.info("workers: stopping {count} processes", count=len(self.workers))
        self.signal_workers(signal.SIGTERM)
        done = defer.gatherResults([w.ended for w in self.workers])
        return done.addCallback(lambda _: None)

    async def metrics(self) -> bytes:
        """The sum of every worker's metrics, as Prometheus text."""
        texts = await defer.gatherResults([w.ask_metrics() for w in self.workers])
        own = [
            "# HELP tcpsocket_worker_connections Connections each worker holds (its last report).",
            "# TYPE tcpsocket_worker_connections gauge",
            *(f'tcpsocket_worker_connections{{worker="{w.index}"}} {w.load}' for w in self.workers),
            "# HELP tcpsocket_worker_restarts_total Workers restarted after they died.",
            "# TYPE tcpsocket_worker_restarts_total counter",
            f"tcpsocket_worker_restarts_total {self.restarts}",
        ]
        return add_metrics(texts) + ("\n".join(own) + "\n").encode("ascii")


class _OneProtocol(Factory):
    """Builds the one protocol it was given (for an adopted control socket)."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


def add_metrics(texts: Sequence[bytes]) -> bytes:
    """Prometheus text whose samples are the sums of the same samples in ``texts``."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            families.setdefault(family.name, family)
            samples = sums.setdefault(family.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # a creation time: no sum makes sense
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if family.name.endswith("_info"):  # the same facts from each worker, not a count
                    samples[key] = max(samples.get(key, 0.0), sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name, family in families.items():
        if not sums[name]:
            continue
        # As prometheus_client writes them: a counter's header names its _total sample.
        header = f"{name}_total" if family.type == "counter" else name
        lines.append(f"# HELP {header} {family.documentation}")
        lines.append(f"# TYPE {header} {family.type}")
        for (sample_name, labels), value in sums[name].items():
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(
                f"{sample_name}{{{label_text}}} {value!r}" if labels else f"{sample_name} {value!r}"
            )
    return ("\n".join(lines) + "\n").encode("utf-8")


class AggregateMetricsResource(Resource):
    """``/metrics`` of the parent: the workers' metrics added up (as ``access`` allows)."""

    isLeaf = True

    def __init__(self, pool: WorkerPool, access: Access) -> None:
        super().__init__()
        self._pool = pool
        self._access = access

    def render_GET(self, request: Request) -> Any:
        if not self._access.allows(request):
            request.setResponseCode(403)
            return b"forbidden\n"

        def done(text: bytes) -> None:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.write(text)
            request.finish()

        defer.ensureDeferred(self._pool.metrics()).addCallback(done)
        return NOT_DONE_YET


# -- in a worker -------------------------------------------------------------------


@implementer(IFileDescriptorReceiver)
class _WorkerControlProtocol(LineOnlyReceiver):
    """The worker's end: adopts each connection the parent sends into the site."""

    delimiter = b"\n"

    def __init__(self, control: WorkerControl) -> None:
        self._control = control
        self._fds: deque[int] = deque()

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def lineReceived(self, line: bytes) -> None:
        kind, _, value = line.partition(b" ")
        if kind == b"conn" and self._fds:
            descriptor = self._fds.popleft()
            try:
                self._control.adopt(descriptor, int(value))
            finally:
                os.close(descriptor)
            self.report(b"took")
        elif kind == b"listen":
            host, port = value.decode().rsplit(" ", 1)
            self._control.listening(host, int(port))
        elif kind == b"metrics":
            text = self._control.metrics_text()
            assert self.transport is not None
            self.transport.write(b"metrics %d\n" % len(text) + text)

    def report(self, kind: bytes = b"load") -> None:
        if self.transport is not None:
            self.transport.write(b"%s %d\n" % (kind, self._control.load()))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._control.parent_lost()


class WorkerControl(Service):
    """In a worker: the control socket to the parent, feeding ``site``."""

    def __init__(self, site: Any, reactor: Any = None, descriptor: int = CONTROL_FD) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.site = site
        self._reactor = reactor
        self._descriptor = descriptor
        self._protocol: _WorkerControlProtocol | None = None
        self._reports = LoopingCall(self._report)
        self._reports.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._protocol = _WorkerControlProtocol(self)
        self._reactor.adoptStreamConnection(
            self._descriptor, socket.AF_UNIX, _OneProtocol(self._protocol)
        )
        os.close(self._descriptor)
        self._reports.start(REPORT_INTERVAL, now=False)

    def stopService(self) -> Any:
        if self._reports.running:
            self._reports.stop()
        return super().stopService()

    def _report(self) -> None:
        if self._protocol is not None:
            self._protocol.report()

    def adopt(self, descriptor: int, family: int) -> None:
        self._reactor.adoptStreamConnection(descriptor, family, self.site)

    def listening(self, host: str, port: int) -> None:
        address = IPv6Address if ":" in host else IPv4Address
        self.site.listening_on(address("TCP", host, port))

    def load(self) -> int:
        """Connections held: those without a session yet, and the sessions."""
        held = len(self.site.admission) + self.site.session_factory.authenticated_sessions()
        return int(held)

    def metrics_text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.site.config.metrics.registry))

    def parent_lost(self) -> None:
        """The parent is gone: stop (gracefully) rather than serve unsupervised."""
        self._protocol = None
        if self.running:
            log.warn("worker: the parent closed the control socket; stopping")
            self._reactor.callLater(0, self._reactor.stop)
