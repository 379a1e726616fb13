"""The benchmark's report: the Markdown table and issue 11's targets, from given results."""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.run import PLANS, goals, table

PLAN = dict(PLANS["quick"], many=[100])


def results(**daemon: Any) -> dict[str, Any]:
    return {
        "direct": {"streams": {"MBps": 2000.0, "half_jain": 0.9, "half_streams_at_zero": 0}},
        "websockify": {
            "download": {"MBps": 1000.0, "server_cpu_s_per_GiB": 0.8},
            "upload": {"MBps": 200.0, "server_cpu_s_per_GiB": 4.0},
            "echo": {"p50_us": 150.0, "server_cpu_us_per_rt": 100.0},
        },
        "wisp-python": {
            "echo": {"p50_us": 160.0},
            "streams": {"stalled": "stalled after 1 of 2 MB", "bytes": 10},
        },
        "wisp-server-node": {"streams": {"MBps": 400.0, "half_jain": 0.9}},
        "tcpsocket": {
            "download": {"MBps": 1600.0, "server_cpu_s_per_GiB": 0.6},
            "upload": {"MBps": 250.0, "server_cpu_s_per_GiB": 2.0},
            "echo": {"p50_us": 140.0, "server_cpu_us_per_rt": 120.0},
            "streams": {"MBps": 500.0, "half_jain": 0.97, "half_streams_at_zero": 0},
            "many_100": {"rss_kib_per_socket_idle": 4.5},
            **daemon,
        },
    }


class TableTests(SynchronousTestCase):
    def test_columns_and_cells(self) -> None:
        lines = table(results(), PLAN).splitlines()
        self.assertEqual(
            lines[0],
            "| metric | direct | websockify | wisp-python | wisp-server-node | tcpsocket"
            " | tcpsocket / direct | tcpsocket / websockify | tcpsocket / wisp-python"
            " | tcpsocket / wisp-server-node |",
        )
        rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
        download = rows["bulk download 64 MiB, MB/s (higher is better)"]
        self.assertEqual(download[:5], ["-", "1,000", "-", "-", "1,600"])
        self.assertEqual(download[6], "1.60x")  # tcpsocket / websockify
        # The CPU row follows its figure; direct TCP has no server.
        index = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]].index(
            "bulk download 64 MiB, MB/s (higher is better)"
        )
        self.assertTrue(lines[2 + index + 1].startswith("|   server CPU s per GiB"))
        streams = rows[
            "100 streams on one WebSocket, 1 MiB each, aggregate MB/s (higher is better)"
        ]
        self.assertEqual(streams[:5], ["2,000", "-", "stalls", "400", "500"])
        self.assertEqual(streams[8].rstrip(" |"), "1.25x")

    def test_workers_sweep_columns(self) -> None:
        found = results()
        found["tcpsocket-w1"] = found.pop("tcpsocket")
        found["tcpsocket-w2"] = {"download": {"MBps": 3000.0}}
        lines = table(found, PLAN).splitlines()
        self.assertIn("| tcpsocket-w1 / websockify |", lines[0])
        self.assertIn("| tcpsocket-w2 / tcpsocket-w1 |", lines[0])
        download = next(line for line in lines if line.startswith("| bulk download"))
        self.assertTrue(download.endswith("| 1.88x |"), download)  # 3,000 / 1,600

    def test_workers_sweep_goal(self) -> None:
        found = results()
        found["tcpsocket-w1"] = found.pop("tcpsocket")
        found["tcpsocket-w1"]["many_100"]["echo_rt_per_s"] = 10000.0
        found["tcpsocket-w2"] = {"many_100": {"echo_rt_per_s": 17000.0}}
        # Without the pipelined workload, the many-sockets one (saying what may limit it).
        self.assertIn(
            "- tcpsocket-w2 aggregate echo on many sessions >= 1.8x tcpsocket-w1's"
            " (many-sockets workload; its Python client may be the limit): NOT met"
            " (17,000 vs 10,000 round trips/s)",
            goals(found, PLAN),
        )
        self.assertNotIn("aggregate echo on many sessions", goals(results(), PLAN))

    def test_workers_sweep_goal_pipelined(self) -> None:
        """The pipelined workload decides, and the CPU shares are stated beside it."""

        def pipelined(rate: float, *per: float, ok: int = 1) -> dict[str, Any]:
            return {
                "rt_per_s": rate,
                "server_cores": sum(per),
                "server_process_cores": list(per),
                "server_cpu_us_per_rt": 30.0,
                "client_cpu_us_per_rt": 2.0,
                "remote_cpu_us_per_rt": 1.0,
                "client_cores": 0.05,
                "remote_cores": 0.04,
                "other_cores": 0.01,
                "checks_ok": ok,
            }

        found = results()
        found["tcpsocket-w1"] = found.pop("tcpsocket")
        found["tcpsocket-w1"]["many_100"]["echo_rt_per_s"] = 10000.0
        found["tcpsocket-w1"]["pipelined"] = pipelined(20000.0, 0.95)
        found["tcpsocket-w2"] = {
            "many_100": {"echo_rt_per_s": 12000.0},
            "pipelined": pipelined(37000.0, 0.0, 0.9, 0.88),
        }
        text = goals(found, PLAN)
        cores = len(os.sched_getaffinity(0))
        self.assertIn(
            "- tcpsocket-w2 aggregate echo on many sessions >= 1.8x tcpsocket-w1's"
            " (pipelined echo): met (37,000 vs 20,000 round trips/s, 1.85x)\n"
            "  CPU in cores: tcpsocket-w1: server 0.95 (0.95), client 0.05, remote 0.04,"
            " others 0.01; tcpsocket-w2: server 1.78 (0.90 + 0.88 + 0.00), client 0.05,"
            " remote 0.04, others 0.01\n"
            f"  CPU per round trip: server 30 vs 30 us, client + remote 3.0 us; on {cores} idle"
            f" cores these predict {min(2.0, cores * 30 / 33):.2f}x",
            text,
        )
        found["tcpsocket-w2"]["pipelined"] = pipelined(30000.0, 0.0, 0.9, 0.7, ok=0)
        self.assertIn(
            "NOT met (30,000 vs 20,000 round trips/s, 1.50x; CHECKS FAILED)", goals(found, PLAN)
        )
        rows = [line for line in table(found, PLAN).splitlines() if "pipelined echo" in line]
        self.assertEqual(len(rows), 1)
        self.assertIn("| 20,000 | 30,000 |", rows[0])
        self.assertTrue(rows[0].endswith("| 1.50x |"), rows[0])  # tcpsocket-w2 / tcpsocket-w1


class GoalTests(SynchronousTestCase):
    def test_met(self) -> None:
        text = goals(results(), PLAN)
        self.assertIn("- echo p50 <= websockify's: met (140 vs 150 us)", text)
        self.assertIn("- echo p50 <= wisp-python's: met", text)
        self.assertIn("- server CPU per echo round trip <= websockify's: NOT met (120 vs 100", text)
        self.assertIn("wisp-server-node's at Jain >= 0.95: met (500 vs 400 MB/s, Jain 0.97)", text)
        self.assertIn("- download >= 1.5x websockify's: met", text)
        self.assertIn("- upload >= 1.5x websockify's: NOT met (250 vs 200 MB/s)", text)
        self.assertIn("- memory per idle stream < 5 KiB: met (4.5 KiB RSS on 100 sockets)", text)

    def test_fairness_is_part_of_the_streams_target(self) -> None:
        unfair = results(streams={"MBps": 900.0, "half_jain": 0.5})
        self.assertIn("at Jain >= 0.95: NOT met (900 vs 400 MB/s, Jain 0.50)", goals(unfair, PLAN))

    def test_not_measured(self) -> None:
        found = results()
        del found["websockify"]
        self.assertIn("- download >= 1.5x websockify's: not measured", goals(found, PLAN))
        self.assertEqual(goals({"direct": {}}, PLAN), "")
