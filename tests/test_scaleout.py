"""deploy/haproxy-two-nodes.cfg: HAProxy in front of two daemons sharing signed tokens and Redis.

Sessions spread across the nodes, one JWT works on either, a single-use one
works once across both, and a node drained with SIGTERM loses no byte.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.session_helpers import listen_small, session
from tests.support import TWISTD, spawn_process, temp_dir, wait_until
from tests.test_deploy import DEPLOY, free_port
from tests.test_jwt import SECRET, mint, start_redis
from tests.test_shutdown import ACCEPTED, SlowSink, send_accepted


async def _sleep(seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


async def handshake(test: Any, port: int, token: str) -> tuple[Any, bool]:
    from tcpsocket.messages import encode_handshake
    from tests.support import raw_client

    client = await raw_client(test, port)
    client.send(encode_handshake(token))
    return client, await client.next() == b"\x01"


class TwoNodesTests(TestCase):
    async def start(self) -> tuple[int, list[Any]]:
        """Redis, two daemons and HAProxy (the deploy file, on free ports); the front port."""
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        redis = await start_redis(self)
        directory = temp_dir(self)
        secret = directory / "jwt-secret"
        secret.write_bytes(SECRET)
        nodes: list[Any] = []
        ports = [free_port(), free_port()]
        for port in ports:
            args = [*TWISTD, "-n", "--pidfile=", "tcpsocket", "--close-timeout", "60"]
            args += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--allow", "127.0.0.1:*"]
            args += ["--jwt-secret-file", str(secret), "--jwt-audience", "tcpsocket"]
            args += ["--jwt-used-store", redis.url]
            node = spawn_process(self, args, directory)
            node.port = port
            nodes.append(node)
        for node in nodes:
            await wait_until(lambda n=node: b"starting on" in n.output or n.ended.called, 30)
            self.assertFalse(node.ended.called, node.output.decode())
        front = free_port()
        config = (DEPLOY / "haproxy-two-nodes.cfg").read_text()
        for placeholder, port in [("8080", front), ("8081", ports[0]), ("8082", ports[1])]:
            self.assertIn(f"127.0.0.1:{placeholder}", config)
            config = config.replace(f"127.0.0.1:{placeholder}", f"127.0.0.1:{port}")
        path = directory / "haproxy.cfg"
        path.write_text(config)
        proxy = spawn_process(self, [haproxy, "-db", "-f", str(path)], directory)
        await self.answering(front, proxy)
        return front, nodes

    async def answering(self, front: int, proxy: Any) -> None:
        """Wait until HAProxy serves both nodes (each answers a request for the library)."""
        from twisted.web.client import Agent

        from tests.test_web import read_body

        url = f"http://127.0.0.1:{front}/api/v1/shared/core.js".encode()
        answered = 0
        for _ in range(300):
            self.assertFalse(proxy.ended.called, proxy.output.decode())
            try:
                response = await Agent(reactor).request(b"GET", url)
                await read_body(response)
                answered = answered + 1 if response.code == 200 else 0
            except Exception:
                answered = 0
            if answered >= 2:
                return
            await _sleep(0.1)
        raise AssertionError(proxy.output.decode())

    def sessions_on(self, node: Any) -> int:
        """Sessions the node started (its log says so, once for each)."""
        return len(re.findall(rb"session of alice from \S+ started", node.output))

    async def test_spread_one_token_either_node_single_use_once(self) -> None:
        front, nodes = await self.start()
        token = mint({"aud": "tcpsocket"})
        held = [await handshake(self, front, token) for _ in range(2)]
        self.assertEqual([ok for _, ok in held], [True, True])
        await wait_until(lambda: [self.sessions_on(n) for n in nodes] == [1, 1], 10)

        once = mint({"aud": "tcpsocket", "single_use": True, "jti": "one-session"})
        first, ok = await handshake(self, front, once)
        self.assertTrue(ok)
        await wait_until(lambda: sum(self.sessions_on(n) for n in nodes) == 3, 10)
        (other,) = [n for n in nodes if self.sessions_on(n) == 1]
        # The other node has the fewest connections: it gets the next try, and refuses.
        _, again = await handshake(self, front, once)
        self.assertFalse(again)
        await wait_until(lambda: b"invalid token" in other.output, 10)
        _, again = await handshake(self, front, once)
        self.assertFalse(again)
        _, forged = await handshake(self, front, mint({"aud": "tcpsocket"}, SECRET[::-1]))
        self.assertFalse(forged)
        del first

    async def test_node_drained_with_sigterm_loses_nothing(self) -> None:
        front, nodes = await self.start()
        token = mint({"aud": "tcpsocket"})
        factory, remote_port = await listen_small(self, SlowSink)
        client = await session(self, front, token=token)
        service = await client.get_service()
        socket_id = await client.open_ok(service, remote_port)
        data = await send_accepted(client, service, socket_id)
        (sink,) = factory.connections
        assert isinstance(sink, SlowSink)
        # The nodes' log lines arrive through pipes, after the ack: wait for them.
        await wait_until(lambda: sum(self.sessions_on(n) for n in nodes) == 1, 10)
        (busy,) = [n for n in nodes if self.sessions_on(n) == 1]
        (other,) = [n for n in nodes if n is not busy]

        busy.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await client.raw.closed, (1001, "daemon stopping"))
        # While it drains, new sessions go to the other node.
        _, ok = await handshake(self, front, token)
        self.assertTrue(ok)
        await wait_until(lambda: self.sessions_on(other) == 1, 10)
        self.assertEqual(self.sessions_on(busy), 1)
        sink.go()
        await busy.ended
        await wait_until(lambda: sink.reason is not None, timeout=30)
        self.assertEqual(sink.count, ACCEPTED)
        self.assertEqual(sink.digest.hexdigest(), hashlib.sha256(data).hexdigest())
        self.assertTrue(sink.clean_eof)
        self.assertIn(b"every socket delivered what it accepted", busy.output)
        _, ok = await handshake(self, front, token)
        self.assertTrue(ok, "served by the node left")
        await wait_until(lambda: self.sessions_on(other) == 2, 10)
