"""Tokens: single use, origins, and what a session is told."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.config import ServerConfig
from tcpsocket.interfaces import TokenStoreError
from tcpsocket.messages import encode_handshake
from tcpsocket.site import build_site
from tcpsocket.tokens import MIN_TOKEN_LENGTH, Token, TokenStore, token_from_json
from tests.support import raw_client_on, temp_dir

ABC = "abc-0123456789abcdef"
ONCE = "once-0123456789abcdef"
WEB = "web-0123456789abcdef"


class TokenStoreTests(SynchronousTestCase):
    def test_unknown_and_empty(self) -> None:
        store = TokenStore([Token(ABC)])
        self.assertIsNone(self.successResultOf(store.authenticate(ABC[:-1] + "0")))
        self.assertIsNone(self.successResultOf(store.authenticate("")))
        self.assertRaises(ValueError, store.add, Token(""))

    def test_minimum_length(self) -> None:
        store = TokenStore()
        with self.assertRaises(ValueError) as caught:
            store.add(Token("x" * (MIN_TOKEN_LENGTH - 1), identity="app"))
        self.assertIn("'app' is too short: 15 characters, at least 16", str(caught.exception))
        store.add(Token("x" * MIN_TOKEN_LENGTH))
        self.assertEqual(len(store), 1)

    def test_single_use(self) -> None:
        store = TokenStore([Token(ONCE, single_use=True)])
        self.assertIsNotNone(self.successResultOf(store.authenticate(ONCE)))
        self.assertIsNone(self.successResultOf(store.authenticate(ONCE)))

    def test_single_use_stays_used_when_added_again(self) -> None:
        store = TokenStore([Token(ONCE, single_use=True)])
        self.assertIsNotNone(self.successResultOf(store.authenticate(ONCE)))
        store.add(Token(ONCE, single_use=True))
        self.assertIsNone(
            self.successResultOf(store.authenticate(ONCE)),
            "the consumption record outlives the set",
        )

    def test_corrupt_record_refused(self) -> None:
        path = temp_dir(self) / "used-tokens"
        path.write_text("not hex\n")
        self.assertRaises(ValueError, TokenStore, [], used_tokens_file=path)

    def test_origins(self) -> None:
        pinned = Token(WEB, origins=frozenset({"https://Mail.Example"}), single_use=True)
        store = TokenStore([pinned])
        self.assertEqual(store.origins(), {"https://mail.example"})
        self.assertIsNone(self.successResultOf(store.authenticate(WEB)), "no Origin header")
        self.assertIsNone(self.successResultOf(store.authenticate(WEB, "https://evil.example")))
        self.assertIsNotNone(self.successResultOf(store.authenticate(WEB, "https://mail.example")))
        self.assertIsNone(
            self.successResultOf(store.authenticate(WEB, "https://mail.example")), "consumed"
        )

    def test_wrong_origin_does_not_consume(self) -> None:
        pinned = Token(WEB, origins=frozenset({"https://a.example"}), single_use=True)
        store = TokenStore([pinned])
        self.assertIsNone(self.successResultOf(store.authenticate(WEB, "https://b.example")))
        self.assertIsNotNone(self.successResultOf(store.authenticate(WEB, "https://a.example")))

    def test_from_json(self) -> None:
        token = token_from_json({"token": "t", "origins": ["https://A.example"]})
        self.assertEqual(token.origins, {"https://a.example"})
        self.assertRaises(ValueError, token_from_json, {"token": "t", "origins": "https://a"})


class UsedTokensFileTests(TestCase):
    """The record of used tokens in a file: written on a thread of the store's own."""

    def store(self, path: Path, *tokens: Token, timeout: float = 2.0) -> TokenStore:
        store = TokenStore(tokens, used_tokens_file=path, used_tokens_timeout=timeout)
        self.addCleanup(store.stop)
        return store

    async def test_single_use_stays_used_across_restarts(self) -> None:
        path = temp_dir(self) / "used-tokens"
        first = self.store(path, Token(ONCE, single_use=True), Token(ABC))
        self.assertIsNotNone(await first.authenticate(ONCE))
        self.assertIsNotNone(await first.authenticate(ABC))
        self.assertEqual(len(path.read_text().split()), 1, "only single-use tokens are recorded")
        self.assertNotIn(ONCE, path.read_text(), "digests, not tokens, are stored")
        restarted = self.store(path, Token(ONCE, single_use=True))
        self.assertIsNone(await restarted.authenticate(ONCE))

    async def test_unwritable_record_refuses_single_use(self) -> None:
        path = temp_dir(self) / "missing-dir" / "used-tokens"
        store = self.store(path, Token(ONCE, single_use=True))
        with self.assertRaises(TokenStoreError) as caught:
            await store.authenticate(ONCE)
        self.assertIn("cannot record it in", str(caught.exception))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    async def test_racing_handshakes_one_token(self) -> None:
        """Two checks of one single-use token in flight at once: the second is refused."""
        path = temp_dir(self) / "used-tokens"
        store = self.store(path, Token(ONCE, single_use=True))
        with held_lock(path):
            first, second = store.authenticate(ONCE), store.authenticate(ONCE)
            self.assertNoResult(first)
            self.assertNoResult(second)
        answers = await gatherResults([first, second])
        self.assertEqual([a is not None for a in answers], [True, False])
        self.assertEqual(len(path.read_text().split()), 1)

    async def test_lock_held_by_another_process(self) -> None:
        """The check waits for the lock off the reactor; past the timeout, it is refused."""
        path = temp_dir(self) / "used-tokens"
        store = self.store(path, Token(ONCE, single_use=True), timeout=1.0)
        with held_lock(path):
            waiting = store.authenticate(ONCE)
            self.assertNoResult(waiting)  # the reactor goes on: this test runs
            with self.assertRaises(TokenStoreError) as caught:
                await waiting
        self.assertIn(f"cannot record it in {path}", str(caught.exception))
        self.assertIsNotNone(await store.authenticate(ONCE), "refused, not used up")

    async def test_stop_ends_the_thread(self) -> None:
        path = temp_dir(self) / "used-tokens"
        store = self.store(path, Token(ONCE, single_use=True))
        self.assertIsNotNone(await store.authenticate(ONCE))
        self.assertTrue(threads_named("tcpsocket-used-tokens"))
        store.stop()
        self.assertFalse(threads_named("tcpsocket-used-tokens"))


@contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Hold the file's exclusive ``flock``, as another process would."""
    with path.open("a+") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def threads_named(name: str) -> list[threading.Thread]:
    """The live threads whose name has ``name`` in it."""
    return [thread for thread in threading.enumerate() if name in thread.name]


class OriginSessionTests(TestCase):
    async def handshake(self, origin: str | None) -> bytes:
        tokens = TokenStore([Token(WEB, origins=frozenset({"https://app.example"}))])
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
        client.send(encode_handshake(WEB))
        ack = await client.next()
        assert isinstance(ack, bytes)
        if ack == b"\x00":
            code, _ = await client.closed
            self.assertEqual(code, 1008)
        return ack

    async def test_matching_origin(self) -> None:
        self.assertEqual(await self.handshake("https://app.example"), b"\x01")

    async def test_other_origin_refused_at_upgrade(self) -> None:
        with self.assertRaises(ConnectionError) as caught:
            await self.handshake("https://evil.example")
        self.assertIn("403", str(caught.exception))

    async def test_no_origin_refused_by_pinned_token(self) -> None:
        self.assertEqual(await self.handshake(None), b"\x00")
