"""Operating the daemon: the TOML config file, one-line errors, pid files, version, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import tcpsocket
from tcpsocket.jsonlog import event_as_json_line
from tcpsocket.tap import Options
from tcpsocket.tokens import load_tokens_file
from tests.support import (
    ROOT,
    TWISTD,
    ProcessOutput,
    one_session,
    spawn_process,
    temp_dir,
    unix_listening,
    wait_until,
)
from tests.test_tap import parse


def write(test: Any, text: str, name: str = "tcpsocket.toml") -> str:
    path = temp_dir(test) / name
    path.write_text(text)
    return str(path)


class ConfigFileTests(SynchronousTestCase):
    def test_every_kind_of_option(self) -> None:
        path = write(
            self,
            "# a comment\n"
            'token = ["token-number-one", "token-number-two"]\n'
            'listen = ["tcp:0", "unix:/tmp/t.sock"]\n'
            "max-sessions = 2\n"
            "connect-timeout = 2.5\n"
            'allow = ["*.example.org:993"]\n'
            "json-logs = true\n"
            'metrics-token = "m"\n',
        )
        options = parse("--config", path)
        config = options["config"]
        self.assertEqual(options["listen"], ["tcp:0", "unix:/tmp/t.sock"])
        self.assertEqual((config.max_sessions, config.connect_timeout), (2, 2.5))
        self.assertIsNotNone(self.successResultOf(config.tokens.authenticate("token-number-one")))
        self.assertIsNotNone(self.successResultOf(config.tokens.authenticate("token-number-two")))
        self.assertIsNone(config.policy.check("", "imap.example.org", 993))
        self.assertIsNotNone(config.policy.check("", "imap.example.org", 25))
        self.assertTrue(options["json-logs"])
        self.assertEqual(options["metrics-token"], "m")

    def test_command_line_overrides(self) -> None:
        path = write(
            self, 'token = "tttttttttttttttt"\nmax-sessions = 2\nlisten = ["tcp:1", "tcp:2"]\n'
        )
        options = parse("--max-sessions", "5", "--listen", "tcp:0", f"--config={path}")
        self.assertEqual(options["config"].max_sessions, 5)
        self.assertEqual(options["listen"], ["tcp:0"])

    def test_options_added_later_need_nothing(self) -> None:
        class Extended(Options):
            optParameters = [*Options.optParameters, ["budget", None, 7, "A budget.", int]]
            optFlags = [*Options.optFlags, ["quiet", None, "Say less."]]

            def __init__(self) -> None:
                super().__init__()
                self["deny"] = []

            def opt_deny(self, rule: str) -> None:
                """Deny a rule (repeatable)."""
                self["deny"].append(rule)

        path = write(
            self, 'token = "tttttttttttttttt"\nbudget = 9\nquiet = true\ndeny = ["a", "b"]\n'
        )
        options = Extended()
        options.parseOptions(["--config", path])
        self.assertEqual((options["budget"], options["quiet"], options["deny"]), (9, 1, ["a", "b"]))

    def test_errors_name_the_option_and_line(self) -> None:
        for text, expected in (
            (
                'token = "tttttttttttttttt"\n\nmax-sessions = 0\n',
                "line 3: max-sessions: must be at least 1",
            ),
            (
                'token = "tttttttttttttttt"\nmax-sessions = "x"\n',
                "line 2: max-sessions: 'x' is not a whole",
            ),
            (
                'token = "tttttttttttttttt"\nno-such-thing = 1\n',
                "line 2: unknown option 'no-such-thing'",
            ),
            ('token = "tttttttttttttttt"\njson-logs = "yes"\n', "line 2: json-logs: is a flag"),
            (
                'token = "tttttttttttttttt"\nmax-sessions = true\n',
                "line 2: max-sessions: must be a string",
            ),
            ('token = "tttttttttttttttt"\nallow = ["nocolon"]\n', "line 2: allow:"),
            ('token = "tttttttttttttttt"\nconfig = "other.toml"\n', "unknown option 'config'"),
            ("token = \n", "--config"),
        ):
            path = write(self, text)
            with self.assertRaises(usage.UsageError) as caught:
                parse("--config", path)
            self.assertIn(expected, str(caught.exception))
            self.assertIn(path, str(caught.exception))

    def test_missing_file(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse("--config", "/nonexistent/tcpsocket.toml")
        self.assertIn("/nonexistent/tcpsocket.toml", str(caught.exception))


class OptionErrorTests(SynchronousTestCase):
    def test_numeric_errors_name_the_option(self) -> None:
        for args, expected in (
            (("--max-sessions", "0"), "--max-sessions: must be at least 1"),
            (("--connect-timeout", "-1"), "--connect-timeout: must be positive"),
            (("--high-water-mark", "x"), "--high-water-mark: 'x' is not a whole number"),
            (("--close-timeout", "soon"), "--close-timeout: 'soon' is not a number"),
            (
                ("--high-water-mark", "10", "--max-send-buffer", "5"),
                "--max-send-buffer must not be below --high-water-mark",
            ),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                parse("--token", "t" * 16, *args)
            self.assertEqual(str(caught.exception), expected)

    def test_listen_descriptions_are_checked(self) -> None:
        for description in ("bogus", "tcp:notaport", "tcp:8081:nonsense=1"):
            with self.assertRaises(usage.UsageError) as caught:
                parse("--token", "t" * 16, "--listen", description)
            self.assertIn(f"--listen {description!r}", str(caught.exception))
        with self.assertRaises(usage.UsageError):
            parse("--token", "t" * 16, "--metrics-listen", "tcp:x")

    def test_duplicate_tokens_in_file(self) -> None:
        path = write(
            self,
            json.dumps([{"token": "a" * 16}, {"token": "b" * 16}, {"token": "a" * 16}]),
            "t.json",
        )
        with self.assertRaises(ValueError) as caught:
            load_tokens_file(path)
        self.assertIn("entry 3 repeats the token of entry 1", str(caught.exception))
        self.assertRaises(usage.UsageError, parse, "--tokens-file", path)

    def test_version_is_one_value(self) -> None:
        setup = (ROOT / "setup.py").read_text()
        self.assertIn("_version.py", setup)
        self.assertNotIn(tcpsocket.__version__, setup)
        changelog = (ROOT / "CHANGELOG.md").read_text()
        self.assertIn(f"## {tcpsocket.__version__}", changelog)


def spawn_twistd(test: Any, args: list[str], cwd: Path, env: dict[str, str]) -> ProcessOutput:
    """Start ``twistd`` (this worktree's code), killed at cleanup if still running."""
    environment = dict(env, PYTHONPATH=str(ROOT))
    return spawn_process(test, [*TWISTD, *args], cwd, environment, stop=signal.SIGKILL)


async def run_twistd(*args: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    environment = dict(env if env is not None else os.environ, PYTHONPATH=str(ROOT))
    out, err, code = await getProcessOutputAndValue(
        TWISTD[0], [*TWISTD[1:], *args], env=environment, path=str(ROOT)
    )
    return (out + err).decode(), code


class TwistdErrorTests(TestCase):
    async def assertOneLine(self, *args: str, expected: str, **kwargs: Any) -> None:
        output, code = await run_twistd("-n", *args, **kwargs)
        self.assertNotEqual(code, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(expected, lines[0])

    async def test_bad_listen(self) -> None:
        env = dict(os.environ, WS_RUNTIME_TOKEN="t" * 16)
        await self.assertOneLine(
            "tcpsocket", "--listen", "bogus", expected="--listen 'bogus'", env=env
        )
        await self.assertOneLine(
            "tcpsocket", "--listen", "tcp:notaport", expected="'tcp:notaport'", env=env
        )

    async def test_numbers_and_unknown_options(self) -> None:
        env = dict(os.environ, WS_RUNTIME_TOKEN="t" * 16)
        await self.assertOneLine(
            "tcpsocket",
            "--max-sessions",
            "0",
            expected="--max-sessions: must be at least 1",
            env=env,
        )
        await self.assertOneLine("tcpsocket", "--frobnicate", expected="--frobnicate", env=env)

    async def test_missing_token_without_usage(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "WS_RUNTIME_TOKEN"}
        await self.assertOneLine("tcpsocket", expected="no session token is set", env=env)

    async def test_tls_without_the_extra(self) -> None:
        env = dict(os.environ, WS_RUNTIME_TOKEN="t" * 16)
        output, code = await run_twistd_without_openssl(
            "-n", "tcpsocket", "--listen", "ssl:0:privateKey=k.pem", env=env
        )
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", output)
        self.assertIn("TLS needs the tls extra", output)

    async def test_port_in_use(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, WS_RUNTIME_TOKEN="t" * 16)
        output, code = await run_twistd(
            "-n", "--pidfile=", "tcpsocket", "--listen", f"tcp:{port}:interface=127.0.0.1", env=env
        )
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", output)
        self.assertIn(f"Couldn't listen on 127.0.0.1:{port}", output)
        self.assertEqual(output.count("Address already in use"), 1, output)

    async def test_port_in_use_when_daemonizing(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cwd = temp_dir(self)
        env = dict(os.environ, WS_RUNTIME_TOKEN="t" * 16)
        output, code = await run_twistd(
            f"--pidfile={cwd}/t.pid",
            f"--logfile={cwd}/t.log",
            "tcpsocket",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            env=env,
        )
        self.assertEqual(code, 1, output)
        self.assertIn(f"Couldn't listen on 127.0.0.1:{port}", output)
        self.assertNotIn("Traceback", output)

    async def test_version(self) -> None:
        output, code = await run_twistd("tcpsocket", "--version")
        self.assertEqual(code, 0)
        self.assertIn(f"tcpsocket {tcpsocket.__version__}", output)


async def run_twistd_without_openssl(*args: str, env: dict[str, str]) -> tuple[str, int]:
    """twistd as if pyOpenSSL (the ``tls`` extra) were not installed."""
    code = (
        "import sys; sys.modules['OpenSSL'] = None; from twisted.scripts.twistd import run; run()"
    )
    out, err, status = await getProcessOutputAndValue(
        sys.executable, ["-c", code, *args], env=dict(env, PYTHONPATH=str(ROOT)), path=str(ROOT)
    )
    return (out + err).decode(), status


class TwistdProcessTests(TestCase):
    async def start(
        self, cwd: Path, *args: str, token: str = "from-environment"
    ) -> tuple[ProcessOutput, str]:
        path = str(cwd / f"d{len(os.listdir(cwd))}.sock")
        env = dict(os.environ, WS_RUNTIME_TOKEN=token)
        daemon = spawn_twistd(
            self, ["-n", "tcpsocket", "--listen", f"unix:{path}", *args], cwd, env
        )
        await self.listening(daemon, path)
        return daemon, path

    async def listening(self, daemon: ProcessOutput, path: str) -> None:
        await wait_until(lambda: unix_listening(path) or daemon.ended.called, timeout=30)
        self.assertFalse(daemon.ended.called, daemon.output.decode())

    async def stop(self, daemon: ProcessOutput) -> None:
        daemon.process.signalProcess(signal.SIGTERM)
        await daemon.ended

    async def test_foreground_writes_no_pidfile_and_a_second_instance_runs(self) -> None:
        cwd = temp_dir(self)
        first, _ = await self.start(cwd)
        second, _ = await self.start(cwd)
        self.assertFalse((cwd / "twistd.pid").exists())
        self.assertFalse(first.ended.called or second.ended.called)
        await self.stop(first)
        await self.stop(second)

    async def test_explicit_pidfile_is_kept(self) -> None:
        cwd = temp_dir(self)
        path = str(cwd / "tcpsocket.sock")
        env = dict(os.environ, WS_RUNTIME_TOKEN="t" * 16)
        daemon = spawn_twistd(
            self,
            ["-n", f"--pidfile={cwd}/run.pid", "tcpsocket", "--listen", f"unix:{path}"],
            cwd,
            env,
        )
        await self.listening(daemon, path)
        self.assertEqual((cwd / "run.pid").read_text().strip(), str(daemon.process.pid))
        await self.stop(daemon)

    async def test_config_file(self) -> None:
        cwd = temp_dir(self)
        path = str(cwd / "from-file.sock")
        (cwd / "tcpsocket.toml").write_text(
            f'listen = ["unix:{path}"]\ntoken = ["token-from-the-file"]\njson-logs = true\n'
        )
        env = {k: v for k, v in os.environ.items() if k != "WS_RUNTIME_TOKEN"}
        args = ["-n", "tcpsocket", "--config", "tcpsocket.toml"]
        daemon = spawn_twistd(self, args, cwd, env)
        await self.listening(daemon, path)
        await one_session(self, path, "token-from-the-file", daemon)
        await self.stop(daemon)
        lines = daemon.output.decode().splitlines()
        started = [json.loads(line) for line in lines if "started" in line]
        self.assertEqual(started[0]["identity"], "command-line")

    async def test_json_logs(self) -> None:
        cwd = temp_dir(self)
        daemon, path = await self.start(cwd, "--json-logs")
        await one_session(self, path, "from-environment", daemon)
        await self.stop(daemon)
        records = [json.loads(line) for line in daemon.output.decode().splitlines() if line]
        for record in records:
            self.assertEqual(
                set(record) >= {"time", "level", "namespace", "message", "event"}, True, record
            )
        started = [r for r in records if r["event"] == "session of {identity} from {peer} started"]
        self.assertEqual(len(started), 1, records)
        self.assertEqual(started[0]["identity"], "desktop")
        self.assertEqual(started[0]["session"], 1)
        self.assertEqual(started[0]["level"], "info")
        self.assertTrue(started[0]["peer"].startswith("unix"))
        ended = [r for r in records if "ended" in r["message"]]
        self.assertEqual((ended[0]["identity"], ended[0]["session"]), ("desktop", 1))
        self.assertIn("code 1000: done", ended[0]["how"])


class JsonLineTests(SynchronousTestCase):
    def test_twistd_log_file(self) -> None:
        from twisted.logger import LogLevel

        from tcpsocket import jsonlog

        path = temp_dir(self) / "tcpsocket.log"
        self.addCleanup(jsonlog.use_twistd_output, None, True)
        jsonlog.use_twistd_output(str(path), False)
        observer = jsonlog.twistd_observer()
        observer(
            {
                "log_format": "hello {who}",
                "log_level": LogLevel.info,
                "log_namespace": "t",
                "log_time": 0.0,
                "who": "you",
            }
        )
        self.assertEqual(json.loads(path.read_text())["message"], "hello you")

    def test_fields_and_failures(self) -> None:
        from twisted.logger import LogLevel

        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            failure = Failure()
        line = event_as_json_line(
            {
                "log_format": "socket {id} to {peer} closed: {sent} bytes sent",
                "log_level": LogLevel.warn,
                "log_namespace": "tcpsocket.remote",
                "log_time": 0.0,
                "log_failure": failure,
                "id": 3,
                "peer": "127.0.0.1:993",
                "sent": 12,
                "blob": object(),
            }
        )
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(record["message"], "socket 3 to 127.0.0.1:993 closed: 12 bytes sent")
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["time"], "1970-01-01T00:00:00+00:00")
        self.assertEqual((record["id"], record["sent"]), (3, 12))
        self.assertIn("ZeroDivisionError", record["failure"])
        self.assertIsInstance(record["blob"], str)
