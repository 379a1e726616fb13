"""The benchmark's own pieces: Wisp packets as the Wisp v1 specification lays them out,
Jain's index, option detection, and the Wisp client and the 100-stream workload against
a real wisp-python server and the benchmark's remote, on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import workloads
from bench.client import StreamClosed
from bench.targets import (
    ALLOW,
    DaemonTarget,
    DirectTarget,
    Processes,
    WispPythonTarget,
    daemon_command,
    daemon_help,
    free_port,
    lists_option,
    start_remote,
)
from bench.wisp_client import (
    Packet,
    PacketType,
    WispError,
    close_reason,
    decode_close,
    decode_continue,
    decode_packet,
    encode_close,
    encode_connect,
    encode_continue,
    encode_packet,
    open_wisp,
)
from tests.support import temp_dir


class WispPacketTests(SynchronousTestCase):
    """Type (u8) | stream id (u32) | payload, little-endian, as the specification says."""

    def test_connect(self) -> None:
        # Stream 1, TCP (0x01), port 6667 (0x1a0b, little-endian 0b 1a), hostname UTF-8.
        self.assertEqual(
            encode_connect(1, "irc.example", 6667),
            bytes.fromhex("01 01000000 01 0b1a") + b"irc.example",
        )
        self.assertEqual(
            encode_connect(0x01020304, "h\u00e9", 80),
            bytes.fromhex("01 04030201 01 5000") + "h\u00e9".encode(),
        )

    def test_initial_continue(self) -> None:
        # The server's first packet: CONTINUE on stream 0 (Wisp v1), buffer of 128 packets.
        packet = decode_packet(bytes.fromhex("03 00000000 80000000"))
        self.assertEqual((packet.kind, packet.stream_id), (PacketType.CONTINUE, 0))
        self.assertEqual(decode_continue(packet.payload), 128)
        self.assertEqual(encode_continue(0, 128), bytes.fromhex("03 00000000 80000000"))

    def test_data(self) -> None:
        self.assertEqual(
            encode_packet(PacketType.DATA, 258, b"hello"),
            bytes.fromhex("02 02010000") + b"hello",
        )
        raw = memoryview(bytes.fromhex("02 ffffffff") + b"\x00\x01")
        packet = decode_packet(raw)
        self.assertEqual(packet, Packet(PacketType.DATA, 0xFFFFFFFF, raw[5:]))
        self.assertIsInstance(packet.payload, memoryview)  # no copy of the payload
        self.assertEqual(decode_packet(b"\x02\x05\x00\x00\x00").payload, b"")

    def test_close(self) -> None:
        self.assertEqual(encode_close(7), bytes.fromhex("04 07000000 02"))
        self.assertEqual(encode_close(7, 0x81), bytes.fromhex("04 07000000 81"))
        self.assertEqual(decode_close(decode_packet(bytes.fromhex("04 07000000 44")).payload), 0x44)
        self.assertEqual(close_reason(0x44), "0x44 (connection refused)")
        self.assertEqual(close_reason(0x99), "0x99 (not in the specification)")

    def test_malformed(self) -> None:
        self.assertRaises(WispError, decode_packet, b"\x02\x00\x00\x00")
        self.assertRaises(WispError, decode_continue, b"\x80\x00\x00")
        self.assertRaises(WispError, decode_close, b"")


class JainIndexTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(workloads.jain_index([5, 5, 5, 5]), 1.0)
        self.assertAlmostEqual(workloads.jain_index([1, 0, 0, 0]), 0.25)
        self.assertAlmostEqual(workloads.jain_index([1, 2, 3, 4]), 100 / 120)
        self.assertAlmostEqual(workloads.jain_index([2, 2, 0, 0]), 0.5)

    def test_nothing_to_share(self) -> None:
        self.assertEqual(workloads.jain_index([]), 1.0)
        self.assertEqual(workloads.jain_index([0, 0, 0]), 1.0)


class DaemonCommandTests(SynchronousTestCase):
    def test_usage_texts(self) -> None:
        usage = "Options:\n  -w, --workers=   Worker processes.\n      --listen=  Strports.\n"
        self.assertTrue(lists_option(usage, "--workers"))
        self.assertTrue(lists_option(usage, "--listen"))
        self.assertFalse(lists_option("      --workers-max=  x\n", "--workers"))
        self.assertFalse(lists_option("  see --workers in the docs\n", "--workers"))
        self.assertTrue(lists_option("  --workers N  count\n", "--workers"))
        self.assertFalse(lists_option(None, "--workers"))

    def test_daemon_command(self) -> None:
        """The daemon allows loopback remotes explicitly, with a token of 32+ characters;
        a workers count becomes --workers N, which bench.launch_daemon cannot do."""
        argv, how = daemon_command(8081, {"high_water_mark": 1024}, "auto", workers=2)
        self.assertIn(how, ("twistd", "python -m twisted"))
        self.assertEqual(argv[argv.index("--allow") + 1], "127.0.0.1:*")
        self.assertGreaterEqual(len(argv[argv.index("--token") + 1]), 32)
        self.assertEqual(argv[argv.index("--workers") + 1], "2")
        self.assertEqual(argv[argv.index("--high-water-mark") + 1], "1024")
        argv, how = daemon_command(8081, {}, "launcher")
        self.assertEqual((how, argv[argv.index("--allow") + 1]), ("bench.launch_daemon", ALLOW))
        self.assertRaises(RuntimeError, daemon_command, 8081, {}, "launcher", 2)

    def test_real_daemon(self) -> None:
        """The help of the daemon the benchmark starts lists its real options only."""
        text = daemon_help()
        self.assertTrue(lists_option(text, "--listen"))
        self.assertTrue(lists_option(text, "--high-water-mark"))
        self.assertFalse(lists_option(text, "--no-such-option"))


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


class LoopbackTests(SynchronousTestCase):
    """The Wisp client against wisp-python (PyPI), and the 100-stream workload."""

    def setUp(self) -> None:
        processes = Processes(temp_dir(self))
        self.addCleanup(processes.stop_all)
        self.remote_port, self.remote_pid = start_remote(processes)
        self.processes = processes

    def wisp_python(self) -> WispPythonTarget:
        target = WispPythonTarget(self.remote_port, self.processes)
        target.start()
        return target

    def test_wisp_python(self) -> None:
        target = self.wisp_python()
        size = 3 * 1024 * 1024
        block = bytes(range(256)) * 256  # 64 KiB

        async def scenario() -> None:
            session = await open_wisp(target.port)
            try:
                self.assertEqual(session.initial_buffer, 128)
                echo = session.open("127.0.0.1", self.remote_port)
                echo.keep = bytearray()
                await echo.write(b"E")
                await echo.write(b"hello, wisp")
                await echo.until(11)
                self.assertEqual(echo.keep, b"hello, wisp")

                source = session.open("127.0.0.1", self.remote_port)
                source.keep = bytearray()
                await source.write(b"S" + size.to_bytes(8, "big"))
                await source.until(size)
                self.assertEqual(source.keep, bytes(range(256)) * (size // 256))

                # 200 DATA packets: more than the initial 128 credits, so the upload goes
                # on only through the server's CONTINUE packets.
                sink = session.open("127.0.0.1", self.remote_port)
                sink.keep = bytearray()
                total = 200 * len(block)
                await sink.write(b"K" + total.to_bytes(8, "big"))
                for _ in range(200):
                    await sink.write(block)
                await sink.until(8)
                self.assertEqual(int.from_bytes(sink.keep[:8], "big"), total)
                self.assertGreater(sink.continues, 0)
                self.assertEqual(session.errors, [])

                # A refused connection comes back as CLOSE with the server's reason.
                refused = session.open("127.0.0.1", free_port())
                with self.assertRaises(StreamClosed):
                    await refused.until(1)
                self.assertTrue(refused.close_reason.startswith("0x"), refused.close_reason)
                self.assertNotIn(refused.stream_id, session.streams)

                await echo.close()
                self.assertTrue(echo.closed)
                with self.assertRaises(StreamClosed):
                    await echo.write(b"more")
            finally:
                await session.close()
            self.assertIsNone(session.conn.transport)

        run(scenario())

    def test_streams_workload(self) -> None:
        """The 100-stream workload (fewer streams here) on one Wisp connection, on one
        tcpsocket session, and on plain connections: every byte counted, fairness sampled
        at half of the bytes."""
        count, size = 8, 256 * 1024
        daemon = DaemonTarget(self.remote_port, self.processes, {}, "launcher")
        daemon.start()  # bench.launch_daemon, allowing loopback remotes
        for target in (self.wisp_python(), daemon, DirectTarget(self.remote_port)):
            result = run(workloads.many_streams_download(target, self.remote_pid, count, size))
            self.assertNotIn("stalled", result)
            self.assertEqual(result["streams_finished"], count)
            self.assertEqual(result["bytes"], count * size)
            self.assertGreater(result["MBps"], 0)
            self.assertGreater(result["half_jain"], 1 / count - 1e-9)
            self.assertLessEqual(result["half_jain"], 1.0)
            low, high = result["half_min_max_bytes"]
            self.assertLessEqual(high, size)
            self.assertEqual(result["half_streams_at_zero"] == 0, low > 0)
            self.assertEqual("server_cpu_s_per_GiB" in result, target.has_server)
