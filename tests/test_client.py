"""The Python client (tcpsocket.client) against a real daemon and real servers on loopback."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

import tcpsocket.client as client
from tcpsocket.client import (
    CLOSE_EVENT,
    DATA_EVENT,
    DRAIN_EVENT,
    ERROR_EVENT,
    GetServiceError,
    Session,
    SessionClosed,
    SessionRefused,
    TcpSocket,
    TcpSocketError,
    TcpSocketManager,
)
from tcpsocket.messages import Core, Kind, ObjectRef, decode_base, decode_core_request
from tests.support import (
    NO_PERMISSION_TOKEN,
    TOKEN,
    Banner,
    Echo,
    Remote,
    Reset,
    SendAndClose,
    Sink,
    listen_remote,
    start_daemon,
    wait_until,
)

# -- helpers (test_endpoint uses them too) -----------------------------------


async def open_session(test: TestCase, token: str = TOKEN, **config: Any) -> tuple[Any, Session]:
    """A daemon with ``config`` and a session to it; the session is closed at cleanup."""
    site, port = await start_daemon(test, **config)
    session = await Session.connect(f"ws://127.0.0.1:{port}/ws", token)
    test.addCleanup(session.close)
    return site, session


async def free_port() -> int:
    """A loopback port nothing listens on."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
    number: int = port.getHost().port
    await port.stopListening()
    return number


def daemon_socket(site: Any, socket: TcpSocket) -> Any:
    """The daemon's RemoteSocket behind ``socket``."""
    (session,) = site.session_factory.sessions
    return session.services[socket.service_id].sockets[socket.object_id]


class Recorder:
    """Records the events it listens to, in order; ``wait`` for a condition on them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._waiting: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def data(self, value: bytes) -> None:
        self._add("data", value)

    def drain(self, value: bool) -> None:
        self._add("drain", value)

    def error(self, value: str) -> None:
        self._add("error", value)

    def close(self, value: None) -> None:
        self._add("close", value)

    def attach(self, target: TcpSocket) -> defer.Deferred[None]:
        """Listen to every event of ``target``."""
        done = [
            target.add_event_listener(DATA_EVENT, self.data),
            target.add_event_listener(DRAIN_EVENT, self.drain),
            target.add_event_listener(ERROR_EVENT, self.error),
            target.add_event_listener(CLOSE_EVENT, self.close),
        ]
        return defer.gatherResults(done).addCallback(lambda _: None)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    @property
    def received(self) -> bytes:
        return b"".join(value for name, value in self.events if name == "data")

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> defer.Deferred[None]:
        """Fires once ``predicate()`` is true (checked after each event)."""
        if predicate():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        d.addTimeout(timeout, reactor)
        self._waiting.append((predicate, d))
        return d

    def wait_for(self, name: str) -> defer.Deferred[None]:
        return self.wait(lambda: name in self.names)

    def wait_bytes(self, count: int) -> defer.Deferred[None]:
        return self.wait(lambda: len(self.received) >= count)

    def _add(self, name: str, value: Any) -> None:
        self.events.append((name, value))
        for entry in list(self._waiting):
            predicate, d = entry
            if not d.called and predicate():
                self._waiting.remove(entry)
                d.callback(None)


class SentFrames:
    """Captures the BaseMessages a session sends."""

    def __init__(self, session: Session) -> None:
        self.messages: list[Any] = []
        protocol = session._protocol
        original = protocol.sendMessage

        def capture(payload: bytes, isBinary: bool = False) -> None:
            self.messages.append(decode_base(payload))
            original(payload, isBinary=isBinary)

        protocol.sendMessage = capture

    def core(self, op: Core) -> list[Any]:
        """The decoded core requests of kind ``op``."""
        requests = [decode_core_request(m.content) for m in self.messages if m.service == 0]
        return [r for r in requests if isinstance(r, ObjectRef) and r.op is op]


async def round_trip(session: Session) -> None:
    """A request and its response: whatever the daemon sent before has arrived."""
    await session.has_service("TcpSocketManager")


# -- tests -------------------------------------------------------------------


class SessionTests(TestCase):
    async def test_connect_get_open_echo(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        _, session = await open_session(self)
        self.assertTrue(session.is_open)
        manager = await TcpSocketManager.get(session)
        self.assertEqual(manager.service_id, 1)
        socket = await manager.open({"host": "127.0.0.1", "port": remote_port})
        self.assertEqual((socket.service_id, socket.object_id), (1, 1))
        events = Recorder()
        await events.attach(socket)
        self.assertIs(await socket.send(b"Hello"), True)
        await events.wait_bytes(5)
        self.assertEqual(events.received, b"Hello")
        await socket.close()
        await events.wait_for("close")
        self.assertEqual(events.names, ["data", "close"])
        self.assertTrue(socket.closed)

    async def test_bad_token(self) -> None:
        _, port = await start_daemon(self)
        with self.assertRaises(SessionRefused) as caught:
            await Session.connect(f"ws://127.0.0.1:{port}/ws", "wrong")
        self.assertIn("token", str(caught.exception))

    async def test_missing_permission(self) -> None:
        _, session = await open_session(self, NO_PERMISSION_TOKEN)
        with self.assertRaises(GetServiceError) as caught:
            await TcpSocketManager.get(session)
        self.assertEqual(caught.exception.kind, "MissingPermission")

    async def test_get_service_errors(self) -> None:
        _, session = await open_session(self)
        with self.assertRaises(GetServiceError) as caught:
            await session.get_service("NoSuchService", "")
        self.assertEqual(caught.exception.kind, "UnknownService")
        with self.assertRaises(GetServiceError) as caught:
            await session.get_service("TcpSocketManager", "0" * 58)
        self.assertEqual(caught.exception.kind, "FingerprintMismatch")
        self.assertTrue(await session.has_service("TcpSocketManager"))
        self.assertFalse(await session.has_service("NoSuchService"))

    async def test_request_ids_odd_from_3(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        _, session = await open_session(self)
        frames = SentFrames(session)
        manager = await TcpSocketManager.get(session)
        socket = await manager.open(host="127.0.0.1", port=remote_port)
        await socket.send(b"x")
        await TcpSocketManager.get(session)
        self.assertEqual([m.request for m in frames.messages], [3, 5, 7, 9])
        self.assertTrue(all(m.kind is Kind.REQUEST for m in frames.messages))

    async def test_second_manager_gets_new_service(self) -> None:
        _, session = await open_session(self)
        first = await TcpSocketManager.get(session)
        second = await TcpSocketManager.get(session)
        self.assertEqual((first.service_id, second.service_id), (1, 2))

    async def test_close_fails_pending_calls(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        _, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        socket = await manager.open(host="127.0.0.1", port=remote_port)
        events = Recorder()
        await events.attach(socket)
        pending = socket.send(b"never answered")
        closed = session.close()
        with self.assertRaises(SessionClosed) as caught:
            await pending
        self.assertFalse(caught.exception.lost)
        self.assertFalse(session.is_open)
        # The application closed the session: its sockets get CLOSE, no ERROR.
        self.assertEqual(events.names, ["close"])
        with self.assertRaises(SessionClosed):
            await socket.send(b"after")
        with self.assertRaises(SessionClosed):
            await manager.open(host="127.0.0.1", port=remote_port)
        await closed
        ended = await session.when_closed()
        self.assertFalse(ended.lost)

    async def test_session_lost(self) -> None:
        _, remote_port = await listen_remote(self, Sink)
        site, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        socket = await manager.open(host="127.0.0.1", port=remote_port)
        events = Recorder()
        await events.attach(socket)
        pending = socket.suspend()
        for daemon_session in list(site.session_factory.sessions):
            daemon_session.dropConnection(abort=True)
        with self.assertRaises(SessionClosed) as caught:
            await pending
        self.assertTrue(caught.exception.lost)
        ended = await session.when_closed()
        self.assertTrue(ended.lost)
        self.assertEqual(events.names, ["error", "close"])
        self.assertIn("session lost", events.events[0][1])

    async def test_daemon_ends_session(self) -> None:
        _, remote_port = await listen_remote(self, Sink)
        site, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        socket = await manager.open(host="127.0.0.1", port=remote_port)
        events = Recorder()
        await events.attach(socket)
        for daemon_session in list(site.session_factory.sessions):
            daemon_session.end(1001, "daemon stopping")
        ended = await session.when_closed()
        self.assertEqual((ended.code, ended.lost), (1001, True))
        self.assertIn("daemon stopping", ended.reason)
        self.assertEqual(events.names, ["error", "close"])
        with self.assertRaises(SessionClosed):
            await socket.send(b"x")

    async def test_daemon_gone(self) -> None:
        with self.assertRaises(ConnectionRefusedError):
            await Session.connect(f"ws://127.0.0.1:{await free_port()}/ws", TOKEN)


class OpenTests(TestCase):
    async def test_keyword_and_dict_forms(self) -> None:
        remote, remote_port = await listen_remote(self, Echo)
        _, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        first = await manager.open({"host": "127.0.0.1", "port": remote_port})
        second = await manager.open(host="127.0.0.1", port=remote_port)
        self.assertEqual((first.object_id, second.object_id), (1, 2))
        self.assertEqual((second.host, second.port), ("127.0.0.1", remote_port))
        self.assertEqual(manager.sockets, [first, second])
        await wait_until(lambda: len(remote.connections) == 2)

    def test_bad_arguments(self) -> None:
        manager = TcpSocketManager(None, 1)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            manager.open({"host": "h"})
        with self.assertRaises(TypeError):
            manager.open({"host": "h", "port": 1}, port=2)
        with self.assertRaises(TypeError):
            manager.open(host="h", port="80")  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            manager.open(host=None, port=80)

    async def assertOpenFails(
        self, manager: TcpSocketManager, host: str, port: int, why: str
    ) -> None:
        with self.assertRaises(TcpSocketError) as caught:
            await manager.open(host=host, port=port)
        self.assertIn(why, caught.exception.reason)
        self.assertEqual(str(caught.exception), caught.exception.reason)

    async def test_open_errors_carry_the_reason(self) -> None:
        _, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        await self.assertOpenFails(manager, "127.0.0.1", await free_port(), "connection refused")
        await self.assertOpenFails(manager, "127.0.0.1", 0, "invalid port 0")
        await self.assertOpenFails(manager, "127.0.0.1", 70000, "invalid port 70000")
        await self.assertOpenFails(manager, "", 80, "invalid host")
        await self.assertOpenFails(manager, "bad host name", 80, "invalid host")

    async def test_cancelled_open_releases_the_socket(self) -> None:
        remote, remote_port = await listen_remote(self, Echo)
        _, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        opening = manager.open(host="127.0.0.1", port=remote_port)
        opening.cancel()
        with self.assertRaises(defer.CancelledError):
            await opening
        await wait_until(lambda: remote.closed == 1)
        self.assertEqual(manager.sockets, [])


class EventTests(TestCase):
    async def open(self, remote: type[Remote], **config: Any) -> tuple[Any, Session, TcpSocket]:
        self.remote, remote_port = await listen_remote(self, remote)
        site, session = await open_session(self, **config)
        manager = await TcpSocketManager.get(session)
        socket = await manager.open(host="127.0.0.1", port=remote_port)
        return site, session, socket

    def test_constants(self) -> None:
        expected = {"CLOSE_EVENT": 0, "DATA_EVENT": 1, "DRAIN_EVENT": 2, "ERROR_EVENT": 3}
        for holder in (client, TcpSocketManager, TcpSocket):
            for name, value in expected.items():
                self.assertEqual(getattr(holder, name), value, (holder, name))
        with self.assertRaises(ValueError):
            TcpSocket.__new__(TcpSocket).add_event_listener(4, print)

    async def test_banner_listener_after_open(self) -> None:
        _, _, socket = await self.open(Banner)
        events = Recorder()
        await events.attach(socket)
        await events.wait_bytes(len(Banner.banner))
        self.assertEqual(events.received, Banner.banner)

    async def test_send_and_close_data_then_close_once(self) -> None:
        _, session, socket = await self.open(SendAndClose)
        events = Recorder()
        await events.attach(socket)
        await events.wait_for("close")
        await round_trip(session)
        self.assertEqual(events.names, ["data", "close"])
        self.assertEqual(events.received, SendAndClose.payload)

    async def test_reset_error_then_close(self) -> None:
        _, session, socket = await self.open(Reset)
        events = Recorder()
        await events.attach(socket)
        await socket.send(b"boom")
        await events.wait_for("close")
        await round_trip(session)
        self.assertEqual(events.names, ["error", "close"])
        self.assertIsInstance(events.events[0][1], str)
        self.assertTrue(events.events[0][1])

    async def test_enable_disable_follow_listeners(self) -> None:
        site, session, socket = await self.open(Echo)
        frames = SentFrames(session)
        first, second = Recorder(), Recorder()
        await socket.add_event_listener(DATA_EVENT, first.data)
        await socket.add_event_listener(DATA_EVENT, first.data)  # a no-op
        await socket.add_event_listener(DATA_EVENT, second.data)
        self.assertEqual(len(frames.core(Core.ENABLE_EVENT)), 1)
        await socket.remove_event_listener(DATA_EVENT, second.data)
        self.assertEqual(frames.core(Core.DISABLE_EVENT), [])
        await socket.send(b"one")
        await first.wait_bytes(3)
        await socket.remove_event_listener(DATA_EVENT, first.data)
        (disable,) = frames.core(Core.DISABLE_EVENT)
        self.assertEqual((disable.service, disable.object, disable.event), (1, 1, DATA_EVENT))
        # Without a DATA listener the daemon holds what arrives.
        await socket.send(b"two")
        remote = daemon_socket(site, socket)
        await wait_until(lambda: remote.held_downstream == 3)
        await round_trip(session)
        self.assertEqual(first.received, b"one")
        await socket.add_event_listener(DATA_EVENT, first.data)
        await first.wait_bytes(6)
        self.assertEqual(first.received, b"onetwo")
        self.assertEqual(second.received, b"")
        self.assertEqual(len(frames.core(Core.ENABLE_EVENT)), 2)

    async def test_manager_listeners(self) -> None:
        remote, remote_port = await listen_remote(self, Echo)
        _, session = await open_session(self)
        manager = await TcpSocketManager.get(session)
        first = await manager.open(host="127.0.0.1", port=remote_port)
        seen: list[tuple[TcpSocket, bytes]] = []

        def listener(socket: TcpSocket, value: bytes) -> None:
            seen.append((socket, value))

        await manager.add_event_listener(DATA_EVENT, listener)
        second = await manager.open(host="127.0.0.1", port=remote_port)
        await first.send(b"1")
        await wait_until(lambda: len(seen) == 1)
        await second.send(b"2")
        await wait_until(lambda: len(seen) == 2)
        self.assertEqual(seen, [(first, b"1"), (second, b"2")])
        await manager.remove_event_listener(DATA_EVENT, listener)
        await first.send(b"3")
        await wait_until(lambda: len(remote.received) == 3)
        await round_trip(session)
        self.assertEqual(len(seen), 2)

    async def test_listener_errors_are_logged(self) -> None:
        _, _, socket = await self.open(Banner)
        events = Recorder()

        def broken(value: bytes) -> None:
            raise RuntimeError("listener bug")

        await socket.add_event_listener(DATA_EVENT, broken)
        await socket.add_event_listener(DATA_EVENT, events.data)
        await events.wait_bytes(len(Banner.banner))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_drain_after_send_false(self) -> None:
        _, _, socket = await self.open(Sink, high_water_mark=1024)
        events = Recorder()
        await events.attach(socket)
        self.assertIs(await socket.send(b"x" * 100_000), False)
        await events.wait_for("drain")
        self.assertEqual(events.events, [("drain", True)])
        await wait_until(lambda: len(self.remote.received) == 100_000)

    async def test_one_mib_echo(self) -> None:
        _, _, socket = await self.open(Echo)
        payload = random.Random(7).randbytes(1024 * 1024)
        events = Recorder()
        await events.attach(socket)
        await socket.send(payload)
        await events.wait_bytes(len(payload))
        self.assertEqual(len(events.received), len(payload))
        self.assertTrue(events.received == payload)


class SocketMethodTests(TestCase):
    async def open(self, remote: type[Remote] = Echo) -> tuple[Any, Session, TcpSocket]:
        self.remote, remote_port = await listen_remote(self, remote)
        site, session = await open_session(self)
        self.manager = await TcpSocketManager.get(session)
        socket = await self.manager.open(host="127.0.0.1", port=remote_port)
        return site, session, socket

    async def test_suspend_resume_nest(self) -> None:
        site, _, socket = await self.open()
        remote = daemon_socket(site, socket)
        await socket.suspend()
        await socket.suspend()
        self.assertTrue(remote.reading_paused)
        await socket.resume()
        self.assertTrue(remote.reading_paused)
        await socket.resume()
        self.assertFalse(remote.reading_paused)
        with self.assertRaises(TcpSocketError) as caught:
            await socket.resume()
        self.assertIn("not suspended", caught.exception.reason)

    async def test_suspended_socket_delivers_on_resume(self) -> None:
        _, _, socket = await self.open()
        events = Recorder()
        await events.attach(socket)
        await socket.send(b"before")
        await events.wait_bytes(6)
        await socket.suspend()
        await socket.send(b"during")
        await wait_until(lambda: self.remote.received == bytearray(b"beforeduring"))
        await socket.resume()
        await events.wait_bytes(12)
        self.assertEqual(events.received, b"beforeduring")

    async def test_send_on_closed_socket(self) -> None:
        _, _, socket = await self.open()
        events = Recorder()
        await events.attach(socket)
        await socket.close()
        await events.wait_for("close")
        with self.assertRaises(TcpSocketError) as caught:
            await socket.send(b"late")
        self.assertIn("closed", caught.exception.reason)
        await socket.close()  # idempotent

    async def test_send_type(self) -> None:
        _, _, socket = await self.open()
        with self.assertRaises(TypeError):
            socket.send("text")  # type: ignore[arg-type]
        self.assertTrue(await socket.send(bytearray(b"ok")))

    async def test_release(self) -> None:
        _, session, socket = await self.open()
        events = Recorder()
        await events.attach(socket)
        self.assertIs(await socket.release(), True)
        self.assertIs(await socket.release(), False)
        self.assertTrue(socket.closed)
        self.assertEqual(self.manager.sockets, [])
        await wait_until(lambda: self.remote.closed == 1)
        with self.assertRaises(TcpSocketError) as caught:
            await socket.send(b"x")
        self.assertEqual(caught.exception.reason, "socket released")
        await round_trip(session)
        self.assertEqual(events.events, [])

    async def test_manager_release(self) -> None:
        _, _, socket = await self.open()
        self.assertIs(await self.manager.release(), True)
        await wait_until(lambda: self.remote.closed == 1)
        self.assertTrue(socket.closed)
        with self.assertRaises(TcpSocketError):
            await self.manager.open(host="127.0.0.1", port=1)
