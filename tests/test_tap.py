"""``twistd tcpsocket``: options, tokens, and a real daemon process."""

from __future__ import annotations

import json
import os
import signal
from unittest import mock

from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.config import DEFAULT_LISTEN
from tcpsocket.policy import AllowList
from tcpsocket.reload import HangupReload
from tcpsocket.site import TcpSocketService
from tcpsocket.tap import Options, makeService
from tests.support import ROOT, TWISTD, one_session, start_twistd, temp_dir


def parse(*args: str, environ: dict[str, str] | None = None) -> Options:
    options = Options()
    with mock.patch.dict(os.environ, environ or {}, clear=True):
        options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_no_token_refused_with_advice(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            parse()
        self.assertIn("WS_RUNTIME_TOKEN", str(caught.exception))
        self.assertIn("--token", str(caught.exception))

    def test_environment_token(self) -> None:
        config = parse(environ={"WS_RUNTIME_TOKEN": "change-this-secret-token"})["config"]
        token = self.successResultOf(config.tokens.authenticate("change-this-secret-token"))
        self.assertEqual((token.identity, token.permissions), ("desktop", {"tcp-socket"}))
        self.assertIsNone(self.successResultOf(config.tokens.authenticate("other")))

    def test_token_options_repeat(self) -> None:
        config = parse("--token", "a" * 16, "--token", "b" * 16)["config"]
        self.assertIsNotNone(self.successResultOf(config.tokens.authenticate("a" * 16)))
        self.assertIsNotNone(self.successResultOf(config.tokens.authenticate("b" * 16)))

    def test_tokens_file(self) -> None:
        path = temp_dir(self) / "tokens.json"
        path.write_text(
            json.dumps(
                [
                    {"token": "once" * 4, "identity": "app.example", "single_use": True},
                    {"token": "none" * 4, "identity": "viewer", "permissions": []},
                ]
            )
        )
        config = parse("--tokens-file", str(path))["config"]
        once = self.successResultOf(config.tokens.authenticate("once" * 4))
        self.assertEqual(once.identity, "app.example")
        self.assertIsNone(
            self.successResultOf(config.tokens.authenticate("once" * 4)),
            "single-use tokens are consumed",
        )
        self.assertEqual(
            self.successResultOf(config.tokens.authenticate("none" * 4)).permissions, frozenset()
        )

    def test_bad_tokens_file(self) -> None:
        path = temp_dir(self) / "tokens.json"
        for content in (
            "{",
            '{"token": "x"}',
            '[{"token": ""}]',
            '[{"token": "x", "extra": 1}]',
            '[{"token": "x", "permissions": "tcp-socket"}]',
        ):
            path.write_text(content)
            self.assertRaises(usage.UsageError, parse, "--tokens-file", str(path))
        self.assertRaises(usage.UsageError, parse, "--tokens-file", str(path) + ".missing")

    def test_defaults(self) -> None:
        options = parse("--token", "t" * 16)
        config = options["config"]
        self.assertEqual(options["listen"], [DEFAULT_LISTEN])
        self.assertEqual(DEFAULT_LISTEN, "tcp:8081:interface=127.0.0.1")
        self.assertEqual(
            (
                config.connect_timeout,
                config.handshake_timeout,
                config.high_water_mark,
                config.max_send_buffer,
                config.max_sockets_per_session,
                config.max_sessions,
            ),
            (10.0, 10.0, 65536, 16 * 1024 * 1024, 1024, 1024),
        )

    def test_limits_and_listen(self) -> None:
        options = parse(
            "--token",
            "t" * 16,
            "--listen",
            "tcp:0",
            "--listen",
            "unix:/tmp/x.sock",
            "--connect-timeout",
            "2.5",
            "--handshake-timeout",
            "3",
            "--close-timeout",
            "4",
            "--max-sockets-per-session",
            "7",
            "--max-sessions",
            "9",
            "--max-message-size",
            "1000",
            "--high-water-mark",
            "100",
            "--max-send-buffer",
            "200",
            "--session-buffer",
            "300",
        )
        config = options["config"]
        self.assertEqual(options["listen"], ["tcp:0", "unix:/tmp/x.sock"])
        self.assertEqual(
            (
                config.connect_timeout,
                config.handshake_timeout,
                config.close_timeout,
                config.max_sockets_per_session,
                config.max_sessions,
                config.max_message_size,
                config.high_water_mark,
                config.max_send_buffer,
                config.session_buffer,
            ),
            (2.5, 3.0, 4.0, 7, 9, 1000, 100, 200, 300),
        )

    def test_front_door_options(self) -> None:
        options = parse(
            "--token",
            "t" * 16,
            "--origin",
            "https://App.example",
            "--origin",
            "http://localhost:3000",
            "--server-name",
            "Daemon.Example.",
            "--handshake-message-size",
            "1024",
            "--max-pending",
            "50",
            "--max-pending-per-address",
            "5",
            "--failed-handshakes-per-minute",
            "3",
            "--pings-per-minute",
            "6",
            "--keepalive-interval",
            "0",
            "--keepalive-timeout",
            "2",
            "--idle-timeout",
            "0",
        )
        config = options["config"]
        self.assertEqual(config.allowed_origins, {"https://app.example", "http://localhost:3000"})
        self.assertEqual(config.server_names, {"daemon.example"})
        self.assertEqual(
            (
                config.handshake_message_size,
                config.max_pending,
                config.max_pending_per_address,
                config.failed_handshakes_per_minute,
                config.pings_per_minute,
                config.keepalive_interval,
                config.keepalive_timeout,
                config.idle_timeout,
            ),
            (1024, 50, 5, 3, 6, 0.0, 2.0, 0.0),
        )
        defaults = parse("--token", "t" * 16)["config"]
        self.assertEqual((defaults.allowed_origins, defaults.server_names), (set(), set()))

    def test_short_token_refused_in_one_line(self) -> None:
        for args, environ in (
            (("--token", "short"), {}),
            ((), {"WS_RUNTIME_TOKEN": "x"}),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                parse(*args, environ=environ)
            message = str(caught.exception)
            self.assertIn("too short", message)
            self.assertIn("at least 16", message)
            self.assertNotIn("\n", message)

    def test_bad_values(self) -> None:
        for args in (
            ("--connect-timeout", "0"),
            ("--max-sessions", "-1"),
            ("--high-water-mark", "x"),
            ("--high-water-mark", "10", "--max-send-buffer", "5"),
            ("--allow", "nocolon"),
            ("--allow", "host:0"),
            ("--allow", "host:9-x"),
            ("--allow", "10.0.0.0/33:22"),
            ("--allow", "a host:22"),
            ("--deny", "256.1.1.1:*"),
            ("--max-lookups", "0"),
        ):
            self.assertRaises(usage.UsageError, parse, "--token", "t" * 16, *args)

    def test_allow_rules(self) -> None:
        policy = parse(
            "--token",
            "t" * 16,
            "--allow",
            "*.example.org:993,143",
            "--allow",
            "10.0.0.0/8:*",
            "--allow",
            "[::1]:6660-6669",
        )["config"].policy
        self.assertIsInstance(policy, AllowList)
        self.assertIsNone(policy.check("", "imap.example.org", 993))
        self.assertIsNotNone(policy.check_address("", "imap.example.org", "93.184.216.34", 25))
        self.assertIsNone(policy.check("", "10.2.3.4", 1))
        self.assertIsNone(policy.check("", "::1", 6667))
        self.assertIsNotNone(policy.check("", "11.0.0.1", 80))
        # Address rules judge what a name resolves to (after the lookup).
        self.assertIsNone(policy.check("", "example.org", 993))
        self.assertIsNotNone(policy.check_address("", "example.org", "93.184.216.34", 993))
        self.assertIsNone(policy.check_address("", "intranet", "10.1.1.1", 22))

    def test_make_service(self) -> None:
        service = makeService(parse("--token", "t" * 16, "--listen", "tcp:0", "--listen", "tcp:0"))
        self.assertIsInstance(service, TcpSocketService)
        children = list(service)
        self.assertEqual(len([c for c in children if isinstance(c, HangupReload)]), 1)
        self.assertEqual(len(children), 3)  # two listeners and the SIGHUP reload


class UsedTokensFileOptionTests(TestCase):
    async def test_used_tokens_file_survives_restart(self) -> None:
        directory = temp_dir(self)
        tokens = directory / "tokens.json"
        tokens.write_text(json.dumps([{"token": "once" * 4, "single_use": True}]))
        used = str(directory / "used")
        args = ("--tokens-file", str(tokens), "--used-tokens-file", used)
        first = parse(*args)["config"].tokens
        self.addCleanup(first.stop)
        self.assertIsNotNone(await first.authenticate("once" * 4))
        restarted = parse(*args)["config"].tokens
        self.addCleanup(restarted.stop)
        self.assertIsNone(await restarted.authenticate("once" * 4), "used before the restart")


class TwistdTests(TestCase):
    async def test_help_documents_every_option(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            TWISTD[0], [*TWISTD[1:], "tcpsocket", "--help"], env=dict(os.environ), path=str(ROOT)
        )
        self.assertEqual(code, 0, err)
        text = out.decode()
        for option in (
            "--listen",
            "--token",
            "--tokens-file",
            "--connect-timeout",
            "--handshake-timeout",
            "--close-timeout",
            "--max-sockets-per-session",
            "--max-sessions",
            "--max-message-size",
            "--high-water-mark",
            "--max-send-buffer",
            "--session-buffer",
            "--allow",
            "--deny",
            "--max-sockets",
            "--max-session-send-buffer",
            "--max-total-send-buffer",
            "--max-services-per-session",
            "--max-lookups-per-session",
            "--max-lookups",
            "--config",
            "--json-logs",
            "--metrics-listen",
            "--metrics-token",
            "--version",
            "--origin",
            "--server-name",
            "--used-tokens-file",
            "--handshake-message-size",
            "--max-pending",
            "--max-pending-per-address",
            "--failed-handshakes-per-minute",
            "--pings-per-minute",
            "--keepalive-interval",
            "--keepalive-timeout",
            "--idle-timeout",
            "shows in `ps`",
            "WS_RUNTIME_TOKEN",
        ):
            self.assertIn(option, text)

    async def test_refuses_to_start_without_token(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "WS_RUNTIME_TOKEN"}
        out, err, code = await getProcessOutputAndValue(
            TWISTD[0], [*TWISTD[1:], "-n", "--pidfile=", "tcpsocket"], env=env, path=str(ROOT)
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"WS_RUNTIME_TOKEN", out + err)

    async def test_daemon_serves_on_unix_socket_and_logs_sessions(self) -> None:
        collect, path = await start_twistd(
            self, token=None, allow=None, environ={"WS_RUNTIME_TOKEN": "from-environment"}
        )

        await one_session(self, path, "from-environment", collect)
        collect.process.signalProcess(signal.SIGTERM)
        await collect.ended
        log = collect.output.decode()
        self.assertIn("session of desktop from unix", log)
        self.assertIn("started", log)
        self.assertIn("ended (code 1000: done; closed by the client)", log)
