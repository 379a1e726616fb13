"""How sockets and sessions end (protocol.md B.8, B.9) and the session limits."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tcpsocket.messages import Core, ObjectRef
from tcpsocket.services.tcpsocket.messages import Event, Method, Reply, SocketReply
from tests.session_helpers import (
    KiB,
    PausedSink,
    Recording,
    SessionClient,
    black_hole,
    fill,
    listen_small,
    live_sessions,
    manager,
    only,
    pattern,
    session,
    shrink_send_buffer,
    transport_buffered,
)
from tests.support import (
    Echo,
    Reset,
    SendAndClose,
    listen_remote,
    open_fds,
    raw_client,
    start_daemon,
    wait_until,
)

ALL_EVENTS = (Event.DATA, Event.DRAIN, Event.ERROR, Event.CLOSE)


async def stalled_socket(
    test: TestCase, events: tuple[Event, ...] = ALL_EVENTS, **config: Any
) -> tuple[Any, SessionClient, int, int, Any, PausedSink]:
    """A socket to a remote that does not read, with small kernel buffers on both sides.

    Returns the site, the client, the service and socket ids, the daemon's
    socket and the remote's protocol.
    """
    site, port = await start_daemon(test, **config)
    factory, remote_port = await listen_small(test, PausedSink)
    client, service = await manager(test, port)
    socket_id = await client.open_ok(service, remote_port, events=events)
    socket = shrink_send_buffer(site, service, socket_id)
    remote: PausedSink = only(factory.connections)
    return site, client, service, socket_id, socket, remote


def daemon_socket(site: Any, service: int, socket_id: int) -> Any:
    return only(live_sessions(site)).services[service].sockets[socket_id]


class CloseTests(TestCase):
    async def test_graceful_close_flushes_then_fin(self) -> None:
        _, client, service, socket_id, socket, remote = await stalled_socket(self, close_timeout=10)
        accepted = await fill(client, service, socket_id)
        more = pattern(100 * KiB, seed=7)
        reply = await client.send(service, socket_id, more)  # queued in the daemon
        self.assertEqual(reply, SocketReply(Reply.SEND_SUCCESS, False))
        accepted += more
        self.assertGreater(socket.queued_upstream, 0)
        reply = await client.call(service, socket_id, Method.CLOSE)
        self.assertEqual(reply, SocketReply(Reply.CLOSE_SUCCESS))
        self.assertEqual(socket.state, "closing")
        remote.resume()
        event = await client.stream(service, socket_id).next()
        self.assertEqual(event, SocketReply(Reply.CLOSE_EVENT))
        await remote.lost
        self.assertTrue(remote.clean_eof, remote.reason)
        self.assertEqual(bytes(remote.received), accepted)
        await client.settle()
        self.assertEqual(client.stream(service, socket_id).kinds(), [Reply.CLOSE_EVENT])
        client.assert_one_response_each()

    async def test_close_right_after_false(self) -> None:
        # The transport still holds data (and has paused the socket as a
        # producer) when close comes: it must still end with FIN, not time out.
        _, client, service, socket_id, socket, remote = await stalled_socket(self, close_timeout=10)
        accepted = await fill(client, service, socket_id)
        self.assertEqual(socket.queued_upstream, 0)
        self.assertGreater(transport_buffered(socket.transport), 0)
        await client.call(service, socket_id, Method.CLOSE)
        remote.resume()
        event = await client.stream(service, socket_id).next()
        self.assertEqual(event, SocketReply(Reply.CLOSE_EVENT))
        await remote.lost
        self.assertTrue(remote.clean_eof, remote.reason)
        self.assertEqual(bytes(remote.received), accepted)

    async def test_close_is_idempotent(self) -> None:
        _, port = await start_daemon(self)
        factory, remote_port = await listen_remote(self, Recording)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        replies = [await client.call(service, socket_id, Method.CLOSE) for _ in range(2)]
        self.assertEqual(replies, [SocketReply(Reply.CLOSE_SUCCESS)] * 2)
        event = await client.stream(service, socket_id).next()
        self.assertEqual(event, SocketReply(Reply.CLOSE_EVENT))
        # The socket is gone now; closing it again still succeeds.
        reply = await client.call(service, socket_id, Method.CLOSE)
        self.assertEqual(reply, SocketReply(Reply.CLOSE_SUCCESS))
        await client.settle()
        self.assertEqual(client.stream(service, socket_id).kinds(), [Reply.CLOSE_EVENT])
        await wait_until(lambda: factory.closed == 1)
        client.assert_one_response_each()

    async def test_requests_after_close(self) -> None:
        _, client, service, socket_id, _, remote = await stalled_socket(self, events=(Event.CLOSE,))
        accepted = await fill(client, service, socket_id)
        await client.call(service, socket_id, Method.CLOSE)
        reply = await client.send(service, socket_id, b"late")
        self.assertEqual(reply, SocketReply(Reply.SEND_ERROR, detail="socket is closing"))
        remote.resume()
        await client.stream(service, socket_id).next()  # CLOSE
        reply = await client.send(service, socket_id, b"later")
        self.assertEqual(
            reply, SocketReply(Reply.SEND_ERROR, detail=f"socket {socket_id} is closed")
        )
        for method, error in [
            (Method.SUSPEND, Reply.SUSPEND_ERROR),
            (Method.RESUME, Reply.RESUME_ERROR),
        ]:
            reply = await client.call(service, socket_id, method)
            self.assertEqual(reply, SocketReply(error, detail=f"socket {socket_id} is closed"))
        await remote.lost
        self.assertEqual(bytes(remote.received), accepted)
        client.assert_one_response_each()

    async def test_remote_fin_delivers_data_then_close(self) -> None:
        payload = pattern(300 * KiB)
        factory, remote_port = await listen_remote(self, SendAndClose, payload)
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port)
        # The remote has already closed; everything was held for us.
        await wait_until(lambda: factory.closed == 1)
        await client.enable(service, socket_id, *ALL_EVENTS)
        stream = client.stream(service, socket_id)
        await stream.until_close()
        self.assertEqual(bytes(stream.data), payload)
        await client.settle()
        self.assertIn(Reply.DATA_EVENT, stream.kinds())
        stream.assert_data_then_one_close()
        self.assertEqual(only(live_sessions(site)).services[service].sockets, {})

    async def test_remote_fin_flushes_what_is_buffered(self) -> None:
        _, client, service, socket_id, socket, remote = await stalled_socket(self)
        accepted = await fill(client, service, socket_id)
        remote.transport.write(b"goodbye")
        remote.transport.loseWriteConnection()  # FIN, but keeps reading
        await wait_until(lambda: socket.state == "closing")
        reply = await client.send(service, socket_id, b"late")
        self.assertEqual(reply.reply, Reply.SEND_ERROR)
        remote.resume()
        stream = client.stream(service, socket_id)
        await stream.until_close()
        self.assertEqual(stream.kinds(), [Reply.DATA_EVENT, Reply.CLOSE_EVENT])
        self.assertEqual(bytes(stream.data), b"goodbye")
        await remote.lost
        self.assertEqual(bytes(remote.received), accepted)

    async def test_reset_gives_error_then_close(self) -> None:
        _, port = await start_daemon(self)
        _, remote_port = await listen_remote(self, Reset)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=ALL_EVENTS)
        await client.send(service, socket_id, b"trigger")
        stream = client.stream(service, socket_id)
        error = await stream.next()
        self.assertEqual(error.reply, Reply.ERROR_EVENT)
        self.assertEqual(error.value, "connection reset by peer")
        self.assertEqual(await stream.next(), SocketReply(Reply.CLOSE_EVENT))
        await client.settle()
        self.assertEqual(stream.kinds(), [Reply.ERROR_EVENT, Reply.CLOSE_EVENT])

    async def test_reset_reports_undelivered_bytes(self) -> None:
        _, client, service, socket_id, _, remote = await stalled_socket(self)
        await fill(client, service, socket_id)
        await client.send(service, socket_id, b"q" * 1000)  # in the daemon's queue
        remote.transport.abortConnection()
        stream = client.stream(service, socket_id)
        error = await stream.next()
        self.assertEqual(error.reply, Reply.ERROR_EVENT)
        assert isinstance(error.value, str)
        self.assertTrue(error.value.startswith("connection reset by peer; "), error.value)
        self.assertIn("accepted bytes were not delivered", error.value)
        self.assertEqual(await stream.next(), SocketReply(Reply.CLOSE_EVENT))

    async def test_error_dropped_when_only_close_listened(self) -> None:
        _, port = await start_daemon(self)
        _, remote_port = await listen_remote(self, Reset)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, events=(Event.CLOSE,))
        await client.send(service, socket_id, b"trigger")
        self.assertEqual(
            await client.stream(service, socket_id).next(), SocketReply(Reply.CLOSE_EVENT)
        )


class SessionEndTests(TestCase):
    async def two_filled_sockets(self) -> tuple[Any, SessionClient, list[Any], list[bytes]]:
        site, port = await start_daemon(self, close_timeout=10)
        factory, remote_port = await listen_small(self, PausedSink)
        client, service = await manager(self, port)
        remotes, accepted = [], []
        for seed in (1, 2):
            socket_id = await client.open_ok(service, remote_port)
            shrink_send_buffer(site, service, socket_id)
            remotes.append(factory.connections[-1])
            accepted.append(await fill(client, service, socket_id, seed=seed))
            await client.send(service, socket_id, b"tail%d" % seed)
            accepted[-1] += b"tail%d" % seed
        return site, client, remotes, accepted

    async def check_flushed(self, site: Any, remotes: list[Any], accepted: list[bytes]) -> None:
        await wait_until(lambda: not live_sessions(site))
        for remote in remotes:
            remote.resume()
        for remote, data in zip(remotes, accepted, strict=True):
            await remote.lost
            self.assertTrue(remote.clean_eof, remote.reason)
            self.assertEqual(len(remote.received), len(data))
            self.assertEqual(bytes(remote.received), data)

    async def test_clean_close_flushes_every_socket(self) -> None:
        site, client, remotes, accepted = await self.two_filled_sockets()
        client.raw.sendClose(1000)
        code, _ = await client.raw.closed
        self.assertEqual(code, 1000)
        await self.check_flushed(site, remotes, accepted)

    async def test_vanished_client_flushes_every_socket(self) -> None:
        site, client, remotes, accepted = await self.two_filled_sockets()
        client.raw.transport.abortConnection()
        await client.raw.closed
        await self.check_flushed(site, remotes, accepted)

    async def test_release_socket(self) -> None:
        site, client, service, socket_id, _, remote = await stalled_socket(self)
        accepted = await fill(client, service, socket_id)
        remote.transport.write(b"never delivered")
        self.assertTrue(await client.release(service, socket_id))
        self.assertNotIn(socket_id, only(live_sessions(site)).services[service].sockets)
        self.assertFalse(await client.release(service, 99))  # never existed
        self.assertFalse(  # forgotten: no events to switch on
            await client.core_bool(ObjectRef(Core.ENABLE_EVENT, service, socket_id, Event.DATA))
        )
        reply = await client.send(service, socket_id, b"x")
        self.assertEqual(reply.reply, Reply.SEND_ERROR)
        remote.resume()
        await remote.lost
        self.assertTrue(remote.clean_eof, remote.reason)
        self.assertEqual(bytes(remote.received), accepted)
        await client.settle()
        self.assertEqual(client.stream(service, socket_id).events, [])  # forgotten: no events
        self.assertEqual(only(live_sessions(site)).sockets_in_use, 0)
        client.assert_one_response_each()

    async def test_release_of_the_service_object_is_a_no_op(self) -> None:
        # api-daemon's runtime sends ReleaseObject(service, 0) when the page's service object
        # is garbage collected while its sockets are in use: they must keep working.
        site, port = await start_daemon(self)
        factory, remote_port = await listen_remote(self, Echo)
        client, service = await manager(self, port)
        kept = await client.open_ok(service, remote_port, events=(Event.DATA,))
        self.assertFalse(await client.release(service, 0))
        self.assertFalse(await client.release(service, 0))  # again: still a no-op
        await client.send(service, kept, b"still open")
        stream = client.stream(service, kept)
        await wait_until(lambda: bytes(stream.data) == b"still open")
        self.assertEqual(await client.open_ok(service, remote_port), kept + 1)
        self.assertEqual(factory.closed, 0)
        self.assertEqual(only(live_sessions(site)).sockets_in_use, 2)
        client.assert_one_response_each()


class FileDescriptorTests(TestCase):
    async def test_no_descriptor_outlives_its_owner(self) -> None:
        site, port = await start_daemon(self, connect_timeout=30)
        echo, echo_port = await listen_remote(self, Echo)
        closing, closing_port = await listen_remote(self, SendAndClose, b"bye")
        hole = black_hole(self)
        # The reactor creates its signal pipes once it first runs: let it.
        await task.deferLater(reactor, 0, lambda: None)
        baseline = open_fds()

        # 1. The client closes the WebSocket cleanly, two sockets open.
        client, service = await manager(self, port)
        for _ in range(2):
            await client.open_ok(service, echo_port, events=ALL_EVENTS)
        client.raw.sendClose(1000)
        await client.raw.closed

        # 2. The client vanishes, one socket open and one connect pending.
        client, service = await manager(self, port)
        await client.open_ok(service, echo_port)
        pending = defer.ensureDeferred(client.open(service, "127.0.0.1", hole))
        pending.addErrback(lambda _: None)
        await wait_until(lambda: any(s.sockets_in_use == 2 for s in live_sessions(site)))
        client.raw.transport.abortConnection()
        await client.raw.closed

        # 3. The remote closes; a socket is released; a service is released.
        client, service = await manager(self, port)
        gone = await client.open_ok(service, closing_port, events=ALL_EVENTS)
        stream = client.stream(service, gone)
        await stream.until_close()
        released = await client.open_ok(service, echo_port)
        self.assertTrue(await client.release(service, released))
        other = await client.get_service()
        for socket_id in (
            await client.open_ok(other, echo_port),
            await client.open_ok(other, echo_port),
        ):
            self.assertTrue(await client.release(other, socket_id))
        self.assertFalse(await client.release(other, 0))
        await wait_until(lambda: only(live_sessions(site)).sockets_in_use == 0)
        client.raw.sendClose(1000)
        await client.raw.closed

        await wait_until(lambda: not live_sessions(site) and not echo.connections)
        await wait_until(lambda: open_fds() == baseline)
        self.assertEqual(closing.closed, 1)


class LimitTests(TestCase):
    async def test_max_sessions(self) -> None:
        site, port = await start_daemon(self, max_sessions=1)
        first = await session(self, port)
        with self.assertRaises(ConnectionError):
            await raw_client(self, port)
        self.assertEqual(len(live_sessions(site)), 1)
        self.assertEqual((await first.get_service()), 1)
        first.raw.sendClose(1000)
        await first.raw.closed
        await wait_until(lambda: not live_sessions(site))
        again = await session(self, port)
        self.assertEqual(await again.get_service(), 1)

    async def test_max_message_size(self) -> None:
        site, port = await start_daemon(self, max_message_size=1024)
        _, remote_port = await listen_remote(self, Echo)
        bystander, service = await manager(self, port)
        big, big_service = await manager(self, port)
        socket_id = await big.open_ok(big_service, remote_port)
        reply = await big.send(big_service, socket_id, b"x" * 900)  # fits
        self.assertEqual(reply.reply, Reply.SEND_SUCCESS)
        big.send(big_service, socket_id, b"x" * 2000).addErrback(lambda _: None)
        code, reason = await big.raw.closed
        self.assertEqual(code, 1009)
        self.assertTrue(reason)
        await wait_until(lambda: len(live_sessions(site)) == 1)
        echo_id = await bystander.open_ok(service, remote_port, events=(Event.DATA,))
        await bystander.send(service, echo_id, b"fine")
        stream = bystander.stream(service, echo_id)
        await wait_until(lambda: bytes(stream.data) == b"fine")
