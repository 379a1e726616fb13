"""A real ``twistd -n tcpsocket`` process on a UNIX socket, for the reliability tests."""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer, reactor

from tests.support import TOKEN, ProcessOutput, temp_dir, wait_until
from tests.test_tap import ROOT, TWISTD


async def start_twistd(
    test: Any,
    *options: str,
    token: str | None = TOKEN,
    allow: str = "127.0.0.1:*",
    twistd: tuple[str, ...] = (),
) -> tuple[Any, ProcessOutput, str]:
    """Start the daemon with ``options``, ``--allow allow`` and ``--token token`` (if given).

    ``twistd`` options (such as ``--logfile``) go before the ``tcpsocket`` command.

    Returns the process, its collected output and the socket path; the
    process is killed at test cleanup if it is still running.
    """
    path = str(temp_dir(test) / "daemon.sock")
    collect = ProcessOutput()
    args = [*TWISTD, "-n", "--pidfile=", *twistd, "tcpsocket", "--listen", f"unix:{path}"]
    args += ["--allow", allow, *options]
    if token is not None:
        args += ["--token", token]
    env = {k: v for k, v in os.environ.items() if k != "WS_RUNTIME_TOKEN"}
    process = reactor.spawnProcess(collect, TWISTD[0], args, env=env, path=str(ROOT))  # type: ignore[attr-defined]

    async def kill() -> None:
        if not collect.ended.called:
            process.signalProcess(signal.SIGKILL)
            await collect.ended

    test.addCleanup(lambda: defer.ensureDeferred(kill()))
    await wait_until(lambda: os.path.exists(path) or collect.ended.called, timeout=30)
    assert not collect.ended.called, collect.output.decode()
    return process, collect, path
