"""The embedding examples of doc/ work: a Site mounting tcpsocket, and an IService."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceCollection
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tcpsocket.messages import GetService, encode_handshake, encode_request
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT
from tcpsocket.services.tcpsocket.messages import encode_open, encode_send
from tests.support import Echo, RawClient, listen_remote, raw_client, raw_client_on, temp_dir

EXAMPLES = Path(__file__).parent.parent / "doc" / "examples"


async def echo_through(test: TestCase, client: RawClient, token: str) -> None:
    """Handshake, GetService, open an echo remote, round-trip one message."""
    _, remote_port = await listen_remote(test, Echo)
    client.send(encode_handshake(token))
    test.assertEqual(await client.next(), b"\x01")
    get_service = GetService("TcpSocketManager", TCPSOCKET_FINGERPRINT).encode()
    client.send(encode_request(0, 0, 3, get_service))
    test.assertEqual(await client.next(), bytes.fromhex("0000010303000001"))
    client.send(encode_request(1, 0, 5, encode_open("127.0.0.1", remote_port)))
    test.assertEqual(await client.next(), bytes.fromhex("01000105020c01"))
    client.send(bytes.fromhex("000000070403010101"))
    test.assertEqual(await client.next(), bytes.fromhex("00000107020301"))
    client.send(encode_request(1, 1, 9, encode_send(b"embedded")))
    test.assertEqual(await client.next(), bytes.fromhex("01010109020401"))
    test.assertEqual(await client.next(), bytes.fromhex("0101020a0908") + b"embedded")


class EmbedSiteTests(TestCase):
    async def test_site_example(self) -> None:
        example: dict[str, Any] = runpy.run_path(str(EXAMPLES / "embed_site.py"))
        site, sessions = example["build_app_site"]("app-token-0123456789", reactor)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        sessions.listening_on(port.getHost())
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        # The application's own page and the library are both served.
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{number}/".encode())
        self.assertIn(b"My app", await readBody(response))
        response = await Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{number}/api/v1/shared/session.js".encode()
        )
        self.assertEqual(response.code, 200)
        await readBody(response)

        await echo_through(self, await raw_client(self, number), "app-token-0123456789")


class EmbedServiceTests(TestCase):
    async def test_service_example_on_unix_socket(self) -> None:
        path = str(temp_dir(self) / "tcpsocket.sock")
        example: dict[str, Any] = runpy.run_path(
            str(EXAMPLES / "embed_service.tac"), run_name="example"
        )
        services = example["make_services"]("app-token-0123456789", [f"unix:{path}"])
        self.assertTrue(IServiceCollection.providedBy(services))
        services.startService()
        self.addCleanup(services.stopService)
        client = await raw_client_on(self, UNIXClientEndpoint(reactor, path))
        await echo_through(self, client, "app-token-0123456789")
