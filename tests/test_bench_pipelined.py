"""The benchmark's pipelined echo (bench/echo_load.js, bench/pipelined.py) against a real
daemon and the Node echo remote, on loopback: every message comes back byte-exact, every
send is answered, the numbers agree with each other, and a corrupted echo is caught."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.pipelined import NICE, _Snapshot, pipelined_echo, start_echo_remote, summarize
from bench.targets import DaemonTarget, Processes
from tests.support import temp_dir

SHAPE = {"sessions": 3, "sockets": 2, "depth": 4, "batch": 2}


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


class PipelinedEchoTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.processes = Processes(temp_dir(self))
        self.addCleanup(self.processes.stop_all)

    def daemon(self, workers: int | None = None) -> DaemonTarget:
        target = DaemonTarget(
            0, self.processes, {"max_sockets_per_session": 200}, "auto", workers=workers
        )
        target.start()
        return target

    def assert_consistent(self, result: dict[str, Any]) -> None:
        checks = result["checks"]
        self.assertTrue(checks["ok"], checks)
        self.assertGreater(checks["sends"], 100)
        self.assertEqual(checks["replies"], checks["sends"])
        self.assertEqual(checks["echoed_bytes"], 64 * checks["sends"])
        self.assertEqual(
            (checks["mismatched_bytes"], checks["unechoed_bytes"], checks["unanswered_sends"]),
            (0, 0, 0),
        )
        self.assertEqual((result["sessions"], result["sockets"]), (3, 6))
        self.assertGreater(result["round_trips"], 0)
        self.assertLessEqual(result["round_trips"], checks["sends"])
        self.assertAlmostEqual(
            result["rt_per_s"], result["round_trips"] / result["seconds"], delta=1e-6
        )
        self.assertGreater(result["server_cores"], 0.0)
        self.assertAlmostEqual(
            result["server_cpu_us_per_rt"],
            result["server_cores"] * result["wall_seconds"] / result["round_trips"] * 1e6,
            delta=1e-6,
        )

    def test_one_process(self) -> None:
        remote_port, remote_pid = start_echo_remote(self.processes)
        # The load generator yields the CPU to the daemon.
        self.assertEqual(os.getpriority(os.PRIO_PROCESS, remote_pid), NICE)
        target = self.daemon()
        result = run(pipelined_echo(target, remote_port, remote_pid, 1.0, warmup=0.3, **SHAPE))
        self.assert_consistent(result)
        self.assertEqual(result["server_processes"], 1)

    def test_two_workers(self) -> None:
        """Three processes (the parent and two workers); both workers serve sessions."""
        remote_port, remote_pid = start_echo_remote(self.processes)
        target = self.daemon(workers=2)
        result = run(pipelined_echo(target, remote_port, remote_pid, 1.0, warmup=0.3, **SHAPE))
        self.assert_consistent(result)
        self.assertEqual(result["server_processes"], 3)
        busiest = sorted(result["server_process_cores"])[-2:]
        self.assertGreater(busiest[0], 0.0, result["server_process_cores"])

    def test_corrupted_echo_is_caught(self) -> None:
        """A remote that changes one byte of what it echoes fails the checks."""
        target = self.daemon()

        class Corrupting(asyncio.Protocol):
            seen = 0

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.WriteTransport)
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                if self.seen <= 100 < self.seen + len(data):
                    changed = bytearray(data)
                    changed[100 - self.seen] ^= 0x01
                    data = bytes(changed)
                self.seen += len(data)
                self.transport.write(data)

        async def scenario() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(Corrupting, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            try:
                return await pipelined_echo(target, port, os.getpid(), 0.5, warmup=0.2, **SHAPE)
            finally:
                server.close()

        result = run(scenario())
        self.assertFalse(result["checks"]["ok"])
        # One byte of each of the 6 sockets' streams.
        self.assertEqual(result["checks"]["mismatched_bytes"], 6)
        self.assertEqual(result["checks"]["replies"], result["checks"]["sends"])


class ShapeTests(SynchronousTestCase):
    def test_batch_over_send_window_is_refused(self) -> None:
        """A top-up waits for room for a whole batch, and a socket never has more than 16
        sends unanswered: a batch of 17 would never send, so the client refuses it."""
        script = os.path.join(os.path.dirname(__file__), "..", "bench", "echo_load.js")
        client = ["node", script, "client", "--port", "1", "--token", "t", "--fingerprint", "f"]
        result = subprocess.run(
            [*client, "--remote-port", "2", "--depth", "32", "--batch", "17"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("--batch must be 1 to min(--depth, 16)", result.stdout)

    def test_bench_refuses_the_same_shape(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "bench", "--pipelined-shape", "100x4x64x32"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=os.path.join(os.path.dirname(__file__), ".."),
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("the batch is at most the depth and at most 16", result.stderr)

    def test_a_run_without_round_trips_is_not_ok(self) -> None:
        mark = {"t": 1.0, "echoed_messages": 0}
        zero = {
            "sends": 0,
            "replies_true": 0,
            "replies_false": 0,
            "send_errors": 0,
            "echoed_bytes": 0,
            "mismatches": 0,
            "unechoed_bytes": 0,
            "unanswered_sends": 0,
            "errors": 0,
            "error_sample": None,
        }
        ready = {"sessions": 1, "sockets": 1, "depth": 1, "batch": 1}
        before, after = _Snapshot.__new__(_Snapshot), _Snapshot.__new__(_Snapshot)
        for snapshot, wall in ((before, 1.0), (after, 2.0)):
            snapshot.__dict__.update(
                wall=wall, server=0.0, client=0.0, remote=0.0, bench=0.0, machine=0.0
            )
            snapshot.per_process = {}
        result = summarize(ready, mark, {**mark, "t": 2.0}, zero, before, after, 64)
        self.assertFalse(result["checks"]["ok"])
