"""The session protocol against a real daemon on loopback, byte for byte."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tcpsocket.interfaces import IOpenPolicy
from tcpsocket.messages import Core, GetService, HasService, ObjectRef, encode_request
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import (
    Event,
    Method,
    Reply,
    SocketReply,
    decode_socket_reply,
    encode_method,
    encode_open,
    encode_send,
)
from tests.session_helpers import (
    SessionClient,
    black_hole,
    free_port,
    has_ipv6_loopback,
    listen_remote6,
    live_sessions,
    manager,
    only,
    session,
)
from tests.support import (
    NO_PERMISSION_TOKEN,
    TOKEN,
    Banner,
    Echo,
    SendAndClose,
    listen_remote,
    raw_client,
    start_daemon,
    wait_until,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def string(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


GET_SERVICE_3 = (
    h("00 00 00 03 4d 00 10") + b"TcpSocketManager" + h("3a") + TCPSOCKET_FINGERPRINT.encode()
)


def open_request(request: int, port: int, host: str = "127.0.0.1") -> bytes:
    return encode_request(1, 0, request, encode_open(host, port))


class _Silent(Protocol):
    """Connects and says nothing."""

    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class HandshakeTests(TestCase):
    async def test_idle_http_connection_closed(self) -> None:
        site, port = await start_daemon(self, handshake_timeout=0.2)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        silent = await connectProtocol(endpoint, _Silent())
        started = reactor.seconds()  # type: ignore[attr-defined]
        await silent.lost
        self.assertGreaterEqual(reactor.seconds() - started, 0.1)  # type: ignore[attr-defined]
        self.assertEqual(live_sessions(site), set())

    async def test_valid_token(self) -> None:
        _, port = await start_daemon(self)
        client = await raw_client(self, port)
        client.send(string(TOKEN))
        self.assertEqual(await client.next(), h("01"))

    async def test_invalid_token(self) -> None:
        _, port = await start_daemon(self)
        client = await raw_client(self, port)
        client.send(string("wrong"))
        self.assertEqual(await client.next(), h("00"))
        code, reason = await client.closed
        self.assertEqual(code, 1008)
        self.assertIn("token", reason)

    async def test_handshake_timeout(self) -> None:
        _, port = await start_daemon(self, handshake_timeout=0.2)
        client = await raw_client(self, port)
        code, reason = await client.closed
        self.assertEqual(code, 1008)
        self.assertIn("handshake", reason)


class CoreTests(TestCase):
    async def connect(self, token: str = TOKEN):  # type: ignore[no-untyped-def]
        _, port = await start_daemon(self)
        client = await raw_client(self, port)
        client.send(string(token))
        self.assertEqual(await client.next(), h("01"))
        return client

    async def test_get_service_vectors(self) -> None:
        client = await self.connect()
        client.send(GET_SERVICE_3)
        self.assertEqual(await client.next(), h("00 00 01 03 03 00 00 01"))
        client.send(h("00 00 00 11 12 01 10") + b"TcpSocketManager")
        self.assertEqual(await client.next(), h("00 00 01 11 02 01 01"))

    async def test_get_service_errors(self) -> None:
        client = await self.connect()
        client.send(encode_request(0, 0, 3, GetService("Foo", "").encode()))
        self.assertEqual(await client.next(), h("00 00 01 03 02 00 01"))
        client.send(encode_request(0, 0, 5, GetService("TcpSocketManager", "x").encode()))
        self.assertEqual(await client.next(), h("00 00 01 05 02 00 02"))

    async def test_missing_permission(self) -> None:
        client = await self.connect(NO_PERMISSION_TOKEN)
        client.send(GET_SERVICE_3)
        self.assertEqual(await client.next(), h("00 00 01 03 02 00 03"))

    async def test_echo_vectors(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        client = await self.connect()
        client.send(GET_SERVICE_3)
        await client.next()
        client.send(open_request(5, remote_port))
        self.assertEqual(await client.next(), h("01 00 01 05 02 0c 01"))
        client.send(h("00 00 00 07 04 03 01 01 01"))
        self.assertEqual(await client.next(), h("00 00 01 07 02 03 01"))
        client.send(h("01 01 00 09 07 02 05 48 65 6c 6c 6f"))
        self.assertEqual(await client.next(), h("01 01 01 09 02 04 01"))
        self.assertEqual(await client.next(), h("01 01 02 07 09 05 48 65 6c 6c 6f"))
        client.send(h("00 00 00 09 04 03 01 01 00"))  # enable CLOSE
        self.assertEqual(await client.next(), h("00 00 01 09 02 03 01"))
        client.send(h("01 01 00 0b 01 00"))
        self.assertEqual(await client.next(), h("01 01 01 0b 01 00"))
        self.assertEqual(await client.next(), h("01 01 02 01 08"))

    async def test_banner_held_until_enabled(self) -> None:
        _, remote_port = await listen_remote(self, Banner)
        client = await self.connect()
        client.send(GET_SERVICE_3)
        await client.next()
        client.send(open_request(5, remote_port))
        self.assertEqual(await client.next(), h("01 00 01 05 02 0c 01"))
        client.send(h("00 00 00 07 04 03 01 01 01"))
        self.assertEqual(await client.next(), h("00 00 01 07 02 03 01"))
        message = await client.next()
        size = len(Banner.banner)
        self.assertEqual(message, h("01 01 02") + bytes([size + 2, 9, size]) + Banner.banner)

    async def test_open_refused(self) -> None:
        client = await self.connect()
        client.send(GET_SERVICE_3)
        await client.next()
        client.send(open_request(5, 1))
        reply = await client.next()
        self.assertEqual(reply[:6], h("01 00 01 05") + bytes([len(reply) - 5]) + h("0d"))
        self.assertIn(b"connection refused", reply)


# -- B.2: malformed input ends that session only; bad ids get error variants --


class MalformedInputTests(TestCase):
    """A malformed message closes its session with a reason; other sessions go on."""

    async def check_closes(
        self, payload: bytes, code: int, reason: str, binary: bool = True
    ) -> None:
        site, port = await start_daemon(self)
        _, remote_port = await listen_remote(self, Echo)
        # A bystander session with an open socket, before and after.
        other, service = await manager(self, port)
        socket_id = await other.open_ok(service, remote_port, events=(Event.DATA,))
        bad = await session(self, port)
        self.assertEqual(len(live_sessions(site)), 2)
        bad.raw.sendMessage(payload, isBinary=binary)
        closed_code, closed_reason = await bad.raw.closed
        self.assertEqual(closed_code, code)
        self.assertIn(reason, closed_reason)
        await wait_until(lambda: len(live_sessions(site)) == 1)
        reply = await other.send(service, socket_id, b"still here")
        self.assertEqual(reply, SocketReply(Reply.SEND_SUCCESS, True))
        stream = other.stream(service, socket_id)
        await wait_until(lambda: bytes(stream.data) == b"still here")
        other.assert_one_response_each()

    async def test_text_frame(self) -> None:
        await self.check_closes(b"hello", 1003, "text messages", binary=False)

    async def test_truncated_base_message(self) -> None:
        await self.check_closes(h("00 00 00"), 1002, "malformed message: truncated")

    async def test_truncated_content(self) -> None:
        # content length 5, only 2 bytes follow
        await self.check_closes(h("00 00 00 03 05 01 10"), 1002, "malformed message: truncated")

    async def test_trailing_bytes_after_message(self) -> None:
        request = encode_request(0, 0, 3, HasService("TcpSocketManager").encode())
        await self.check_closes(request + b"\x00", 1002, "1 trailing bytes")

    async def test_trailing_bytes_in_content(self) -> None:
        request = encode_request(0, 0, 3, HasService("TcpSocketManager").encode() + b"\x01\x02")
        await self.check_closes(request, 1002, "2 trailing bytes")

    async def test_bad_varint_marker(self) -> None:
        await self.check_closes(h("fe 00 00 03 00"), 1002, "invalid varint marker 0xfe")

    async def test_varint_overflows_u32(self) -> None:
        payload = h("fd 00 00 00 01 00 00 00 00 00 00 03 00")
        await self.check_closes(payload, 1002, "overflows u32")

    async def test_invalid_utf8(self) -> None:
        content = h("01 02 ff fe")  # HasService with a name that is not UTF-8
        await self.check_closes(encode_request(0, 0, 3, content), 1002, "invalid UTF-8")

    async def test_unknown_kind(self) -> None:
        await self.check_closes(h("00 00 07 03 00"), 1002, "unknown message kind 7")

    async def test_response_from_client(self) -> None:
        await self.check_closes(h("00 00 01 03 02 01 01"), 1002, "clients send requests only")

    async def test_event_from_client(self) -> None:
        await self.check_closes(h("01 01 02 01 08"), 1002, "not event")

    async def test_unknown_core_request(self) -> None:
        await self.check_closes(h("00 00 00 03 01 09"), 1002, "unknown core request 9")

    async def test_unknown_socket_request(self) -> None:
        await self.check_closes(h("01 01 00 03 01 09"), 1002, "unknown TcpSocketManager request 9")

    async def test_malformed_handshake(self) -> None:
        site, port = await start_daemon(self)
        client = await raw_client(self, port)
        client.send(h("05 61"))
        code, reason = await client.closed
        self.assertEqual(code, 1002)
        self.assertIn("truncated", reason)
        await wait_until(lambda: not live_sessions(site))


class ErrorVariantTests(TestCase):
    """Well-formed requests to things that do not exist: the method's error, with a reason."""

    async def start(self) -> tuple[SessionClient, int]:
        _, port = await start_daemon(self)
        return await manager(self, port)

    async def test_unknown_service(self) -> None:
        client, _ = await self.start()
        cases = [
            (encode_method(Method.CLOSE), 1, Reply.CLOSE_ERROR),
            (encode_method(Method.RESUME), 1, Reply.RESUME_ERROR),
            (encode_send(b"x"), 1, Reply.SEND_ERROR),
            (encode_method(Method.SUSPEND), 1, Reply.SUSPEND_ERROR),
            (encode_open("127.0.0.1", 7), 0, Reply.OPEN_ERROR),
        ]
        for content, object_id, expected in cases:
            reply = decode_socket_reply(await client.request(9, object_id, content))
            self.assertEqual(reply, SocketReply(expected, detail="unknown service 9"))
        client.assert_one_response_each()

    async def test_unknown_socket(self) -> None:
        client, service = await self.start()
        for method, expected in [
            (Method.CLOSE, Reply.CLOSE_ERROR),
            (Method.RESUME, Reply.RESUME_ERROR),
            (Method.SUSPEND, Reply.SUSPEND_ERROR),
        ]:
            reply = await client.call(service, 5, method)
            self.assertEqual(reply, SocketReply(expected, detail="unknown socket 5"))
        reply = await client.send(service, 5, b"x")
        self.assertEqual(reply, SocketReply(Reply.SEND_ERROR, detail="unknown socket 5"))
        client.assert_one_response_each()

    async def test_wrong_object(self) -> None:
        client, service = await self.start()
        reply = decode_socket_reply(await client.request(service, 3, encode_open("127.0.0.1", 7)))
        self.assertEqual(reply.reply, Reply.OPEN_ERROR)
        self.assertIn("object 0", reply.detail or "")
        reply = await client.send(service, 0, b"x")
        detail = "send is a method of a socket, not of the service"
        self.assertEqual(reply, SocketReply(Reply.SEND_ERROR, detail=detail))
        for method, expected in [
            (Method.CLOSE, Reply.CLOSE_ERROR),
            (Method.RESUME, Reply.RESUME_ERROR),
            (Method.SUSPEND, Reply.SUSPEND_ERROR),
        ]:
            reply = await client.call(service, 0, method)
            self.assertEqual(reply.reply, expected)
            self.assertIn("not of the service", reply.detail or "")
        client.assert_one_response_each()

    async def test_core_requests_on_unknown_things(self) -> None:
        client, service = await self.start()
        self.assertFalse(await client.release(9, 0))
        self.assertFalse(await client.release(9, 1))
        self.assertFalse(await client.release(service, 1))
        for op in (Core.ENABLE_EVENT, Core.DISABLE_EVENT):
            self.assertFalse(await client.core_bool(ObjectRef(op, 9, 1, Event.DATA)))
            self.assertFalse(await client.core_bool(ObjectRef(op, service, 1, Event.DATA)))
        # exact bytes of one of them
        content = await client.request(0, 0, ObjectRef(Core.ENABLE_EVENT, 9, 1, 1).encode())
        self.assertEqual(content, h("03 00"))
        client.assert_one_response_each()

    async def test_unknown_event_id(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        client, service = await self.start()
        socket_id = await client.open_ok(service, remote_port)
        enable = Core.ENABLE_EVENT
        self.assertFalse(await client.core_bool(ObjectRef(enable, service, socket_id, 4)))
        self.assertTrue(await client.core_bool(ObjectRef(enable, service, socket_id, 3)))
        client.assert_one_response_each()

    async def test_many_requests_one_response_each(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        client, service = await self.start()
        socket_id = await client.open_ok(service, remote_port, events=(Event.DATA,))
        pending = []
        for i in range(50):
            pending.append(client.send(service, socket_id, b"%d," % i))
            pending.append(client.request(9, 1, encode_send(b"x")))
            pending.append(client.request(0, 0, HasService("nope").encode()))
            pending.append(client.request(service, 77, encode_method(Method.SUSPEND)))
        await defer.gatherResults(pending)
        expected = b"".join(b"%d," % i for i in range(50))
        stream = client.stream(service, socket_id)
        await wait_until(lambda: len(stream.data) == len(expected))
        self.assertEqual(bytes(stream.data), expected)
        client.assert_one_response_each()
        self.assertEqual(len(client.answers), 200 + 3)  # + GetService, open, enable


# -- B.3 and ids -----------------------------------------------------------------


class ServiceTests(TestCase):
    async def test_unknown_service_name_is_well_formed(self) -> None:
        _, port = await start_daemon(self)
        client = await session(self, port)
        content = await client.request(0, 0, GetService("NoSuchService", "x").encode())
        self.assertEqual(content, h("00 01"))
        content = await client.request(0, 0, HasService("NoSuchService").encode())
        self.assertEqual(content, h("01 00"))
        client.assert_one_response_each()

    async def test_service_ids_never_reused(self) -> None:
        _, port = await start_daemon(self)
        client = await session(self, port)
        self.assertEqual([await client.get_service() for _ in range(3)], [1, 2, 3])
        self.assertFalse(await client.release(2, 0))  # the service object is kept
        self.assertEqual(await client.get_service(), 4)
        reply = await client.send(9, 1, b"x")
        self.assertEqual(reply, SocketReply(Reply.SEND_ERROR, detail="unknown service 9"))
        # ids are per session
        other = await session(self, port)
        self.assertEqual(await other.get_service(), 1)
        client.assert_one_response_each()

    async def test_socket_ids_per_service(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        _, port = await start_daemon(self)
        client, first = await manager(self, port)
        ids = [await client.open_ok(first, remote_port) for _ in range(3)]
        self.assertEqual(ids, [1, 2, 3])
        self.assertTrue(await client.release(first, 2))
        close = await client.call(first, 3, Method.CLOSE)
        self.assertEqual(close.reply, Reply.CLOSE_SUCCESS)
        self.assertEqual(await client.open_ok(first, remote_port), 4)
        second = await client.get_service()
        self.assertEqual(await client.open_ok(second, remote_port), 1)
        client.assert_one_response_each()


# -- B.4: open -----------------------------------------------------------------------


@implementer(IOpenPolicy)
class DenyPort:
    """Denies one port; records what it was asked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked: list[tuple[str, str, int]] = []

    def check(self, identity: str, host: str, port: int) -> str | None:
        self.asked.append((identity, host, port))
        return f"port {port} is blocked" if port == self.port else None


class OpenTests(TestCase):
    async def open_error(self, client: SessionClient, service: int, host: str, port: int) -> str:
        reply = await client.open(service, host, port)
        self.assertEqual(reply.reply, Reply.OPEN_ERROR, reply)
        assert reply.detail is not None
        return reply.detail

    async def test_invalid_ports(self) -> None:
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        for bad in (0, 70000, -1, 65536, 2**62):
            detail = await self.open_error(client, service, "127.0.0.1", bad)
            self.assertEqual(detail, f"invalid port {bad}: must be 1 to 65535")
        client.assert_one_response_each()

    async def test_invalid_hosts(self) -> None:
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        for bad in ("", "bad host", "a..b", "-leading.example", "x" * 64 + ".example", "[::1"):
            detail = await self.open_error(client, service, bad, 80)
            self.assertIn("invalid host", detail)
        client.assert_one_response_each()

    async def test_refused(self) -> None:
        _, port = await start_daemon(self)
        closed = free_port()
        client, service = await manager(self, port)
        detail = await self.open_error(client, service, "127.0.0.1", closed)
        self.assertEqual(detail, f"connection refused (127.0.0.1 port {closed})")

    async def test_dns_failure(self) -> None:
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        detail = await self.open_error(client, service, "no-such-host.invalid", 80)
        self.assertEqual(detail, "host name lookup failed (no-such-host.invalid port 80)")

    async def test_connect_timeout(self) -> None:
        site, port = await start_daemon(self, connect_timeout=0.2)
        hole = black_hole(self)
        client, service = await manager(self, port)
        detail = await self.open_error(client, service, "127.0.0.1", hole)
        self.assertEqual(detail, f"connect timeout (127.0.0.1 port {hole})")
        self.assertEqual(only(live_sessions(site)).sockets_in_use, 0)

    async def test_socket_limit(self) -> None:
        _, port = await start_daemon(self, max_sockets_per_session=2)
        _, remote_port = await listen_remote(self, Echo)
        client, service = await manager(self, port)
        first = await client.open_ok(service, remote_port, events=(Event.CLOSE,))
        other_service = await client.get_service()
        await client.open_ok(other_service, remote_port)  # the limit is per session
        detail = await self.open_error(client, service, "127.0.0.1", remote_port)
        self.assertEqual(detail, "too many sockets in this session (limit 2)")
        # Another session has its own limit.
        client2, service2 = await manager(self, port)
        await client2.open_ok(service2, remote_port)
        # Closing one makes room once the connection is gone.
        await client.call(service, first, Method.CLOSE)
        event = await client.stream(service, first).next()
        self.assertEqual(event.reply, Reply.CLOSE_EVENT)
        await client.open_ok(service, remote_port)
        client.assert_one_response_each()

    async def test_closed_socket_counts_until_forgotten(self) -> None:
        # What a closed socket still holds for the client (its DATA and CLOSE)
        # stays bounded: it counts against the limit until CLOSE is delivered
        # or it is released.
        site, port = await start_daemon(self, max_sockets_per_session=1)
        _, remote_port = await listen_remote(self, SendAndClose, payload=b"bye")
        client, service = await manager(self, port)
        first = await client.open_ok(service, remote_port)
        daemon_socket = only(live_sessions(site)).services[service].sockets[first]
        await wait_until(lambda: daemon_socket.state == "closed")
        detail = await self.open_error(client, service, "127.0.0.1", remote_port)
        self.assertEqual(detail, "too many sockets in this session (limit 1)")
        await client.enable(service, first, Event.DATA, Event.CLOSE)
        stream = client.stream(service, first)
        self.assertEqual((await stream.next()).value, b"bye")
        self.assertEqual((await stream.next()).reply, Reply.CLOSE_EVENT)
        second = await client.open_ok(service, remote_port)
        daemon_socket = only(live_sessions(site)).services[service].sockets[second]
        await wait_until(lambda: daemon_socket.state == "closed")
        self.assertTrue(await client.release(service, second))
        await client.open_ok(service, remote_port)
        client.assert_one_response_each()

    async def test_policy_denial(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        policy = DenyPort(remote_port)
        _, port = await start_daemon(self, policy=policy)
        client, service = await manager(self, port)
        detail = await self.open_error(client, service, "LOCALHOST", remote_port)
        self.assertEqual(detail, f"not allowed: port {remote_port} is blocked")
        self.assertEqual(policy.asked, [("test", "LOCALHOST", remote_port)])
        detail = await self.open_error(client, service, "[::1]", remote_port)
        self.assertIn("not allowed", detail)
        self.assertEqual(policy.asked[-1], ("test", "::1", remote_port))

    async def echo_through(self, host: str, listen: Any) -> None:
        factory, remote_port = await listen(self, Echo)
        site, port = await start_daemon(self)
        client, service = await manager(self, port)
        socket_id = await client.open_ok(service, remote_port, host=host, events=(Event.DATA,))
        daemon_socket = only(live_sessions(site)).services[service].sockets[socket_id]
        self.assertEqual(daemon_socket.state, "open")
        await client.send(service, socket_id, b"ping")
        stream = client.stream(service, socket_id)
        await wait_until(lambda: bytes(stream.data) == b"ping")
        self.assertEqual(bytes(factory.received), b"ping")

    async def test_ipv4_literal(self) -> None:
        await self.echo_through("127.0.0.1", listen_remote)

    async def test_host_name_localhost(self) -> None:
        await self.echo_through("localhost", listen_remote)

    async def test_ipv6_literal(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback on this machine")
        await self.echo_through("::1", listen_remote6)

    async def test_ipv6_bracketed(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback on this machine")
        await self.echo_through("[::1]", listen_remote6)

    async def test_open_pending_when_service_object_released(self) -> None:
        # ReleaseObject(service, 0) is a no-op: a pending open goes on; the session's end
        # cancels it and frees its place.
        site, port = await start_daemon(self, connect_timeout=30)
        hole = black_hole(self)
        client, service = await manager(self, port)
        opening = defer.ensureDeferred(client.open(service, "127.0.0.1", hole))
        opening.addErrback(lambda _: None)
        daemon_session = only(live_sessions(site))
        await wait_until(lambda: daemon_session.sockets_in_use == 1)
        self.assertFalse(await client.release(service, 0))
        self.assertFalse(opening.called)
        self.assertEqual(daemon_session.sockets_in_use, 1)
        client.raw.transport.abortConnection()
        await wait_until(lambda: not live_sessions(site))
        self.assertEqual(daemon_session.sockets_in_use, 0)
