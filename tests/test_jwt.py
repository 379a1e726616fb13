"""Signed session tokens (JWT): claims, keys, expiry, single use in process and in Redis."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.client import DATA_EVENT, Session, TcpSocketManager
from tcpsocket.interfaces import TokenStoreError
from tcpsocket.jwt_tokens import JwtVerifier, LocalUsedRecord, RedisUsedRecord
from tcpsocket.policy import DestinationPolicy, Rule
from tcpsocket.reload import apply_reload
from tcpsocket.tap import Options
from tcpsocket.tokens import Token, TokenStore
from tests.support import Echo, listen_remote, start_daemon, temp_dir, test_config, wait_until
from tests.test_tokens import threads_named

SECRET = b"a-secret-of-at-least-thirty-two-bytes-for-hs256"
STATIC = "static-token-0123456789"


def mint(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    """A signed token with ``claims``, expiring in an hour unless they say otherwise."""
    body = {"sub": "alice", "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(body, key, algorithm=algorithm)


def pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class VerifierTests(SynchronousTestCase):
    def test_claims_become_a_token(self) -> None:
        verifier = JwtVerifier(SECRET)
        value = mint(
            {
                "permissions": ["tcp-socket"],
                "origins": ["https://App.example"],
                "rules": ["allow imap.example.org:993"],
            }
        )
        token = self.successResultOf(verifier.verify(value, "https://app.example"))
        assert token is not None
        self.assertEqual(token.identity, "alice")
        self.assertEqual(token.permissions, {"tcp-socket"})
        self.assertEqual(token.origins, {"https://app.example"})
        self.assertEqual(token.rules, (Rule.parse("allow imap.example.org:993"),))
        self.assertIsNone(
            self.successResultOf(verifier.verify(value, "https://evil.example")), "pinned origin"
        )
        self.assertEqual(verifier.claimed_rules["alice"], token.rules)

    def test_refused(self) -> None:
        verifier = JwtVerifier(SECRET, audience="tcpsocket", issuer="https://issuer.example")
        good = {"aud": "tcpsocket", "iss": "https://issuer.example"}
        self.assertIsNotNone(self.successResultOf(verifier.verify(mint(good))))
        for claims, why in [
            ({"aud": "other", "iss": "https://issuer.example"}, "audience"),
            ({"iss": "https://issuer.example"}, "no audience"),
            ({"aud": "tcpsocket", "iss": "https://other.example"}, "issuer"),
            ({**good, "exp": int(time.time()) - 60}, "expired beyond the leeway"),
            ({**good, "nbf": int(time.time()) + 600}, "not yet valid"),
            ({**good, "admin": True}, "unknown claim"),
            ({**good, "permissions": "tcp-socket"}, "not a list"),
            ({**good, "single_use": True}, "single use without jti"),
            ({**good, "rules": ["allow nowhere"]}, "bad rule"),
        ]:
            self.assertIsNone(self.successResultOf(verifier.verify(mint(claims))), why)
        self.assertIsNone(
            self.successResultOf(verifier.verify(mint(good, key=SECRET + b"x"))), "other key"
        )
        no_exp = jwt.encode({"sub": "a", **good}, SECRET, algorithm="HS256")
        self.assertIsNone(self.successResultOf(verifier.verify(no_exp)), "no expiry")
        unsigned = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none")
        self.assertIsNone(self.successResultOf(verifier.verify(unsigned)), "alg none")

    def test_clock_skew(self) -> None:
        verifier = JwtVerifier(SECRET, leeway=30)
        self.assertIsNotNone(
            self.successResultOf(verifier.verify(mint({"exp": int(time.time()) - 10})))
        )
        self.assertIsNone(
            self.successResultOf(
                JwtVerifier(SECRET, leeway=0).verify(mint({"exp": int(time.time()) - 10}))
            )
        )

    def test_public_keys(self) -> None:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_key = ec.generate_private_key(ec.SECP256R1())
        for private, algorithm in [(rsa_key, "RS256"), (ec_key, "ES256")]:
            verifier = JwtVerifier(public_key=pem(private.public_key()))
            self.assertIsNotNone(
                self.successResultOf(verifier.verify(mint({}, private, algorithm))), algorithm
            )
            self.assertIsNone(
                self.successResultOf(verifier.verify(mint({}))), "an HS256 token is not accepted"
            )
        # A public key used as an HS256 secret (algorithm confusion) is refused.
        verifier = JwtVerifier(public_key=pem(rsa_key.public_key()))
        self.assertIsNone(self.successResultOf(verifier.verify(mint({}, SECRET))))

    def test_short_secret_and_bad_key(self) -> None:
        self.assertRaises(ValueError, JwtVerifier, b"short")
        self.assertRaises(ValueError, JwtVerifier, None, b"not a key")
        self.assertRaises(ValueError, JwtVerifier)

    def test_single_use(self) -> None:
        verifier = JwtVerifier(SECRET)
        value = mint({"single_use": True, "jti": "one"})
        self.assertIsNotNone(self.successResultOf(verifier.verify(value)))
        self.assertIsNone(self.successResultOf(verifier.verify(value)))
        self.assertIsNotNone(
            self.successResultOf(verifier.verify(mint({"single_use": True, "jti": "two"})))
        )

    def test_local_record_forgets_at_expiry(self) -> None:
        now = [1000.0]
        record = LocalUsedRecord(lambda: now[0])
        self.assertTrue(self.successResultOf(record.claim("a", 1010)))
        self.assertFalse(self.successResultOf(record.claim("a", 1010)))
        now[0] = 1011
        self.assertTrue(
            self.successResultOf(record.claim("a", 1100)), "the token itself has expired by then"
        )

    def test_one_subject_one_set_of_rules(self) -> None:
        verifier = JwtVerifier(SECRET)
        self.assertIsNotNone(
            self.successResultOf(verifier.verify(mint({"rules": ["allow a.example:1"]})))
        )
        self.assertIsNone(
            self.successResultOf(verifier.verify(mint({"rules": ["allow b.example:1"]})))
        )
        self.assertIsNotNone(
            self.successResultOf(
                verifier.verify(mint({"sub": "bob", "rules": ["allow b.example:1"]}))
            )
        )

    def test_store_tries_static_tokens_first(self) -> None:
        store = TokenStore([Token(STATIC)], jwt=JwtVerifier(SECRET))
        self.assertEqual(len(store), 2)
        self.assertIsNotNone(self.successResultOf(store.authenticate(STATIC)))
        self.assertIsNotNone(self.successResultOf(store.authenticate(mint({}))))
        self.assertIsNone(self.successResultOf(store.authenticate("not.a.token")))
        self.assertIsNone(self.successResultOf(store.authenticate("unknown-token-0123456789")))

    def test_claimed_rules_in_the_policy_and_across_reload(self) -> None:
        live = test_config(
            policy=DestinationPolicy(["allow 127.0.0.1:*"], {"static": ["deny *:*"]})
        )
        live.policy.claimed["alice"] = (Rule.parse("deny 127.0.0.1:25"),)
        self.assertIsNotNone(live.policy.check("alice", "127.0.0.1", 25))
        self.assertIsNone(live.policy.check("bob", "127.0.0.1", 25))
        fresh = test_config(policy=DestinationPolicy(["allow 127.0.0.1:*"]))
        reloaded = apply_reload(live, fresh)
        self.assertIsNotNone(reloaded.policy.check("alice", "127.0.0.1", 25), "kept on reload")

    def test_public_key_option(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        path = temp_dir(self) / "public.pem"
        path.write_bytes(pem(key.public_key()))
        options = Options()
        options.parseOptions(["--jwt-public-key-file", str(path), "--jwt-issuer", "backend"])
        tokens = options["config"].tokens
        self.assertIsNotNone(
            self.successResultOf(tokens.authenticate(mint({"iss": "backend"}, key, "ES256")))
        )
        self.assertIsNone(
            self.successResultOf(tokens.authenticate(mint({"iss": "other"}, key, "ES256")))
        )

    def test_reload_keeps_used_single_use_tokens(self) -> None:
        live = TokenStore(jwt=JwtVerifier(SECRET))
        value = mint({"single_use": True, "jti": "kept"})
        self.assertIsNotNone(self.successResultOf(live.authenticate(value)))
        live.replace(TokenStore(jwt=JwtVerifier(SECRET)))
        self.assertIsNone(self.successResultOf(live.authenticate(value)))
        live.replace(TokenStore())
        self.assertIsNone(
            self.successResultOf(live.authenticate(mint({}))),
            "signed tokens turned off by the reload",
        )

    def test_options(self) -> None:
        directory = temp_dir(self)
        secret = directory / "secret"
        secret.write_bytes(SECRET + b"\n")
        options = Options()
        options.parseOptions(
            ["--jwt-secret-file", str(secret), "--jwt-audience", "tcpsocket", "--jwt-leeway", "5"]
        )
        tokens = options["config"].tokens
        self.assertIsNotNone(self.successResultOf(tokens.authenticate(mint({"aud": "tcpsocket"}))))
        self.assertIsNone(self.successResultOf(tokens.authenticate(mint({}))), "no audience")
        self.assertEqual(tokens.jwt.leeway, 5)
        self.assertIs(tokens.jwt.claimed_rules, options["config"].policy.claimed)
        secret.write_bytes(b"short")
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--jwt-secret-file", str(secret)])
        self.assertIn("JWT secret is too short", str(caught.exception))


class RedisServer:
    """A redis-server of the test's own, on a loopback port, in a temp directory."""

    def __init__(self, test: Any) -> None:
        server = shutil.which("redis-server")
        test.assertIsNotNone(server, "scripts/test installs Debian's redis-server")
        assert server is not None
        from tests.test_deploy import free_port

        self.port = free_port()
        directory = temp_dir(test)
        self.process = subprocess.Popen(
            [
                server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        test.addCleanup(self.stop)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    async def ready(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("redis-server did not start")


async def start_redis(test: Any) -> RedisServer:
    server = RedisServer(test)
    await server.ready()
    return server


class RedisRecordTests(TestCase):
    def record(self, url: str, **options: Any) -> RedisUsedRecord:
        record = RedisUsedRecord(url, **options)
        self.addCleanup(record.stop)
        return record

    async def test_single_use_across_verifiers(self) -> None:
        server = await start_redis(self)
        nodes = [JwtVerifier(SECRET, used=self.record(server.url)) for _ in range(2)]
        value = mint({"single_use": True, "jti": "once-across-nodes"})
        self.assertIsNotNone(await nodes[1].verify(value))
        self.assertIsNone(await nodes[0].verify(value), "used on the other node")
        self.assertIsNone(await nodes[1].verify(value))
        import redis

        client = redis.Redis.from_url(server.url)
        (key,) = client.keys("tcpsocket:jti:*")
        self.assertGreater(client.ttl(key), 3000, "kept until the token expires")
        self.assertNotIn(b"once-across-nodes", key)
        client.close()

    async def test_store_down_refuses_single_use(self) -> None:
        server = await start_redis(self)
        record = self.record(server.url, timeout=0.2)
        server.stop()
        verifier = JwtVerifier(SECRET, used=record)
        with self.assertRaises(TokenStoreError) as caught:
            await verifier.verify(mint({"single_use": True, "jti": "x"}))
        self.assertIn(f"the used-token store {server.url} failed", str(caught.exception))
        self.assertIsNotNone(await verifier.verify(mint({})), "other tokens need no store")
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_reload_keeps_the_record_of_an_unchanged_store(self) -> None:
        server = await start_redis(self)
        live = TokenStore(jwt=JwtVerifier(SECRET, used=self.record(server.url)))
        kept = live.jwt.used
        live.replace(TokenStore(jwt=JwtVerifier(SECRET, used=self.record(server.url))))
        self.assertIs(live.jwt.used, kept, "same store: same client and threads")
        self.assertIsNotNone(await live.authenticate(mint({"single_use": True, "jti": "r"})))
        self.assertEqual(len(threads_named("tcpsocket-redis")), 1)
        other = self.record(server.url.replace("/0", "/1"))
        live.replace(TokenStore(jwt=JwtVerifier(SECRET, used=other)))
        self.assertIs(live.jwt.used, other)
        self.assertEqual(threads_named("tcpsocket-redis"), [], "the store given up is stopped")


class JwtSessionTests(TestCase):
    async def test_session_with_a_signed_token_and_a_forged_one(self) -> None:
        tokens = TokenStore([Token(STATIC)], jwt=JwtVerifier(SECRET))
        site, port = await start_daemon(self, tokens=tokens, failed_handshakes_per_minute=2)
        tokens.jwt.claimed_rules = site.config.policy.claimed
        _, echo_port = await listen_remote(self, Echo)
        url = f"ws://127.0.0.1:{port}/ws"
        session = await Session.connect(url, mint({"rules": [f"deny 127.0.0.1:{echo_port + 1}"]}))
        manager = await TcpSocketManager.get(session)
        sock = await manager.open(host="127.0.0.1", port=echo_port)
        received = bytearray()
        sock.add_event_listener(DATA_EVENT, received.extend)
        await sock.send(b"signed")
        await wait_until(lambda: bytes(received) == b"signed")
        with self.assertRaises(Exception) as denied:
            await manager.open(host="127.0.0.1", port=echo_port + 1)
        self.assertIn("denied by rule", str(denied.exception))
        await session.close()

        forged = mint({}, key=SECRET[::-1])
        for _ in range(2):
            with self.assertRaises(Exception) as refused:
                await Session.connect(url, forged)
            self.assertIn("invalid token", str(refused.exception))
        with self.assertRaises(Exception) as limited:
            await Session.connect(url, mint({}))
        self.assertIn("too many failed handshakes", str(limited.exception))


async def session_echo(url: str, token: str, echo_port: int, payload: bytes) -> None:
    """Open a session, echo ``payload`` through a loopback socket, close."""
    session = await Session.connect(url, token, endpoint=None)
    manager = await TcpSocketManager.get(session)
    sock = await manager.open(host="127.0.0.1", port=echo_port)
    received = bytearray()
    sock.add_event_listener(DATA_EVENT, received.extend)
    await sock.send(payload)
    await wait_until(lambda: bytes(received) == payload)
    await session.close()


class MintExampleTests(SynchronousTestCase):
    def test_doc_example_mints_what_the_daemon_accepts(self) -> None:
        directory = temp_dir(self)
        secret = directory / "secret"
        secret.write_bytes(SECRET)
        example = Path(__file__).parent.parent / "doc" / "examples" / "mint_jwt.py"
        minted = subprocess.run(
            [sys.executable, str(example), str(secret), "mail-app", "--single-use"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        verifier = JwtVerifier(SECRET, audience="tcpsocket")
        token = self.successResultOf(verifier.verify(minted, "https://mail.example.org"))
        assert token is not None
        self.assertEqual(token.identity, "mail-app")
        self.assertTrue(token.single_use)
        self.assertEqual(len(token.rules), 2)
        self.assertIsNone(
            self.successResultOf(verifier.verify(minted, "https://mail.example.org")), "used"
        )
