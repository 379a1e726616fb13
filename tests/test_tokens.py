"""Tokens: single use, origins, and what a session is told."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.config import ServerConfig
from tcpsocket.messages import encode_handshake
from tcpsocket.site import build_site
from tcpsocket.tokens import Token, TokenStore, token_from_json
from tests.support import raw_client_on


class TokenStoreTests(SynchronousTestCase):
    def test_unknown_and_empty(self) -> None:
        store = TokenStore([Token("abc")])
        self.assertIsNone(store.authenticate("abd"))
        self.assertIsNone(store.authenticate(""))
        self.assertRaises(ValueError, store.add, Token(""))

    def test_single_use(self) -> None:
        store = TokenStore([Token("once", single_use=True)])
        self.assertIsNotNone(store.authenticate("once"))
        self.assertIsNone(store.authenticate("once"))

    def test_origins(self) -> None:
        pinned = Token("web", origins=frozenset({"https://Mail.Example"}), single_use=True)
        store = TokenStore([pinned])
        self.assertIsNone(store.authenticate("web"), "no Origin header")
        self.assertIsNone(store.authenticate("web", "https://evil.example"))
        self.assertIsNotNone(store.authenticate("web", "https://mail.example"))
        self.assertIsNone(store.authenticate("web", "https://mail.example"), "consumed")

    def test_wrong_origin_does_not_consume(self) -> None:
        pinned = Token("web", origins=frozenset({"https://a.example"}), single_use=True)
        store = TokenStore([pinned])
        self.assertIsNone(store.authenticate("web", "https://b.example"))
        self.assertIsNotNone(store.authenticate("web", "https://a.example"))

    def test_from_json(self) -> None:
        token = token_from_json({"token": "t", "origins": ["https://A.example"]})
        self.assertEqual(token.origins, {"https://a.example"})
        self.assertRaises(ValueError, token_from_json, {"token": "t", "origins": "https://a"})


class OriginSessionTests(TestCase):
    async def handshake(self, origin: str | None) -> bytes:
        tokens = TokenStore([Token("web", origins=frozenset({"https://app.example"}))])
        site = build_site(ServerConfig(tokens=tokens))
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        client = await raw_client_on(
            self,
            TCP4ClientEndpoint(reactor, "127.0.0.1", number),
            f"ws://127.0.0.1:{number}/ws",
            origin=origin,
        )
        client.send(encode_handshake("web"))
        ack = await client.next()
        assert isinstance(ack, bytes)
        if ack == b"\x00":
            code, _ = await client.closed
            self.assertEqual(code, 1008)
        return ack

    async def test_matching_origin(self) -> None:
        self.assertEqual(await self.handshake("https://app.example"), b"\x01")

    async def test_other_origin_refused(self) -> None:
        self.assertEqual(await self.handshake("https://evil.example"), b"\x00")
