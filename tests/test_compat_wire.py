"""What api-daemon's JavaScript runtime sends that the daemon must tolerate (loopback).

Each test sends the frames that runtime writes (non-minimal varints, core requests on odd
objects, releases at any time) and checks the answer and that the session goes on.
"""

from __future__ import annotations

from dataclasses import fields

from twisted.trial.unittest import TestCase

from tcpsocket.config import ServerConfig
from tcpsocket.messages import Core, ObjectRef, decode_core_response
from tcpsocket.services.tcpsocket.messages import Event, Method, Reply, decode_socket_reply
from tests.session_helpers import SessionClient, live_sessions, manager, only
from tests.support import Echo, listen_remote, start_daemon, wait_until


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def fd(value: int) -> bytes:
    """``value`` as the 9-byte varint the runtime writes for anything >= 65536."""
    return b"\xfd" + value.to_bytes(8, "big")


def string(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


class RuntimeQuirkTests(TestCase):
    async def start(self) -> tuple[SessionClient, int, int]:
        self.daemon_site, port = await start_daemon(self)
        self.echo, echo_port = await listen_remote(self, Echo)
        client, service = await manager(self, port)
        return client, service, echo_port

    async def core(self, client: SessionClient, ref: ObjectRef) -> bool:
        response = decode_core_response(await client.request(0, 0, ref.encode()))
        self.assertIs(response.op, ref.op)
        assert isinstance(response.value, bool)
        return response.value

    async def test_large_request_ids_and_lengths_in_the_nine_byte_form(self) -> None:
        client, service, echo_port = await self.start()
        socket_id = await client.open_ok(service, echo_port, events=(Event.DATA,))
        # A 70,000-byte send with request id 70,001: id, content length and data length
        # all as FD + 8 bytes, as the runtime writes them.
        data = bytes(range(256)) * 273 + bytes(112)
        self.assertEqual(len(data), 70_000)
        request_id = 70_001
        content = b"\x02" + fd(len(data)) + data
        frame = bytes([service, socket_id, 0]) + fd(request_id) + fd(len(content)) + content
        reply = decode_socket_reply(
            await client.request_frame(frame, service, socket_id, request_id)
        )
        self.assertIs(reply.reply, Reply.SEND_SUCCESS)
        stream = client.stream(service, socket_id)
        await wait_until(lambda: len(stream.data) == len(data))
        self.assertEqual(bytes(stream.data), data)
        client.assert_one_response_each()

    async def test_port_in_the_nine_byte_form(self) -> None:
        client, service, echo_port = await self.start()
        # Ports >= 32768 zigzag to >= 65536: FD form. 65535 -> FD 00 00 00 00 00 01 FF FE.
        self.assertEqual(fd(65535 * 2), h("fd 00 00 00 00 00 01 ff fe"))
        request_id = 5
        content = b"\x04" + string("127.0.0.1") + fd(echo_port * 2)
        frame = bytes([service, 0, 0, request_id, len(content)]) + content
        reply = decode_socket_reply(await client.request_frame(frame, service, 0, request_id))
        self.assertIs(reply.reply, Reply.OPEN_SUCCESS, reply)
        # NaN reaches the wire as FD + 8 zero bytes: port 0, an open error with a reason.
        request_id = 7
        content = b"\x04" + string("127.0.0.1") + fd(0)
        frame = bytes([service, 0, 0, request_id, len(content)]) + content
        reply = decode_socket_reply(await client.request_frame(frame, service, 0, request_id))
        self.assertIs(reply.reply, Reply.OPEN_ERROR)
        self.assertIn("invalid port 0", reply.detail or "")
        client.assert_one_response_each()

    async def test_event_switches_on_odd_targets(self) -> None:
        client, service, echo_port = await self.start()
        socket_id = await client.open_ok(service, echo_port)
        for op in (Core.ENABLE_EVENT, Core.DISABLE_EVENT):
            # The service object (a listener on the manager) and undefined event ids.
            self.assertFalse(await self.core(client, ObjectRef(op, service, 0, Event.DATA)))
            self.assertFalse(await self.core(client, ObjectRef(op, service, socket_id, 4)))
            self.assertFalse(await self.core(client, ObjectRef(op, service, socket_id, 70_000)))
        # Repeated enable/disable cycles.
        for _ in range(3):
            for op in (Core.ENABLE_EVENT, Core.DISABLE_EVENT):
                ref = ObjectRef(op, service, socket_id, Event.DATA)
                self.assertTrue(await self.core(client, ref))
        await client.enable(service, socket_id, Event.DATA, Event.CLOSE)
        await client.send(service, socket_id, b"ping")
        stream = client.stream(service, socket_id)
        await wait_until(lambda: bytes(stream.data) == b"ping")
        # DisableEvent on a socket that is already closed (tests.html does it).
        await client.call(service, socket_id, Method.CLOSE)
        await stream.until_close()
        for event in (Event.DATA, Event.CLOSE):
            ref = ObjectRef(Core.DISABLE_EVENT, service, socket_id, event)
            self.assertFalse(await self.core(client, ref))
        client.assert_one_response_each()

    async def test_releases_at_any_time(self) -> None:
        client, service, echo_port = await self.start()
        socket_id = await client.open_ok(service, echo_port, events=(Event.DATA,))
        # The service object (garbage collection of the page's manager): false, no effect.
        self.assertFalse(await client.release(service, 0))
        self.assertFalse(await client.release(service, 0))
        # Unknown or stale service and object ids (a release after a lazy reconnect).
        self.assertFalse(await client.release(service + 7, 0))
        self.assertFalse(await client.release(service + 7, socket_id))
        self.assertFalse(await client.release(service, socket_id + 5))
        await client.send(service, socket_id, b"alive")
        stream = client.stream(service, socket_id)
        await wait_until(lambda: bytes(stream.data) == b"alive")
        # A socket released twice: true, then false.
        self.assertTrue(await client.release(service, socket_id))
        self.assertFalse(await client.release(service, socket_id))
        # A socket gone after its CLOSE: false.
        closing = await client.open_ok(service, echo_port, events=(Event.CLOSE,))
        await client.call(service, closing, Method.CLOSE)
        await client.stream(service, closing).until_close()
        self.assertFalse(await client.release(service, closing))
        self.assertEqual(len(only(live_sessions(self.daemon_site)).services), 1)
        client.assert_one_response_each()

    def test_default_limit_is_1024_sockets_per_session(self) -> None:
        # api-daemon has no limit; apps open hundreds of sockets on one session.
        (field,) = [f for f in fields(ServerConfig) if f.name == "max_sockets_per_session"]
        self.assertEqual(field.default, 1024)
