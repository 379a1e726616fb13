"""Shared pieces for the tests: loopback servers, a daemon, and a raw client."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from tcpsocket._private import cancel_autobahn_timers, use_reactor_timers
from tcpsocket.config import ServerConfig
from tcpsocket.messages import encode_handshake
from tcpsocket.policy import DestinationPolicy
from tcpsocket.site import build_site
from tcpsocket.tokens import Token, TokenStore

TOKEN = "change-this-secret-token"
NO_PERMISSION_TOKEN = "no-permission-token"


def temp_dir(test: Any) -> Path:
    """A fresh short directory (UNIX socket paths must stay short), removed at cleanup."""
    path = Path(tempfile.mkdtemp(prefix="tcpsocket-"))
    test.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class NameTable:
    """A resolver the test controls: no DNS, only the names it was given.

    ``names`` maps a name to its addresses, or to a list of such lists
    (answered in turn, the last one from then on: DNS rebinding).  A name
    in ``silent`` is never answered; any other name resolves to nothing.
    :attr:`asked` records each lookup.
    """

    def __init__(
        self, names: dict[str, Any] | None = None, silent: frozenset[str] = frozenset()
    ) -> None:
        self.names = dict(names or {})
        self.silent = silent
        self.asked: list[str] = []
        self.unanswered: list[Any] = []

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        self.asked.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName in self.silent:
            self.unanswered.append(resolutionReceiver)
            return resolution
        answers = self.names.get(hostName, [])
        if answers and isinstance(answers[0], list):
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        else:
            answer = answers
        for address in answer:
            kind = IPv6Address if ":" in address else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution

    def answer_silent(self) -> None:
        """Finally answer (with nothing) every lookup that was left waiting."""
        while self.unanswered:
            self.unanswered.pop().resolutionComplete()


#: What :func:`test_config` resolves: localhost, from a table (no DNS in tests).
LOCALHOST = NameTable({"localhost": ["::1", "127.0.0.1"]})

#: The rules of :func:`test_config`: tests reach their remotes on loopback.
LOOPBACK_RULES = ("allow 127.0.0.0/8:*", "allow [::1]:*", "allow localhost:*")


def open_descriptors(*kinds: str) -> int:
    """How many file descriptors of these kinds this process has open (``socket:``,
    ``pipe:``, ``anon_inode:``: what ``/proc/self/fd`` links to)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith(kinds)
        except OSError:  # the directory's own descriptor, gone by now
            pass
    return count


def open_sockets() -> int:
    """How many sockets this process has open (the file descriptors of connections)."""
    return open_descriptors("socket:")


def test_config(**overrides: Any) -> ServerConfig:
    """A config with the test tokens, whose policy allows loopback (and only loopback);
    web pages of any origin may connect."""
    tokens = TokenStore(
        [Token(TOKEN, "test"), Token(NO_PERMISSION_TOKEN, "nobody", permissions=frozenset())]
    )
    values: dict[str, Any] = {
        "tokens": tokens,
        "policy": DestinationPolicy(LOOPBACK_RULES),
        "resolver": LOCALHOST,
        "allowed_origins": frozenset({"*"}),
    }
    values.update(overrides)
    return ServerConfig(**values)


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test, for pytest


#: What the examples' names (imap.example.org...) resolve to in tests: a public address, so the
#: default policy allows it; :func:`to_loopback` connects to a loopback server instead, so no
#: traffic ever goes there.
EXAMPLE_ADDRESS = "93.184.216.34"


def to_loopback(ports: dict[tuple[str, int], int]) -> dict[str, Any]:
    """Config overrides sending the examples' remotes (name, port) to loopback ports."""

    def connect(reactor_: Any, host: str, port: int, timeout: float) -> Any:
        return TCP4ClientEndpoint(reactor_, "127.0.0.1", ports[(host, port)], timeout=timeout)

    names = NameTable({host: [EXAMPLE_ADDRESS] for host, _ in ports})
    return {"connect": connect, "resolver": names, "policy": DestinationPolicy()}


def capture_logs(test: Any) -> list[dict[str, Any]]:
    """The ``twisted.logger`` events emitted from now until the end of ``test``."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.005) -> None:
    """Poll ``predicate`` on the reactor until it is true (an event, not a fixed sleep)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(interval, d.callback, None)  # type: ignore[attr-defined]
        await d
        waited += interval


# -- loopback remotes --------------------------------------------------------


class Remote(Protocol):
    """Base of the test servers: records what it received and its connections."""

    factory: RemoteFactory

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = bytearray()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.factory.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.remove(self)
        self.factory.closed += 1
        self.lost.callback(None)


class Echo(Remote):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)  # type: ignore[union-attr]


class Banner(Remote):
    """Speaks first, like SMTP, IMAP, SSH and IRC servers."""

    banner = b"220 loopback ESMTP ready\r\n"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.banner)  # type: ignore[union-attr]


class SendAndClose(Remote):
    """Sends a payload and closes at once."""

    payload = b"bye\r\n"

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.factory.payload or self.payload)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class Reset(Remote):
    """Aborts the connection (RST) as soon as it gets data."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.abortConnection()  # type: ignore[union-attr]


class Sink(Remote):
    """Takes everything and says nothing."""


class LineEcho(LineReceiver):
    """A line server: answers each line upper-cased; QUIT closes."""

    def lineReceived(self, line: bytes) -> None:
        if line == b"QUIT":
            self.sendLine(b"BYE")
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.sendLine(line.upper())


class RemoteFactory(Factory):
    def __init__(self, protocol: type[Remote], payload: bytes = b"") -> None:
        self.protocol = protocol
        self.payload = payload
        self.connections: list[Remote] = []
        self.received = bytearray()
        self.closed = 0


async def listen_remote_port(
    test: Any, protocol: type[Remote], payload: bytes = b"", interface: str = "127.0.0.1"
) -> tuple[RemoteFactory, Any]:
    """Listen on ``interface`` with ``protocol``; returns the factory and the listening port.

    The port stops, and the connections it accepted are dropped, at test cleanup.
    """
    factory = RemoteFactory(protocol, payload)
    endpoint_type = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    port = await endpoint_type(reactor, 0, interface=interface).listen(factory)

    async def stop() -> None:
        # Stop accepting first: a connection still in the backlog would otherwise be
        # accepted while the others are dropped, and outlive the test.
        await defer.maybeDeferred(port.stopListening)  # None if the test stopped it already
        while factory.connections:
            connection = factory.connections[0]
            connection.transport.abortConnection()  # type: ignore[union-attr]
            await connection.lost

    test.addCleanup(lambda: defer.ensureDeferred(stop()))
    return factory, port


async def listen_remote(
    test: Any, protocol: type[Remote], payload: bytes = b"", interface: str = "127.0.0.1"
) -> tuple[RemoteFactory, int]:
    """Listen on ``interface`` with ``protocol``, until test cleanup; returns the port number."""
    factory, port = await listen_remote_port(test, protocol, payload, interface)
    return factory, port.getHost().port


async def start_daemon(test: Any, **overrides: Any) -> tuple[Any, int]:
    """Run the daemon on 127.0.0.1; returns the site and its port.

    ``site.session_factory.sessions`` is the set of live ``SessionProtocol``s
    (note: ``site.sessions`` is twisted.web's own, unrelated dict).
    """
    site = build_site(test_config(**overrides))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    site.listening_on(port.getHost())
    test.addCleanup(port.stopListening)
    return site, port.getHost().port


# -- a raw session client ----------------------------------------------------


class RawClient(WebSocketClientProtocol):  # type: ignore[misc]
    """A WebSocket client that hands over each message through Deferreds."""

    def onOpen(self) -> None:
        self.messages: deque[bytes | str] = deque()
        self.waiting: deque[defer.Deferred[bytes | str]] = deque()
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message: bytes | str = payload if isBinary else payload.decode()
        if self.waiting:
            self.waiting.popleft().callback(message)
        else:
            self.messages.append(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn leaves its timers armed when a connection is dropped: a test must not
        # end with them pending (see tcpsocket._private).
        cancel_autobahn_timers(self)
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
            return
        self.closed.callback((code, reason))
        while self.waiting:
            self.waiting.popleft().errback(ConnectionError(f"closed {code}: {reason}"))

    def next(self) -> defer.Deferred[bytes | str]:
        """The next message."""
        if self.messages:
            return defer.succeed(self.messages.popleft())
        d: defer.Deferred[bytes | str] = defer.Deferred()
        self.waiting.append(d)
        return d

    def send(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=True)


async def raw_client(test: Any, port: int) -> RawClient:
    """A raw client connected to the daemon on 127.0.0.1; dropped at test cleanup."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await raw_client_on(test, endpoint, f"ws://127.0.0.1:{port}/ws")


async def raw_client_on(
    test: Any, endpoint: Any, url: str = "ws://localhost/ws", origin: str | None = None
) -> RawClient:
    """A raw client connected through any client endpoint; dropped at test cleanup."""
    factory = WebSocketClientFactory(url, origin=origin)
    # Timers on this reactor, which a cancel really cancels (Autobahn's own are batched).
    use_reactor_timers(factory, reactor)
    factory.protocol = RawClient
    factory.opened = defer.Deferred()
    await endpoint.connect(factory)
    client: RawClient = await factory.opened
    drop_at_cleanup(test, client)
    return client


def drop_at_cleanup(test: Any, client: RawClient) -> None:
    """Drop ``client``'s connection at test cleanup if it is still open."""

    async def drop() -> None:
        if not client.closed.called:
            client.dropConnection(abort=True)
            await client.closed

    test.addCleanup(lambda: defer.ensureDeferred(drop()))


# -- twistd tcpsocket as a process ---------------------------------------------

ROOT = Path(__file__).parent.parent
#: Runs ``twistd`` from the source tree (the in-tree plugin, this worktree's code).
TWISTD_CODE = "from twisted.scripts.twistd import run; run()"
TWISTD = (sys.executable, "-c", TWISTD_CODE)


class ProcessOutput(ProcessProtocol):
    """Collects a process's stdout and stderr; ``ended`` fires when it exits."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    @property
    def process(self) -> IProcessTransport:
        """The process this collects from."""
        assert self.transport is not None
        return self.transport

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def checkout_environment(**extra: str) -> dict[str, str]:
    """This environment with this checkout first on the path and no token, plus ``extra``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("WS_RUNTIME_TOKEN", None)
    return env | extra


def spawn_process(
    test: Any,
    argv: Sequence[str],
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    stop: int = signal.SIGTERM,
) -> ProcessOutput:
    """Run ``argv`` (a daemon), collecting its output; sent ``stop`` at cleanup if still running.

    Its environment is ``env``, or else :func:`checkout_environment`.
    """
    if env is None:
        env = checkout_environment()
    collect = ProcessOutput()
    reactor.spawnProcess(collect, argv[0], list(argv), env=env, path=str(cwd))  # type: ignore[attr-defined]

    async def end() -> None:
        if not collect.ended.called:
            collect.process.signalProcess(stop)
            await collect.ended

    test.addCleanup(lambda: defer.ensureDeferred(end()))
    return collect


def unix_listening(path: str) -> bool:
    """Whether another process accepts connections on the UNIX socket ``path``.

    Its file appears at ``bind``, a moment before ``listen``: a client connecting in
    between is refused, so the file alone does not say the daemon is ready.
    """
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


async def start_twistd(
    test: Any,
    *options: str,
    port: int | None = None,
    token: str | None = TOKEN,
    allow: str | None = "127.0.0.1:*",
    twistd: tuple[str, ...] = (),
    nofile: int | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[ProcessOutput, str]:
    """Run ``twistd -n TWISTD tcpsocket OPTIONS`` until test cleanup (killed if still running).

    It listens on ``port`` of 127.0.0.1, or else on a UNIX socket in a fresh directory; with
    ``--allow allow`` (before ``options``) and ``--token token`` unless they are None.
    ``twistd`` options (such as ``--logfile``) go before the ``tcpsocket`` command.  The
    environment is this one with ``environ`` added, and no ``WS_RUNTIME_TOKEN`` unless
    ``environ`` gives one.  With ``nofile``, the process runs under that open files limit
    (soft and hard).

    Returns once it listens: its collected output (and process) and the socket's path
    (empty on a port).
    """
    code = TWISTD_CODE
    if nofile is not None:
        limit = f"({nofile}, {nofile})"
        code = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, {limit}); {code}"
    path = "" if port is not None else str(temp_dir(test) / "daemon.sock")
    listen = f"tcp:{port}:interface=127.0.0.1" if port is not None else f"unix:{path}"
    args = [sys.executable, "-c", code, "-n", "--pidfile=", *twistd, "tcpsocket"]
    args += ["--listen", listen]
    if allow is not None:
        args += ["--allow", allow]
    args += options
    if token is not None:
        args += ["--token", token]
    env = checkout_environment(**(environ or {}))
    collect = spawn_process(test, args, env=env, stop=signal.SIGKILL)

    def listening() -> bool:
        return unix_listening(path) if path else b"starting on" in collect.output

    await wait_until(lambda: listening() or collect.ended.called, timeout=30)
    assert not collect.ended.called, collect.output.decode()
    return collect, path


async def one_session(test: Any, path: str, token: str, output: ProcessOutput) -> None:
    """A session on the daemon's UNIX socket ``path``: ``token`` is accepted, then the
    client closes; returns once the daemon's ``output`` says the session ended."""
    client = await raw_client_on(test, UNIXClientEndpoint(reactor, path))
    client.send(encode_handshake(token))
    test.assertEqual(await client.next(), b"\x01")
    client.sendClose(1000, "done")
    await client.closed
    await wait_until(lambda: b"ended" in output.output, timeout=30)
