"""Benchmark tcpsocket against direct TCP, websockify, wisp-python and wisp-server-node,
in one invocation.

    python -m bench                 # full run (~10 minutes)
    python -m bench --quick         # smoke run (~1 minute)
    python -m bench --json out.json # also write every number as JSON

See doc/performance.md for what is measured and the latest results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import pipelined, procstat, workloads
from bench.client import SEND_WINDOW, WRITE_HIGH
from bench.targets import (
    DaemonTarget,
    DaemonTLSTarget,
    DirectTarget,
    Processes,
    ServerTarget,
    Target,
    WebsockifyTarget,
    WispNodeTarget,
    WispPythonTarget,
    daemon_help,
    lists_option,
    start_remote,
)
from bench.tlscert import write_tls_files

#: Every target, in table order.
TARGETS = ("direct", "websockify", "wisp-python", "wisp-server-node", "tcpsocket")

MiB = 1 << 20

PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "bulk_bytes": 256 * MiB,
        "repeats": 7,
        "echo_seconds": 20.0,
        "echo_rounds": 5,
        "many": [1000, 10000],
        "sessions": 100,
        "many_echo_seconds": 3.0,
        "open_budget": 120.0,
        "streams": 100,
        "stream_bytes": 4 * MiB,
        "stream_repeats": 5,
        "pipelined": dict(pipelined.DEFAULT_SHAPE),
        "pipelined_seconds": 5.0,
        "pipelined_rounds": 3,
        "pipelined_nice": pipelined.NICE,
    },
    "quick": {
        "bulk_bytes": 64 * MiB,
        "repeats": 2,
        "echo_seconds": 2.0,
        "echo_rounds": 2,
        "many": [100],
        "sessions": 10,
        "many_echo_seconds": 1.0,
        "open_budget": 20.0,
        "streams": 100,
        "stream_bytes": 1 * MiB,
        "stream_repeats": 1,
        "pipelined": dict(pipelined.DEFAULT_SHAPE),
        "pipelined_seconds": 2.0,
        "pipelined_rounds": 1,
        "pipelined_nice": pipelined.NICE,
    },
}


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        "twisted",
        "autobahn",
        "websockify",
        "websockets",
        "numpy",
        "txaio",
        "wisp-python",
        "uvloop",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        from autobahn.websocket import USES_NVX
    except ImportError:  # pragma: no cover
        USES_NVX = None
    soft, hard = procstat.raise_nofile_limit()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "autobahn_uses_nvx": USES_NVX,
        "mem_total_gib": round(int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20), 1),
        "nofile_limit": [soft, hard],
    }


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [r[key] for r in runs]
    if len(runs) > 1:
        chosen[f"{key}_median"] = statistics.median(r[key] for r in runs)
    return chosen


def _server_cpu(result: dict[str, Any], key: str, unit: str, digits: int) -> str:
    return f"  server {result[key]:.{digits}f} {unit}" if key in result else ""


def _median_streams(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run of the 100-stream workload; a stalled run counts as the slowest."""
    ordered = sorted(runs, key=lambda r: r.get("MBps", -1.0))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [r.get("MBps", r.get("stalled", r.get("failed"))) for r in runs]
    chosen["stalled_runs"] = sum(1 for r in runs if "stalled" in r)
    chosen["failed_runs"] = sum(1 for r in runs if "failed" in r)
    return chosen


async def profile_daemon(
    target: DaemonTarget, remote_pid: int, size: int, outdir: Path
) -> dict[str, Any]:
    """Run download, upload and echo again with py-spy attached to the daemon."""
    outdir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Any] = {}

    async def echo(target: Target, remote_pid: int, size: int) -> dict[str, Any]:
        return await workloads.echo(target, _remote_pid(target, remote_pid), 5.0)

    for name, work in (
        ("download", workloads.bulk_download),
        ("upload", workloads.bulk_upload),
        ("echo", echo),
    ):
        raw = outdir / f"{name}.txt"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(target.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(1.0)
            result = await work(target, _remote_pid(target, remote_pid), size)
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        summary = summarize_profile(raw) if raw.exists() else {}
        (outdir / f"{name}-summary.json").write_text(json.dumps(summary, indent=1))
        speed = {k: result[k] for k in ("MBps", "rt_per_s", "p50_us") if k in result}
        found[name] = {"under_profiler": speed, **summary}
    return found


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {}
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(top)],
    }


def _remote_pid(target: Target, default: int) -> int:
    """The remote server process of ``target`` (the TLS target has its own)."""
    pid: int = getattr(target, "remote_pid", default)
    return pid


async def run_all(
    targets: list[Target],
    remote_pid: int,
    plan: dict[str, Any],
    args: argparse.Namespace,
    log: Any,
) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    size = plan["bulk_bytes"]
    if not args.skip_bulk:
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            t.name: {"download": [], "upload": []} for t in targets
        }
        for repeat in range(plan["repeats"]):
            for kind, work in (
                ("download", workloads.bulk_download),
                ("upload", workloads.bulk_upload),
            ):
                for target in targets:
                    result = await work(target, _remote_pid(target, remote_pid), size)
                    runs[target.name][kind].append(result)
                    log(
                        f"  {kind:8} {target.name:10} run {repeat + 1}: {result['MBps']:8.1f} MB/s"
                        + _server_cpu(result, "server_cpu_s_per_GiB", "CPU s/GiB", 2)
                        + f"  client CPU {100 * result['client_cpu_util']:.0f}%"
                        f"  others {100 * result['other_cpu_util']:.0f}%"
                    )
        for target in targets:
            for kind in ("download", "upload"):
                results[target.name][kind] = _median_run(runs[target.name][kind], "MBps")
    if not args.skip_echo:
        runs_echo = [
            workloads.EchoRun(target, _remote_pid(target, remote_pid)) for target in targets
        ]
        try:
            for run in runs_echo:
                await run.open()
            rounds = plan["echo_rounds"]
            for _ in range(rounds):
                for run in runs_echo:
                    await run.run(plan["echo_seconds"] / rounds)
        finally:
            for run in runs_echo:
                await run.close()
        for target, run in zip(targets, runs_echo, strict=True):
            result = run.result()
            results[target.name]["echo"] = result
            log(
                f"  echo     {target.name:10} {result['rt_per_s']:8.0f} rt/s"
                f"  p50 {result['p50_us']:.0f} us  p99 {result['p99_us']:.0f} us"
                + _server_cpu(result, "server_cpu_us_per_rt", "CPU us/rt", 0)
            )
    if not args.skip_streams:
        count, size = plan["streams"], plan["stream_bytes"]
        group = [t for t in targets if t.multiplexes or isinstance(t, DirectTarget)]
        stream_runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in group}
        for repeat in range(plan["stream_repeats"]):
            for target in group:
                try:
                    result = await workloads.many_streams_download(
                        target, _remote_pid(target, remote_pid), count, size
                    )
                except Exception as e:  # reported in the table, the other targets go on
                    result = {"failed": f"{type(e).__name__}: {e}"}
                    log(f"  {count} streams {target.name:10} run {repeat + 1}: {result['failed']}")
                    stream_runs[target.name].append(result)
                    continue
                stream_runs[target.name].append(result)
                log(
                    f"  {count} streams {target.name:10} run {repeat + 1}: "
                    + (
                        f"{result['MBps']:8.1f} MB/s"
                        if "MBps" in result
                        else result.get("stalled") or result["failed"]
                    )
                    + f"  Jain at half-time {result.get('half_jain', float('nan')):.2f},"
                    f" {result.get('half_streams_at_zero', '-')} streams at 0 bytes"
                    + _server_cpu(result, "server_cpu_s_per_GiB", "CPU s/GiB", 2)
                )
        for target in group:
            results[target.name]["streams"] = _median_streams(stream_runs[target.name])
    if args.profile:
        for target in targets:
            if isinstance(target, DaemonTarget):
                log("  profiling the daemon with py-spy ...")
                results[target.name]["profile"] = await profile_daemon(
                    target, remote_pid, size, Path(args.profile)
                )
    if args.pipelined_remote is not None:
        found = await run_pipelined(targets, plan, args.pipelined_remote, log)
        for name, result in found.items():
            results[name]["pipelined"] = result
    if not args.skip_many:
        for count in plan["many"]:
            for target in targets:
                if isinstance(target, ServerTarget):
                    target.start()  # a fresh process: a clean RSS baseline
                warm = await target.open()
                await target.release(warm)
                await asyncio.sleep(0.3)
                result = await workloads.many_sockets(
                    target,
                    _remote_pid(target, remote_pid),
                    count,
                    min(plan["sessions"], count),
                    plan["many_echo_seconds"],
                    plan["open_budget"],
                )
                results[target.name][f"many_{count}"] = result
                per = result.get("rss_kib_per_socket_idle")
                log(
                    f"  many {count:6} {target.name:10} opened {result.get('opened', 0)}"
                    f" in {result.get('open_seconds', 0):.1f} s"
                    + (f", {per:.1f} KiB RSS/socket" if per is not None else "")
                    + f", echo {result.get('echo_rt_per_s', 0):.0f} rt/s"
                    + (f" [{result['stopped_opening']}]" if result.get("stopped_opening") else "")
                )
                if isinstance(target, ServerTarget):
                    target.stop()
        for target in targets:
            if isinstance(target, ServerTarget) and target.proc is None:
                target.start()
    return results


async def run_pipelined(
    targets: list[Target], plan: dict[str, Any], remote: tuple[int, int], log: Any
) -> dict[str, dict[str, Any]]:
    """Many sessions, pipelined echo with the Node client (bench/echo_load.js) on every
    plain tcpsocket target, the targets taking turns; the median round is kept."""
    group = [t for t in targets if type(t) is DaemonTarget]
    remote_port, remote_pid = remote
    rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in group}
    for _ in range(plan["pipelined_rounds"]):
        for target in group:
            result = await pipelined.pipelined_echo(
                target,
                remote_port,
                remote_pid,
                plan["pipelined_seconds"],
                **plan["pipelined"],
                nice=plan["pipelined_nice"],
            )
            rounds[target.name].append(result)
            log(
                f"  pipelined {target.name:12} {result['rt_per_s']:8.0f} rt/s"
                f"  server {result['server_cpu_us_per_rt']:.0f} us/rt,"
                f" {result['server_cores']:.2f} cores"
                f" ({' + '.join(f'{c:.2f}' for c in result['server_process_cores'])}),"
                f" client {result['client_cores']:.2f}, remote {result['remote_cores']:.2f},"
                f" others {result['other_cores']:.2f}"
                + ("" if result["checks"]["ok"] else f"  CHECKS FAILED {result['checks']}")
            )
    found: dict[str, dict[str, Any]] = {}
    for name, runs in rounds.items():
        chosen = _median_run(runs, "rt_per_s")
        chosen["checks_ok"] = int(all(r["checks"]["ok"] for r in runs))
        found[name] = chosen
    return found


# -- the table -----------------------------------------------------------------


def _get(results: dict[str, Any], name: str, path: str) -> float | None:
    node: Any = results.get(name, {})
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def _fmt(value: float | None, digits: int) -> str:
    if value is None or value != value:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


Row = tuple[str, str, int, str]


def _rows(plan: dict[str, Any]) -> list[Row]:
    """(label, result path, digits, better): every throughput or latency row is followed
    by the server CPU it cost (-1 digits: a fraction shown as a percentage)."""
    size = plan["bulk_bytes"] // MiB
    count = plan["streams"]
    rows: list[Row] = [
        (f"bulk download {size} MiB, MB/s", "download.MBps", 0, "higher"),
        ("  server CPU s per GiB", "download.server_cpu_s_per_GiB", 2, "lower"),
        (f"bulk upload {size} MiB, MB/s", "upload.MBps", 0, "higher"),
        ("  server CPU s per GiB", "upload.server_cpu_s_per_GiB", 2, "lower"),
        ("echo 64 B, round trips/s", "echo.rt_per_s", 0, "higher"),
        ("echo 64 B, p50 latency, us", "echo.p50_us", 0, "lower"),
        ("echo 64 B, p90 latency, us", "echo.p90_us", 0, "lower"),
        ("echo 64 B, p99 latency, us", "echo.p99_us", 0, "lower"),
        ("  server CPU us per echo round trip", "echo.server_cpu_us_per_rt", 0, "lower"),
        (
            f"{count} streams on one WebSocket, {plan['stream_bytes'] // MiB} MiB each,"
            " aggregate MB/s",
            "streams.MBps",
            0,
            "higher",
        ),
        ("  server CPU s per GiB", "streams.server_cpu_s_per_GiB", 2, "lower"),
        ("  fairness at half-time: Jain index", "streams.half_jain", 2, "higher"),
        ("  fairness at half-time: streams at 0 bytes", "streams.half_streams_at_zero", 0, "lower"),
    ]
    shape = plan.get("pipelined")
    if shape:
        rows += [
            (
                f"many sessions, pipelined echo ({shape['sessions']} sessions x"
                f" {shape['sockets']} sockets, up to {shape['depth']} x 64 B in flight each),"
                " round trips/s",
                "pipelined.rt_per_s",
                0,
                "higher",
            ),
            ("  server CPU us per round trip", "pipelined.server_cpu_us_per_rt", 0, "lower"),
            ("  server CPU, cores", "pipelined.server_cores", 2, "info"),
            ("  client CPU (Node), cores", "pipelined.client_cores", 2, "info"),
            ("  remote CPU (Node), cores", "pipelined.remote_cores", 2, "info"),
            ("  other processes' CPU, cores", "pipelined.other_cores", 2, "info"),
            (
                "  every byte echoed, every send answered (1 = yes)",
                "pipelined.checks_ok",
                0,
                "info",
            ),
        ]
    rows += [
        ("client CPU % during download", "download.client_cpu_util", -1, "info"),
        ("client CPU % during upload", "upload.client_cpu_util", -1, "info"),
        ("client CPU % during echo", "echo.client_cpu_util", -1, "info"),
        (f"client CPU % during {count} streams", "streams.client_cpu_util", -1, "info"),
        ("other processes' CPU % during download", "download.other_cpu_util", -1, "info"),
        ("other processes' CPU % during upload", "upload.other_cpu_util", -1, "info"),
        ("other processes' CPU % during echo", "echo.other_cpu_util", -1, "info"),
        (f"other processes' CPU % during {count} streams", "streams.other_cpu_util", -1, "info"),
    ]
    for many in plan["many"]:
        key = f"many_{many}"
        rows += [
            (f"{many} sockets: opened and working", f"{key}.opened", 0, "info"),
            (
                f"{many} sockets: still working after the echo phase",
                f"{key}.sockets_that_echoed",
                0,
                "info",
            ),
            (f"{many} sockets: time to open them, s", f"{key}.open_seconds", 2, "lower"),
            (f"{many} sockets: opens per second", f"{key}.opens_per_s", 0, "higher"),
            (
                f"{many} sockets: server RSS KiB/socket idle",
                f"{key}.rss_kib_per_socket_idle",
                1,
                "lower",
            ),
            (
                f"{many} sockets: server PSS KiB/socket idle",
                f"{key}.pss_kib_per_socket_idle",
                1,
                "lower",
            ),
            (
                f"{many} sockets: server RSS KiB/socket after echo",
                f"{key}.rss_kib_per_socket_after_echo",
                1,
                "lower",
            ),
            (f"{many} sockets: aggregate echo round trips/s", f"{key}.echo_rt_per_s", 0, "higher"),
            (
                "  server CPU us per echo round trip",
                f"{key}.echo_server_cpu_us_per_rt",
                0,
                "lower",
            ),
            (f"{many} sockets: server processes", f"{key}.server_processes", 0, "info"),
        ]
    return rows


def _note(results: dict[str, Any], name: str, path: str) -> str | None:
    """Text shown instead of a missing number: a stalled or failed 100-stream run."""
    if path == "streams.MBps":
        found = results.get(name, {}).get("streams", {})
        if found.get("failed"):
            return "fails"
        if found.get("stalled"):
            return "stalls"
    return None


def table(results: dict[str, Any], plan: dict[str, Any]) -> str:
    """The Markdown table: one column per target, then the first tcpsocket target's
    ratio to each other target (each other tcpsocket target of a workers sweep: its ratio
    to the first)."""
    names = [n for n in results if not n.startswith("_")]
    daemons = [n for n in names if n.startswith("tcpsocket")]
    mine = daemons[0] if daemons else None
    others = [n for n in names if n != mine] if mine else []
    # A workers sweep: the other tcpsocket targets compared with the first one.
    pairs = [(other, mine) if other in daemons else (mine, other) for other in others]
    head = ["metric", *names, *(f"{a} / {b}" for a, b in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, path, digits, better in _rows(plan):
        values = {n: _get(results, n, path) for n in names}
        notes = {n: _note(results, n, path) for n in names}
        if all(v is None for v in values.values()) and not any(notes.values()):
            continue
        cells = []
        for name, value in values.items():
            if value is None and notes[name]:
                cells.append(str(notes[name]))
            elif digits == -1:
                cells.append(_fmt(None if value is None else 100 * value, 0))
            else:
                cells.append(_fmt(value, digits))
        if better in ("higher", "lower"):
            label += f" ({better} is better)"
        row = [label, *cells]
        for a, b in pairs:
            row.append(_ratio(values[a], values[b]) if better != "info" else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def goals(results: dict[str, Any], plan: dict[str, Any]) -> str:
    """Issue 11's targets for the daemon, as ratios within this run: met or not."""
    mine = next((n for n in results if n.startswith("tcpsocket")), None)
    if mine is None:
        return ""

    def get(name: str, path: str) -> float | None:
        return _get(results, name, path)

    def check(text: str, a: float | None, b: float | None, ok: Any, shown: str) -> str:
        if a is None or b is None:
            return f"- {text}: not measured"
        return f"- {text}: {'met' if ok(a, b) else 'NOT met'} ({shown.format(a=a, b=b)})"

    lines = [f"Issue 11 targets for {mine}, as ratios in this run:"]
    p50 = get(mine, "echo.p50_us")
    for other in ("websockify", "wisp-python"):
        lines.append(
            check(
                f"echo p50 <= {other}'s",
                p50,
                get(other, "echo.p50_us"),
                lambda a, b: a <= b,
                "{a:.0f} vs {b:.0f} us",
            )
        )
    lines.append(
        check(
            "server CPU per echo round trip <= websockify's",
            get(mine, "echo.server_cpu_us_per_rt"),
            get("websockify", "echo.server_cpu_us_per_rt"),
            lambda a, b: a <= b,
            "{a:.0f} vs {b:.0f} us",
        )
    )
    jain = get(mine, "streams.half_jain")
    lines.append(
        check(
            f"{plan['streams']}-stream aggregate >= 1.2x wisp-server-node's at Jain >= 0.95",
            get(mine, "streams.MBps"),
            get("wisp-server-node", "streams.MBps"),
            lambda a, b: a >= 1.2 * b and jain is not None and jain >= 0.95,
            "{a:,.0f} vs {b:,.0f} MB/s, " + f"Jain {_fmt(jain, 2)}",
        )
    )
    for kind in ("download", "upload"):
        lines.append(
            check(
                f"{kind} >= 1.5x websockify's",
                get(mine, f"{kind}.MBps"),
                get("websockify", f"{kind}.MBps"),
                lambda a, b: a >= 1.5 * b,
                "{a:,.0f} vs {b:,.0f} MB/s",
            )
        )
    lines += _workers_goal(results, plan)
    if plan["many"]:
        many = max(plan["many"])
        lines.append(
            check(
                "memory per idle stream < 5 KiB",
                get(mine, f"many_{many}.rss_kib_per_socket_idle"),
                5.0,
                lambda a, b: a < b,
                "{a:.1f} KiB RSS on " + f"{many} sockets",
            )
        )
    return "\n".join(lines)


def _cores(result: dict[str, Any]) -> str:
    per = " + ".join(f"{c:.2f}" for c in sorted(result["server_process_cores"], reverse=True))
    return (
        f"server {result['server_cores']:.2f} ({per}), client {result['client_cores']:.2f},"
        f" remote {result['remote_cores']:.2f}, others {result['other_cores']:.2f}"
    )


def _predicted(most: dict[str, Any], one: dict[str, Any], workers: int) -> str:
    """What the CPU costs per round trip predict on idle cores, whatever else ran: one
    process is bound by one core, ``workers`` processes by the cores they share with the
    client and the remote."""
    cores = len(os.sched_getaffinity(0))
    d1 = one["server_cpu_us_per_rt"]
    dn = most["server_cpu_us_per_rt"]
    beside = most["client_cpu_us_per_rt"] + most["remote_cpu_us_per_rt"]
    rate_one = 1 / d1
    rate_most = min(workers / dn, cores / (dn + beside))
    return (
        f"CPU per round trip: server {d1:.0f} vs {dn:.0f} us, client + remote"
        f" {beside:.1f} us; on {cores} idle cores these predict {rate_most / rate_one:.2f}x"
    )


def _workers_goal(results: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    """The workers sweep's target: the most workers' aggregate echo on many sessions
    >= 1.8x one worker's, on the pipelined workload (where the daemon is the bottleneck),
    with the CPU shares in cores; on the many-sockets workload if that one was skipped."""
    sweep = sorted(
        (n for n in results if n.startswith("tcpsocket-w")),
        key=lambda n: int(n[len("tcpsocket-w") :]),
    )
    if len(sweep) < 2:
        return []
    one, most = sweep[0], sweep[-1]
    text = f"{most} aggregate echo on many sessions >= 1.8x {one}'s"
    a, b = results[most].get("pipelined"), results[one].get("pipelined")
    if a and b:
        ratio = a["rt_per_s"] / b["rt_per_s"] if b["rt_per_s"] else float("nan")
        checked = "" if a.get("checks_ok") and b.get("checks_ok") else "; CHECKS FAILED"
        return [
            f"- {text} (pipelined echo): {'met' if ratio >= 1.8 else 'NOT met'}"
            f" ({a['rt_per_s']:,.0f} vs {b['rt_per_s']:,.0f} round trips/s, {ratio:.2f}x{checked})",
            f"  CPU in cores: {one}: {_cores(b)}; {most}: {_cores(a)}",
            f"  {_predicted(a, b, int(most[len('tcpsocket-w') :]))}",
        ]
    if not plan["many"]:
        return [f"- {text}: not measured"]
    path = f"many_{max(plan['many'])}.echo_rt_per_s"
    x, y = _get(results, most, path), _get(results, one, path)
    if x is None or y is None:
        return [f"- {text}: not measured"]
    return [
        f"- {text} (many-sockets workload; its Python client may be the limit):"
        f" {'met' if x >= 1.8 * y else 'NOT met'} ({x:,.0f} vs {y:,.0f} round trips/s)"
    ]


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (~1 minute)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--workers",
        metavar="N,N",
        help="workers sweep, e.g. 1,2: one tcpsocket target per count, started with "
        "'--workers N' if 'twistd tcpsocket --help' lists --workers (else reported as "
        "not supported, and the daemon runs as usual)",
    )
    parser.add_argument(
        "--wisp-node-dir",
        metavar="DIR",
        help="npm prefix holding wisp-server-node (installed there with npm if missing; "
        "default ~/.cache/tcpsocket-bench/wisp-server-node-VERSION)",
    )
    parser.add_argument(
        "--daemon",
        choices=("auto", "twistd", "launcher"),
        default="auto",
        help="how to start tcpsocket: twistd plugin if registered (auto), or bench.launch_daemon",
    )
    parser.add_argument(
        "--daemon-set",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="ServerConfig override, e.g. high_water_mark=1048576 or "
        "session_buffer=4194304 (repeatable)",
    )
    parser.add_argument(
        "--daemon-source",
        metavar="DIR",
        help="run the daemon from another tree holding a tcpsocket package "
        "(put first on its PYTHONPATH), to A/B a change",
    )
    parser.add_argument(
        "--daemon-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the daemon only, e.g. MALLOC_TRIM_THRESHOLD_=67108864 (repeatable)",
    )
    parser.add_argument("--bulk-mib", type=int, help="bulk transfer size in MiB")
    parser.add_argument("--repeats", type=int, help="bulk repetitions (median reported)")
    parser.add_argument(
        "--sockets",
        help="comma-separated socket counts for the many-sockets workload, e.g. 1000,10000",
    )
    parser.add_argument("--skip-bulk", action="store_true")
    parser.add_argument("--skip-echo", action="store_true")
    parser.add_argument("--skip-many", action="store_true")
    parser.add_argument(
        "--skip-streams", action="store_true", help="leave out the 100-stream workload"
    )
    parser.add_argument("--streams", type=int, help="streams of the 100-stream workload")
    parser.add_argument(
        "--pipelined",
        action="store_true",
        help="run the many-sessions pipelined echo (Node client, bench/echo_load.js) on the "
        "tcpsocket targets; on by default in a workers sweep",
    )
    parser.add_argument("--skip-pipelined", action="store_true")
    parser.add_argument(
        "--pipelined-shape",
        metavar="SxKxDxB",
        help="pipelined echo: sessions x sockets per session x messages in flight per socket "
        "x messages per top-up (default "
        + "x".join(map(str, pipelined.DEFAULT_SHAPE.values()))
        + ")",
    )
    parser.add_argument(
        "--pipelined-nice",
        type=int,
        metavar="N",
        help=f"nice value of the pipelined echo's Node client and remote (default "
        f"{pipelined.NICE}; 0: the daemon's priority)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the servers' logs (kept anyway when the run fails)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="also run the bulk workloads with py-spy on the daemon; "
        "raw stacks and summaries go to DIR",
    )
    args = parser.parse_args(argv)

    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.bulk_mib:
        plan["bulk_bytes"] = args.bulk_mib * MiB
    if args.repeats:
        plan["repeats"] = args.repeats
    if args.sockets:
        plan["many"] = [int(x) for x in args.sockets.split(",") if x]
    if args.streams:
        plan["streams"] = args.streams
    if args.pipelined_nice is not None:
        plan["pipelined_nice"] = args.pipelined_nice
    if args.pipelined_shape:
        values = [int(x) for x in args.pipelined_shape.split("x")]
        if len(values) != 4:
            parser.error("--pipelined-shape wants SESSIONSxSOCKETSxDEPTHxBATCH, e.g. 100x4x64x16")
        if min(values) < 1 or values[3] > min(values[2], SEND_WINDOW):
            parser.error(
                f"--pipelined-shape: every count is at least 1, and the batch is at most the"
                f" depth and at most {SEND_WINDOW} (the unanswered sends a socket may have)"
            )
        plan["pipelined"] = dict(
            zip(("sessions", "sockets", "depth", "batch"), values, strict=True)
        )
    settings: dict[str, int] = {"max_sockets_per_session": 200}
    for item in args.daemon_set:
        name, _, value = item.partition("=")
        settings[name.replace("-", "_")] = int(value)
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    daemon_env = dict(item.partition("=")[::2] for item in args.daemon_env)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    workers: list[int | None] = [None]
    notes: dict[str, str] = {}
    if args.workers and "tcpsocket" in wanted:
        counts = [int(x) for x in args.workers.split(",") if x]
        if lists_option(daemon_help(args.daemon_source), "--workers"):
            workers = list(counts)
        else:
            notes["workers"] = (
                f"workers sweep {counts}: not supported by this daemon "
                "('twistd tcpsocket --help' lists no --workers); ran one process"
            )
            log(notes["workers"])

    run_pipelined_echo = (
        "tcpsocket" in wanted and not args.skip_pipelined and (args.pipelined or len(workers) > 1)
    )
    if not run_pipelined_echo:
        plan.pop("pipelined", None)
    args.pipelined_remote = None

    info = machine_info()
    load_before = procstat.loadavg()
    logdir = Path(tempfile.mkdtemp(prefix="tcpsocket-bench-"))
    processes = Processes(logdir)
    started = time.monotonic()
    results: dict[str, Any] = {}
    targets: list[Target] = []
    try:
        remote_port, remote_pid = start_remote(processes)
        if run_pipelined_echo:
            args.pipelined_remote = pipelined.start_echo_remote(processes, plan["pipelined_nice"])
        for name in wanted:
            if name == "direct":
                targets.append(DirectTarget(remote_port))
            elif name == "websockify":
                targets.append(WebsockifyTarget(remote_port, processes))
            elif name == "wisp-python":
                targets.append(WispPythonTarget(remote_port, processes))
            elif name == "wisp-server-node":
                prefix = Path(args.wisp_node_dir) if args.wisp_node_dir else None
                targets.append(WispNodeTarget(remote_port, processes, prefix))
            elif name == "tcpsocket-tls":
                tls_dir = logdir / "tls"
                tls_dir.mkdir()
                ca_file, _, _ = write_tls_files(tls_dir)
                tls_port, tls_pid = start_remote(processes, tls_dir)
                tls_target = DaemonTLSTarget(
                    tls_port,
                    processes,
                    ca_file,
                    settings=settings,
                    mode="twistd" if args.daemon == "auto" else args.daemon,
                    source=args.daemon_source,
                    env=daemon_env,
                )
                tls_target.remote_pid = tls_pid  # type: ignore[attr-defined]
                targets.append(tls_target)
            elif name == "tcpsocket":
                mode = "launcher" if args.daemon == "launcher" else args.daemon
                for count in workers:
                    targets.append(
                        DaemonTarget(
                            remote_port,
                            processes,
                            settings,
                            mode,
                            args.daemon_source,
                            daemon_env,
                            count,
                        )
                    )
            else:
                parser.error(f"unknown target {name!r}")
        for target in targets:
            if isinstance(target, ServerTarget):
                target.start()
                log(f"{target.name}: {' '.join(target.command)}  [{target.how}]")
        log(f"remote servers on 127.0.0.1:{remote_port}; logs in {logdir}")
        results = asyncio.run(run_all(targets, remote_pid, plan, args, log))
    except BaseException:
        log(f"failed; the processes' logs are in {logdir}")
        raise
    finally:
        processes.stop_all()
    if not args.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    load_after = procstat.loadavg()

    text = table(results, plan)
    print(text)
    print(
        f"\n({elapsed:.0f} s, {'quick' if args.quick else 'full'} run; MB = 10^6 bytes;"
        f" load average (1, 5, 15 min) before {_load(load_before)}, after {_load(load_after)}"
        f" on {info['nproc']} CPUs)"
    )
    for note in notes.values():
        print(note)
    checklist = goals(results, plan)
    if checklist:
        print("\n" + checklist)
    if args.json:
        daemon = next((t for t in targets if isinstance(t, DaemonTarget)), None)
        document = {
            "plan": plan,
            "machine": info,
            "daemon": {
                "command": getattr(daemon, "command", None),
                "started_with": getattr(daemon, "how", None),
                "settings": settings,
                "source": args.daemon_source,
                "env": daemon_env,
            },
            "client": {
                "write_buffer_high": WRITE_HIGH,
                "send_window": SEND_WINDOW,
                "upload_chunk": workloads.CHUNK,
            },
            "servers": {
                t.name: {"command": t.command, "started_with": t.how}
                for t in targets
                if isinstance(t, ServerTarget)
            },
            "seconds": elapsed,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "notes": notes,
            "results": results,
            "table": text,
            "goals": checklist,
        }
        Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
