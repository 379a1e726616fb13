"""``twistd tcpsocket --workers N``: real processes on loopback.

Sessions spread by load, a killed worker is restarted, SIGTERM loses nothing,
SIGHUP reloads every worker, a single-use token works once across workers,
and the parent's /metrics adds the workers' up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.config import ServerConfig
from tcpsocket.tokens import Token, TokenStore
from tcpsocket.workers import add_metrics, divide_budgets, tcp_listen_address
from tests.session_helpers import listen_small, manager, session
from tests.support import TOKEN, TWISTD, raw_client, spawn_process, temp_dir, wait_until
from tests.test_deploy import free_port
from tests.test_shutdown import ACCEPTED, SlowSink, send_accepted
from tests.test_web import read_body

ONCE = "single-use-token-0123456789"
LATER = "added-on-reload-0123456789"


class Daemon:
    """``twistd -n tcpsocket --workers N`` on a loopback port, with /metrics on another."""

    def __init__(
        self, test: Any, workers: int, *options: str, twistd: tuple[str, ...] = ()
    ) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.directory = temp_dir(test)
        self.tokens_file = self.directory / "tokens.json"
        self.write_tokens([{"token": TOKEN, "identity": "app"}])
        args = [*TWISTD, "-n", "--pidfile=", *twistd, "tcpsocket", "--workers", str(workers)]
        args += ["--listen", f"tcp:{self.port}:interface=127.0.0.1", "--allow", "127.0.0.1:*"]
        args += ["--metrics-listen", f"tcp:{self.metrics_port}:interface=127.0.0.1"]
        args += ["--tokens-file", str(self.tokens_file), *options]

        def kill_workers() -> None:
            for pid in self.pids().values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        test.addCleanup(kill_workers)  # cleanups run last first: after the parent is killed
        self.collect = spawn_process(test, args, stop=signal.SIGKILL)
        self.process = self.collect.process
        self.count = workers

    def write_tokens(self, entries: list[dict[str, Any]]) -> None:
        self.tokens_file.write_text(json.dumps(entries))

    @property
    def log(self) -> str:
        return self.collect.output.decode()

    def pids(self) -> dict[int, int]:
        """The latest pid of each worker, from the parent's log."""
        return {
            int(i): int(pid)
            for i, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", self.log)
        }

    async def up(self) -> None:
        await wait_until(
            lambda: self.log.count("reactor class") > self.count or self.collect.ended.called, 30
        )
        assert not self.collect.ended.called, self.log
        await wait_until(lambda: "share 127.0.0.1" in self.log, 30)

    async def metrics(self) -> dict[str, float]:
        from twisted.web.client import Agent

        agent = Agent(reactor)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics".encode()
        response = await agent.request(b"GET", url)
        body = await read_body(response)
        samples: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    async def loads(self, expected: list[int]) -> None:
        """Wait until the workers report ``expected`` connections (in any order)."""
        seen: list[int] = []

        async def check() -> bool:
            metrics = await self.metrics()
            seen[:] = sorted(
                int(metrics[f'tcpsocket_worker_connections{{worker="{i}"}}'])
                for i in range(self.count)
            )
            return seen == sorted(expected)

        for _ in range(100):
            if await check():
                return
            await _sleep(0.1)
        raise AssertionError(f"loads {seen}, expected {expected}\n{self.log}")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _sleep(seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


async def handshake(test: Any, port: int, token: str) -> tuple[Any, bool]:
    """A raw session handshake with ``token``; the client and whether it was accepted."""
    from tcpsocket.messages import encode_handshake

    client = await raw_client(test, port)
    client.send(encode_handshake(token))
    ack = await client.next()
    return client, ack == b"\x01"


class WorkersTests(TestCase):
    async def test_spread_by_load_and_metrics_add_up(self) -> None:
        daemon = Daemon(self, 2)
        await daemon.up()
        clients = [await handshake(self, daemon.port, TOKEN) for _ in range(4)]
        self.assertTrue(all(ok for _, ok in clients))
        await daemon.loads([2, 2])
        metrics = await daemon.metrics()
        self.assertEqual(metrics["tcpsocket_sessions_total"], 4.0, "the workers' sum")
        self.assertEqual(metrics["tcpsocket_sessions_open"], 4.0)

    async def test_by_load_not_in_turn(self) -> None:
        daemon = Daemon(self, 2)
        await daemon.up()
        first, ok1 = await handshake(self, daemon.port, TOKEN)
        _, ok2 = await handshake(self, daemon.port, TOKEN)
        await daemon.loads([1, 1])
        for _ in range(2):
            # The worker that lost a session is the least loaded: it gets the next, every time
            # (taking turns would give the second one to the other worker: 0 and 2).
            first.dropConnection(abort=True)
            await daemon.loads([0, 1])
            first, ok = await handshake(self, daemon.port, TOKEN)
            self.assertTrue(ok)
            await daemon.loads([1, 1])
        self.assertTrue(ok1 and ok2)

    async def test_workers_log_next_to_the_parents_log_file(self) -> None:
        log = temp_dir(self) / "twistd.log"
        daemon = Daemon(self, 2, twistd=(f"--logfile={log}",))
        await wait_until(lambda: "share 127.0.0.1" in _read(log), 30)
        for index in range(2):
            path = Path(f"{log}.worker{index}")
            await wait_until(lambda p=path: "reactor class" in _read(p), 30)
        _, ok = await handshake(self, daemon.port, TOKEN)
        self.assertTrue(ok)

    async def test_global_session_limit_holds_across_workers(self) -> None:
        daemon = Daemon(self, 2, "--max-sessions", "2")
        await daemon.up()
        held = [await handshake(self, daemon.port, TOKEN) for _ in range(2)]
        self.assertTrue(all(ok for _, ok in held))
        await daemon.loads([1, 1])
        with self.assertRaises(ConnectionError) as caught:
            await handshake(self, daemon.port, TOKEN)
        self.assertIn("503", str(caught.exception), "each worker has 1 of the 2")
        metrics = await daemon.metrics()
        self.assertEqual(metrics['tcpsocket_sessions_refused_total{reason="capacity"}'], 1)
        self.assertEqual(metrics["tcpsocket_sessions_open"], 2)

    async def test_single_use_token_once_across_workers(self) -> None:
        used = temp_dir(self) / "used-tokens"
        daemon = Daemon(self, 2, "--used-tokens-file", str(used))
        daemon.write_tokens(
            [{"token": TOKEN, "identity": "app"}, {"token": ONCE, "single_use": True}]
        )
        await daemon.up()
        first, ok = await handshake(self, daemon.port, ONCE)
        self.assertTrue(ok)
        await daemon.loads([1, 0])
        # The least-loaded worker is the other one: it gets the second try, and refuses.
        _, again = await handshake(self, daemon.port, ONCE)
        self.assertFalse(again)
        metrics = await daemon.metrics()
        self.assertEqual(metrics['tcpsocket_handshake_failures_total{reason="invalid-token"}'], 1)
        self.assertEqual(len(used.read_text().split()), 1)
        del first

    async def test_killed_worker_is_restarted_and_logged(self) -> None:
        daemon = Daemon(self, 2)
        await daemon.up()
        victim = daemon.pids()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: daemon.pids()[0] != victim, 30)
        self.assertIn(f"worker 0 (pid {victim}) died", daemon.log)
        self.assertIn("restarting it in", daemon.log)
        await wait_until(lambda: daemon.log.count("reactor class") > 3, 30)
        clients = [await handshake(self, daemon.port, TOKEN) for _ in range(2)]
        self.assertTrue(all(ok for _, ok in clients))
        await daemon.loads([1, 1])
        self.assertEqual((await daemon.metrics())["tcpsocket_worker_restarts_total"], 1)

    async def test_sighup_reloads_every_worker(self) -> None:
        daemon = Daemon(self, 2)
        await daemon.up()
        _, refused = await handshake(self, daemon.port, LATER)
        self.assertFalse(refused)
        daemon.write_tokens([{"token": TOKEN}, {"token": LATER, "identity": "later"}])
        daemon.process.signalProcess(signal.SIGHUP)
        await wait_until(lambda: daemon.log.count("reloaded the tokens") == 2, 30)
        clients = [await handshake(self, daemon.port, LATER) for _ in range(2)]
        self.assertTrue(all(ok for _, ok in clients), daemon.log)
        await daemon.loads([1, 1])

    async def test_sigterm_mid_transfer_delivers_everything(self) -> None:
        factory, remote_port = await listen_small(self, SlowSink)
        daemon = Daemon(self, 2, "--close-timeout", "60")
        await daemon.up()
        client, service_id = await manager(self, daemon.port)
        idle = await session(self, daemon.port)
        socket_id = await client.open_ok(service_id, remote_port)
        data = await send_accepted(client, service_id, socket_id)
        (sink,) = factory.connections
        assert isinstance(sink, SlowSink)
        await daemon.loads([1, 1])

        daemon.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await client.raw.closed, (1001, "daemon stopping"))
        self.assertEqual(await idle.raw.closed, (1001, "daemon stopping"))
        sink.go()
        await daemon.collect.ended
        await wait_until(lambda: sink.reason is not None, timeout=30)
        self.assertEqual(sink.count, ACCEPTED, daemon.log)
        self.assertEqual(sink.digest.hexdigest(), hashlib.sha256(data).hexdigest())
        self.assertTrue(sink.clean_eof)
        self.assertEqual(daemon.log.count("every socket delivered what it accepted"), 2)
        self.assertIn("worker 0 (pid", daemon.log)
        self.assertNotIn("died", daemon.log)


class UnitTests(SynchronousTestCase):
    def test_budgets_divided(self) -> None:
        config = ServerConfig(tokens=TokenStore([Token(TOKEN)]), max_sessions=5, max_sockets=9)
        divided = divide_budgets(config, 2)
        self.assertEqual((divided.max_sessions, divided.max_sockets), (2, 4))
        self.assertEqual(divided.max_sockets_per_session, config.max_sockets_per_session)
        self.assertEqual(divide_budgets(ServerConfig(tokens=config.tokens, max_lookups=1), 4)
                         .max_lookups, 1)  # fmt: skip

    def test_listen_addresses(self) -> None:
        self.assertEqual(tcp_listen_address("tcp:8081:interface=127.0.0.1"), ("127.0.0.1", 8081))
        self.assertEqual(tcp_listen_address("tcp:80"), ("0.0.0.0", 80))
        self.assertEqual(tcp_listen_address(r"tcp6:80:interface=\:\:1"), ("::1", 80))
        self.assertRaises(ValueError, tcp_listen_address, "unix:/tmp/x")
        self.assertRaises(ValueError, tcp_listen_address, "ssl:443:privateKey=k")

    def test_workers_need_tcp_listeners(self) -> None:
        from twisted.python.usage import UsageError

        from tcpsocket.tap import Options

        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--workers", "2", "--listen", "unix:/x", "--token", TOKEN])
        self.assertIn("--workers needs tcp:PORT:interface=ADDR listeners", str(caught.exception))
        options = Options()
        options.parseOptions(["--workers", "2", "--token", TOKEN])
        self.assertEqual(options["workers"], 2)

    def test_metrics_added(self) -> None:
        one = b"# HELP a_total A.\n# TYPE a_total counter\na_total 2.0\na_created 5.0\n"
        two = b"# HELP a_total A.\n# TYPE a_total counter\na_total 3.0\na_created 6.0\n"
        text = add_metrics([one, two]).decode()
        self.assertIn("a_total 5.0", text)
        self.assertNotIn("a_created", text)
        self.assertIn("# TYPE a_total counter", text)
        info = b'# HELP t_info V.\n# TYPE t_info gauge\nt_info{version="1"} 1.0\n'
        self.assertIn('t_info{version="1"} 1.0', add_metrics([info, info]).decode())


class UsedTokensFileTests(TestCase):
    async def test_used_tokens_file_shared_by_processes(self) -> None:
        path = temp_dir(self) / "used"
        token = Token(ONCE, single_use=True)
        first, second = (TokenStore([token], used_tokens_file=path) for _ in range(2))
        for store in (first, second):
            self.addCleanup(store.stop)
        self.assertIsNotNone(await first.authenticate(ONCE))
        self.assertIsNone(await second.authenticate(ONCE), "read again under the lock")
        self.assertEqual(len(path.read_text().split()), 1)
