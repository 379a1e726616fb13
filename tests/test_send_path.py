"""A ``send`` to a live socket is answered by ``TcpSocketManagerService.handle`` at once
(``plain_send``), unless a subclass decodes or answers requests its own way."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.services.securesocket.service import SecureSocketService
from tcpsocket.services.tcpsocket.messages import (
    Method,
    Reply,
    SocketRequest,
    decode_socket_reply,
    encode_send,
)
from tcpsocket.services.tcpsocket.service import TcpSocketManagerService


class FakeSocket:
    queued_upstream = 0

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return len(data) < 10


class FakeBudgets:
    def upstream_refusal(self, session: Any, socket: Any, size: int) -> str | None:
        return "full" if size > 100 else None

    def holding(self, session: Any, socket: Any) -> None:
        pass


class FakeSession:
    budgets = FakeBudgets()

    def __init__(self) -> None:
        self.responses: list[tuple[int, int, int, bytes]] = []

    def send_response(self, service: int, object_id: int, request: int, content: bytes) -> None:
        self.responses.append((service, object_id, request, content))


class Counting(TcpSocketManagerService):
    def handle_request(self, object_id: int, request_id: int, request: SocketRequest) -> None:
        self.seen.append(request)
        super().handle_request(object_id, request_id, request)


def service(cls: type[TcpSocketManagerService]) -> tuple[Any, FakeSession, FakeSocket]:
    session = FakeSession()
    instance: Any = cls(session, 7)  # type: ignore[arg-type]
    instance.seen = []
    socket = FakeSocket()
    instance.sockets[1] = socket
    instance._next_id = 3  # socket 2 was closed
    return instance, session, socket


class PlainSendTests(SynchronousTestCase):
    def test_flag(self) -> None:
        self.assertTrue(TcpSocketManagerService.plain_send)
        self.assertTrue(SecureSocketService.plain_send)
        self.assertFalse(Counting.plain_send)

    def test_answers_as_handle_request(self) -> None:
        for cls in (TcpSocketManagerService, Counting, SecureSocketService):
            instance, session, socket = service(cls)
            for request_id, data in enumerate((b"short", b"long enough", b"x" * 101, b"")):
                instance.handle(1, request_id, memoryview(encode_send(data)))
            instance.handle(2, 9, memoryview(encode_send(b"closed")))
            self.assertEqual(socket.sent, [b"short", b"long enough", b""], cls)
            replies = [(r[:3], decode_socket_reply(r[3])) for r in session.responses]
            self.assertEqual(
                [(head, reply.reply, reply.value, reply.detail) for head, reply in replies],
                [
                    ((7, 1, 0), Reply.SEND_SUCCESS, True, None),
                    ((7, 1, 1), Reply.SEND_SUCCESS, False, None),
                    ((7, 1, 2), Reply.SEND_ERROR, None, "full"),
                    ((7, 1, 3), Reply.SEND_SUCCESS, True, None),
                    ((7, 2, 9), Reply.SEND_ERROR, None, "socket 2 is closed"),
                ],
                cls,
            )

    def test_a_subclass_that_answers_requests_sees_every_send(self) -> None:
        instance, _, socket = service(Counting)
        instance.handle(1, 0, memoryview(encode_send(b"data")))
        self.assertEqual(instance.seen, [SocketRequest(Method.SEND, b"data")])
        self.assertEqual(socket.sent, [b"data"])

    def test_plain_send_answers_without_handle_request(self) -> None:
        class Plain(Counting):
            plain_send = True

        instance, session, socket = service(Plain)
        instance.handle(1, 0, memoryview(encode_send(b"data")))
        self.assertEqual(instance.seen, [])
        self.assertEqual(socket.sent, [b"data"])
        self.assertEqual(len(session.responses), 1)
