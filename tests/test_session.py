"""The session protocol against a real daemon on loopback, byte for byte."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.messages import GetService, encode_open, encode_request
from tests.support import (
    NO_PERMISSION_TOKEN,
    TOKEN,
    Banner,
    Echo,
    listen_remote,
    raw_client,
    start_daemon,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def string(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


GET_SERVICE_3 = h("00 00 00 03 4d 00 10") + b"TcpSocketManager" + h("3a") + TCPSOCKET_FINGERPRINT.encode()


def open_request(request: int, port: int, host: str = "127.0.0.1") -> bytes:
    return encode_request(1, 0, request, encode_open(host, port))


class HandshakeTests(TestCase):
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
        self.assertEqual(message, h("01 01 02") + bytes([len(Banner.banner) + 2, 9, len(Banner.banner)]) + Banner.banner)

    async def test_open_refused(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        client = await self.connect()
        client.send(GET_SERVICE_3)
        await client.next()
        client.send(open_request(5, 1))
        reply = await client.next()
        self.assertEqual(reply[:6], h("01 00 01 05") + bytes([len(reply) - 5]) + h("0d"))
        self.assertIn(b"connection refused", reply)
