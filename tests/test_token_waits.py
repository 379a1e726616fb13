"""Token checks that wait for Redis: other sessions go on, races stay exact, endings stay clean.

The daemon's single-use record in Redis (``--jwt-used-store``) is asked on a
thread of its own.  A real redis-server is made to hold a ``SET`` with
``CLIENT PAUSE ... WRITE`` (its ``blocked_clients`` then counts the claims in
flight), or replaced by a loopback listener that accepts and never answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tcpsocket.config import ServerConfig
from tcpsocket.jwt_tokens import JwtVerifier, RedisUsedRecord
from tcpsocket.messages import Kind, decode_base, encode_handshake, encode_request
from tcpsocket.site import TcpSocketService
from tcpsocket.tokens import Token, TokenStore
from tests.support import (
    Echo,
    capture_logs,
    listen_remote,
    raw_client,
    start_daemon,
    temp_dir,
    test_config,
    wait_until,
)
from tests.test_deploy import free_port
from tests.test_jwt import SECRET, STATIC, mint, session_echo, start_redis
from tests.test_tokens import held_lock, threads_named

ACK = b"\x01"
REFUSED = b"\x00"
#: Long enough never to be reached in a test that releases Redis itself.
PATIENT = 20.0


class Paused:
    """Holds the write commands of a redis-server until released (``CLIENT PAUSE WRITE``)."""

    def __init__(self, test: Any, url: str) -> None:
        import redis

        self.admin = redis.Redis.from_url(url, socket_timeout=5)
        self.admin.client_pause(int(PATIENT * 1000), all=False)
        test.addCleanup(self.release)

    def claims_waiting(self) -> int:
        """``SET``\\ s held by the pause (Redis counts them as blocked clients)."""
        return int(self.admin.info("clients")["blocked_clients"])

    def release(self) -> None:
        if self.admin.connection_pool is not None:
            self.admin.client_unpause()
            self.admin.close()


class Silent(Protocol):
    """Accepts a Redis client's connection, reads its commands, never answers."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


async def silent_redis(test: Any) -> tuple[str, list[Silent]]:
    """A loopback listener standing in for a Redis that never answers; its URL and clients.

    (redis-py's first command on a connection, ``CLIENT SETINFO``, gets no answer either.)
    """
    factory = Factory.forProtocol(Silent)
    factory.connections = []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

    def stop() -> defer.Deferred[Any]:
        for connection in factory.connections:
            connection.transport.abortConnection()
        return defer.maybeDeferred(port.stopListening)

    test.addCleanup(stop)
    return f"redis://127.0.0.1:{port.getHost().port}/0", factory.connections


def store(test: Any, url: str, timeout: float = PATIENT) -> TokenStore:
    """Static token ``STATIC`` and signed tokens, single use recorded at ``url``."""
    record = RedisUsedRecord(url, timeout=timeout)
    tokens = TokenStore([Token(STATIC)], jwt=JwtVerifier(SECRET, used=record))
    test.addCleanup(tokens.stop)
    return tokens


def once(jti: str) -> str:
    return mint({"single_use": True, "jti": jti})


async def handshake(test: Any, port: int, token: str) -> Any:
    """A raw client that has sent ``token``."""
    client = await raw_client(test, port)
    client.send(encode_handshake(token))
    return client


def waiting(site: Any) -> int:
    """Sessions of ``site`` still pending (no session yet: their token is being checked)."""
    return sum(1 for session in site.session_factory.sessions if not session._authenticated)


class StalledStoreTests(TestCase):
    async def test_other_sessions_go_on_while_redis_holds_a_claim(self) -> None:
        redis = await start_redis(self)
        paused = Paused(self, redis.url)
        site, port = await start_daemon(self, tokens=store(self, redis.url))
        _, echo_port = await listen_remote(self, Echo)
        held = await handshake(self, port, once("held"))
        await wait_until(lambda: paused.claims_waiting() == 1)
        self.assertEqual(len(site.admission), 1, "a session waiting for its token is pending")

        # While Redis holds the claim: another session opens, echoes and closes.
        url = f"ws://127.0.0.1:{port}/ws"
        await session_echo(url, STATIC, echo_port, b"not delayed")
        await session_echo(url, mint({}), echo_port, b"signed, not single use")
        self.assertEqual(list(held.messages), [], "still waiting for its answer")
        self.assertFalse(held.closed.called)
        self.assertEqual(paused.claims_waiting(), 1)

        paused.release()
        self.assertEqual(await held.next(), ACK)
        self.assertEqual(len(site.admission), 0)

    async def test_a_silent_store_then_a_dropped_one_refuses_with_1013(self) -> None:
        url, silent = await silent_redis(self)
        logs = capture_logs(self)
        site, port = await start_daemon(self, tokens=store(self, url))
        _, echo_port = await listen_remote(self, Echo)
        held = await handshake(self, port, once("silent"))
        await wait_until(lambda: silent and silent[0].received)
        await session_echo(f"ws://127.0.0.1:{port}/ws", STATIC, echo_port, b"goes on")
        self.assertEqual(list(held.messages), [])

        silent[0].transport.loseConnection()  # the store goes away: an error, at once
        self.assertEqual(await held.next(), REFUSED)
        code, reason = await held.closed
        self.assertEqual((code, reason), (1013, "the token cannot be checked now, try again later"))
        (line,) = [e for e in logs if "cause" in e]
        self.assertEqual(line["log_level"].name, "error")
        self.assertIn(f"the used-token store {url} failed", line["cause"])
        metrics = site.config.metrics.registry
        self.assertEqual(
            metrics.get_sample_value(
                "tcpsocket_handshake_failures_total", {"reason": "token-store"}
            ),
            1,
        )
        self.assertTrue(site.session_factory.failures.allows("127.0.0.1"))

    async def test_a_store_past_its_timeout_refuses(self) -> None:
        url, silent = await silent_redis(self)
        _, port = await start_daemon(self, tokens=store(self, url, timeout=0.3))
        held = await handshake(self, port, once("late"))
        self.assertEqual(await held.next(), REFUSED)
        code, _ = await held.closed
        self.assertEqual(code, 1013)
        self.assertTrue(silent[0].received, "it was asked, and did not answer")


class LockedFileTests(TestCase):
    async def test_other_sessions_go_on_while_the_used_tokens_file_is_locked(self) -> None:
        path = temp_dir(self) / "used-tokens"
        single = "single-use-token-0123456789"
        tokens = TokenStore(
            [Token(STATIC), Token(single, single_use=True)],
            used_tokens_file=path,
            used_tokens_timeout=PATIENT,
        )
        self.addCleanup(tokens.stop)
        site, port = await start_daemon(self, tokens=tokens)
        _, echo_port = await listen_remote(self, Echo)
        with held_lock(path):  # as another worker would, stopped while it holds it
            held = await handshake(self, port, single)
            await wait_until(lambda: waiting(site) == 1)
            await session_echo(f"ws://127.0.0.1:{port}/ws", STATIC, echo_port, b"not delayed")
            self.assertEqual(list(held.messages), [], "still waiting for the lock")
        self.assertEqual(await held.next(), ACK)
        self.assertEqual(len(path.read_text().split()), 1)


class RaceTests(TestCase):
    async def race(self, daemons: int, name: str) -> None:
        """Two handshakes with one single-use token, spread over ``daemons`` daemons on one
        Redis: both claims are at Redis at once before it answers either; one session wins."""
        redis = await start_redis(self)
        paused = Paused(self, redis.url)
        ports: list[int] = []
        for _ in range(daemons):  # each daemon with a store (and Redis client) of its own
            ports.append((await start_daemon(self, tokens=store(self, redis.url)))[1])
        token = once(name)
        clients = [await handshake(self, ports[i % daemons], token) for i in range(2)]
        await wait_until(lambda: paused.claims_waiting() == 2)
        paused.release()
        answers = sorted([await client.next() for client in clients])
        self.assertEqual(answers, [REFUSED, ACK])

    async def test_two_handshakes_one_token_on_one_daemon(self) -> None:
        await self.race(1, "raced")

    async def test_two_handshakes_one_token_on_two_nodes(self) -> None:
        await self.race(2, "raced-across-nodes")

    async def test_many_claims_from_two_records_at_once(self) -> None:
        """Two records (two nodes' clients and threads) claim the same 40 ids concurrently."""
        redis = await start_redis(self)
        records = [RedisUsedRecord(redis.url, timeout=5) for _ in range(2)]
        for record in records:
            self.addCleanup(record.stop)
        expires = reactor.seconds() + 3600
        claims = [r.claim(f"jti-{n}", expires) for n in range(40) for r in records]
        results = await defer.gatherResults(claims)
        for n in range(40):
            self.assertEqual(sorted(results[2 * n : 2 * n + 2]), [False, True], f"jti-{n}")


class EndingWhileWaitingTests(TestCase):
    async def test_client_closes_while_its_token_is_checked(self) -> None:
        redis = await start_redis(self)
        paused = Paused(self, redis.url)
        logs = capture_logs(self)
        site, port = await start_daemon(self, tokens=store(self, redis.url))
        token = once("left")
        held = await handshake(self, port, token)
        await wait_until(lambda: paused.claims_waiting() == 1)
        held.dropConnection(abort=True)
        await held.closed
        await wait_until(lambda: not site.session_factory.sessions)
        self.assertEqual(len(site.admission), 0, "its pending entry is released at once")

        self.assertEqual(in_flight(site), 0, "its check was given up")
        paused.release()
        await wait_until(lambda: paused.admin.keys("tcpsocket:jti:*") != [])
        started = site.config.metrics.registry.get_sample_value("tcpsocket_sessions_total")
        self.assertEqual(started, 0, "no session for a client that left")
        failed = site.config.metrics.registry.get_sample_value(
            "tcpsocket_handshake_failures_total", {"reason": "token-store"}
        )
        self.assertEqual(failed, 0, "leaving is not a failure of the store")
        self.assertFalse([e for e in logs if e.get("log_level") and e["log_level"].name == "error"])
        again = await handshake(self, port, token)
        self.assertEqual(await again.next(), REFUSED, "its claim reached Redis: used")

    async def test_handshake_deadline_while_waiting(self) -> None:
        redis = await start_redis(self)
        paused = Paused(self, redis.url)
        site, port = await start_daemon(self, tokens=store(self, redis.url), handshake_timeout=1.5)
        held = await handshake(self, port, once("slow"))
        code, reason = await held.closed
        self.assertEqual((code, reason), (1008, "the token could not be checked in time"))
        self.assertEqual(list(held.messages), [], "no ack")
        self.assertEqual(paused.claims_waiting(), 1)
        paused.release()
        await wait_until(lambda: not in_flight(site))
        self.assertEqual(len(site.admission), 0)

    async def test_messages_after_the_token_wait_for_the_ack(self) -> None:
        redis = await start_redis(self)
        paused = Paused(self, redis.url)
        _, port = await start_daemon(self, tokens=store(self, redis.url))
        held = await handshake(self, port, once("pipelined"))
        held.send(encode_request(0, 0, 1, b"\x01\x00"))  # HasService "", before the ack
        await wait_until(lambda: paused.claims_waiting() == 1)
        paused.release()
        self.assertEqual(await held.next(), ACK)
        answer = decode_base(await held.next())
        self.assertEqual((answer.kind, answer.request), (Kind.RESPONSE, 1))

    async def test_daemon_stops_while_a_token_is_checked(self) -> None:
        url, silent = await silent_redis(self)
        tokens = store(self, url, timeout=1.0)
        config: ServerConfig = test_config(tokens=tokens)
        port = free_port()
        service = TcpSocketService(config, [f"tcp:{port}:interface=127.0.0.1"], reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        held = await handshake(self, port, once("stopping"))
        await wait_until(lambda: silent and silent[0].received)
        await service.stopService()
        code, reason = await held.closed
        self.assertEqual((code, reason), (1001, "daemon stopping"))
        self.assertEqual(list(held.messages), [], "no ack")
        self.assertEqual(threads_named("tcpsocket-redis"), [], "stopped with the service")


def in_flight(site: Any) -> int:
    """Claims of ``site``'s token store not answered yet."""
    return int(site.config.tokens.jwt.used.in_flight)
