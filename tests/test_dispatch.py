"""Events dispatched without Twisted's per-event log context
(``_private.dispatch_without_log_context``, on by default under ``twistd tcpsocket``).

Each test runs a reactor of its own (a fresh ``EPollReactor``, iterated by hand) with real
loopback TCP connections, so the suite's reactor is never changed.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import epollreactor, selectreactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket._private import dispatch_without_log_context
from tests.support import TOKEN, one_session, open_descriptors, start_twistd

APPLIED = "events dispatched without Twisted's per-event log context"


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class FailsOnClose(Echo):
    def connectionLost(self, reason: Any = None) -> None:
        raise ZeroDivisionError("connectionLost failed")


class FailsOnData(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise ZeroDivisionError("dataReceived failed")


def open_fds() -> int:
    """Open sockets, pipes and epoll/event descriptors of this process."""
    return open_descriptors("socket:", "pipe:", "anon_inode:")


class DispatchTests(SynchronousTestCase):
    def reactor(self) -> Any:
        """A fresh epoll reactor, closed (with every descriptor it opened) at cleanup."""
        before = open_fds()
        reactor = epollreactor.EPollReactor()

        def close() -> None:
            reactor.iterate(0)  # ports stop listening on the next turn
            reactor.disconnectAll()
            reactor.waker.connectionLost(None)
            reactor._poller.close()
            self.assertEqual(open_fds(), before)

        self.addCleanup(close)
        return reactor

    def serve(self, reactor: Any, protocol: type[Protocol]) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    def connect(self, port: int) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.settimeout(None)  # blocking: MSG_DONTWAIT reads say EAGAIN at once
        self.addCleanup(client.close)
        return client

    def receive(self, reactor: Any, client: socket.socket, size: int) -> bytes:
        """Iterate ``reactor`` until ``size`` bytes arrived on ``client``."""
        received = bytearray()

        def arrived() -> bool:
            try:
                received.extend(client.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                pass
            return len(received) >= size

        self.iterate_until(reactor, arrived)
        return bytes(received)

    def iterate_until(self, reactor: Any, done: Callable[[], bool]) -> None:
        for _ in range(500):
            reactor.iterate(0.01)
            if done():
                return
        self.fail("the reactor did not get there in 500 turns")

    def echo(self, reactor: Any, port: int, data: bytes) -> bytes:
        client = self.connect(port)
        client.sendall(data)
        return self.receive(reactor, client, len(data))

    def count_log_contexts(self) -> list[object]:
        calls: list[object] = []
        original = log.callWithLogger

        def counting(logger: object, *args: Any, **kwargs: Any) -> Any:
            calls.append(logger)
            return original(logger, *args, **kwargs)

        self.patch(log, "callWithLogger", counting)
        return calls

    def test_events_reach_protocols_without_a_log_context(self) -> None:
        reactor = self.reactor()
        calls = self.count_log_contexts()
        self.assertTrue(dispatch_without_log_context(reactor))
        port = self.serve(reactor, Echo)
        self.assertEqual(self.echo(reactor, port, b"ping" * 1000), b"ping" * 1000)
        self.assertEqual(calls, [])

    def test_twisted_dispatch_uses_one_per_event(self) -> None:
        """The control: the stock reactor wraps every event (what the change removes)."""
        reactor = self.reactor()
        calls = self.count_log_contexts()
        port = self.serve(reactor, Echo)
        self.assertEqual(self.echo(reactor, port, b"ping"), b"ping")
        self.assertGreater(len(calls), 1)

    def test_an_escaping_error_is_logged_with_its_system_and_the_loop_goes_on(self) -> None:
        reactor = self.reactor()
        self.assertTrue(dispatch_without_log_context(reactor))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        failing = self.serve(reactor, FailsOnClose)
        client = self.connect(failing)
        client.sendall(b"x")
        self.assertEqual(self.receive(reactor, client, 1), b"x")
        client.close()
        self.iterate_until(reactor, lambda: bool(self.flushLoggedErrors(ZeroDivisionError)))
        (event,) = [e for e in events if "failure" in e]
        self.assertIn("FailsOnClose", event["log_system"])
        # The reactor goes on serving.
        self.assertEqual(self.echo(reactor, self.serve(reactor, Echo), b"after"), b"after")

    def failing_protocol_logs(self, direct: bool) -> str:
        """Run a protocol whose ``dataReceived`` fails; return the system its error has."""
        reactor = self.reactor()
        self.assertEqual(dispatch_without_log_context(reactor) if direct else False, direct)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = self.connect(self.serve(reactor, FailsOnData))
        client.sendall(b"boom")

        def closed() -> bool:
            try:
                return client.recv(1, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False

        # Twisted's to handle, as before: logged, and that connection closed; others go on.
        self.iterate_until(reactor, closed)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.echo(reactor, self.serve(reactor, Echo), b"after"), b"after")
        (event,) = [e for e in events if "failure" in e]
        system: str = event["log_system"]
        return system

    def test_a_failing_protocol_loses_its_connection_as_in_twisted(self) -> None:
        """What the log context gave: Twisted's traceback for an exception in a protocol
        names the connection as its system; without it, ``-`` (doc/operators.md)."""
        self.assertEqual(self.failing_protocol_logs(direct=True), "-")
        self.assertIn("FailsOnData", self.failing_protocol_logs(direct=False))

    def test_other_reactors_are_left_alone(self) -> None:
        class Subclass(epollreactor.EPollReactor):
            pass

        select = selectreactor.SelectReactor()
        subclass = Subclass()
        memory = MemoryReactorClock()
        for reactor in (select, subclass):
            self.addCleanup(reactor._poller.close if reactor is subclass else lambda: None)
            self.addCleanup(reactor.waker.connectionLost, None)
        for reactor in (select, subclass, memory):
            self.assertFalse(dispatch_without_log_context(reactor))
            self.assertNotIn("doIteration", vars(reactor))


class TwistdDispatchTests(TestCase):
    async def daemon_log(self, *options: str) -> str:
        collect, path = await start_twistd(self, *options)
        await one_session(self, path, TOKEN, collect)
        collect.process.signalProcess(signal.SIGTERM)
        await collect.ended
        return collect.output.decode()

    async def test_on_by_default(self) -> None:
        self.assertIn(APPLIED, await self.daemon_log())

    async def test_log_context_keeps_twisteds(self) -> None:
        self.assertNotIn(APPLIED, await self.daemon_log("--log-context"))
