"""Unit tests of the front door's pieces: log text, budgets, pending caps, names, origins.

The attacks themselves run against a real daemon in ``test_security_*.py``; these pin down
the rules with a fake clock.  The last test is the canary for the Twisted internals
``tcpsocket.httplimits`` relies on.
"""

from __future__ import annotations

import inspect

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel

from tcpsocket.admission import PendingConnections, RateBudget, TokenBucket
from tcpsocket.logtext import ClientLog, LogBudget, printable
from tcpsocket.origins import host_allowed, host_name, origin_allowed
from tests.support import test_config


class PrintableTests(SynchronousTestCase):
    def test_escapes_controls_and_backslashes(self) -> None:
        self.assertEqual(printable("a\nb\r\x1b[2J\\"), "a\\nb\\r\\x1b[2J\\\\")
        self.assertEqual(printable("mail\u202egpj.exe"), "mail\\u202egpj.exe")
        self.assertEqual(printable("héllo wörld"), "héllo wörld")

    def test_bytes_and_none(self) -> None:
        self.assertEqual(printable(b"ok\xff\n"), "ok\\xff\\n")
        self.assertEqual(printable(None), "-")

    def test_cut_says_how_long(self) -> None:
        self.assertEqual(printable("x" * 300, 10), "x" * 10 + "…(300 chars)")
        self.assertEqual(printable("\n" * 8, 10), "\\n" * 5 + "…(8 chars)")
        self.assertEqual(printable("y" * 10, 10), "y" * 10)


class LogBudgetTests(SynchronousTestCase):
    def test_lines_per_period_then_summary(self) -> None:
        clock = Clock()
        budget = LogBudget(clock, lines=2, period=60)
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        log = Logger()
        results = [budget.warn(log, "line {n}", n=n) for n in range(5)]
        self.assertEqual(results, [True, True, False, False, False])
        clock.advance(60)
        self.assertTrue(budget.warn(log, "line {n}", n=5))
        self.assertEqual(
            [line for line in lines if line.startswith("line")],
            ["line 0", "line 1", "line 5 (3 similar lines suppressed)"],
        )


class ClientLogTests(SynchronousTestCase):
    def test_escapes_drops_debug_and_budgets(self) -> None:
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        budget: list[LogBudget | None] = [LogBudget(Clock(), lines=1)]
        client_log = ClientLog(Logger(), lambda: budget[0])
        client_log.debug("debug {x}", x=1)
        client_log.warn("reason {reason}", reason="a\nb")
        client_log.warn("reason {reason}", reason="dropped")
        budget[0] = None
        client_log.info("after {n}", n=1)
        self.assertEqual(
            [line for line in lines if line.startswith(("reason", "after", "debug"))],
            ["reason a\\nb", "after 1"],
        )


class BudgetTests(SynchronousTestCase):
    def test_token_bucket(self) -> None:
        bucket = TokenBucket(2, 1.0, now=0.0)
        self.assertEqual([bucket.take(0.0) for _ in range(3)], [True, True, False])
        self.assertTrue(bucket.take(1.0))
        self.assertFalse(bucket.has(1.5))
        self.assertTrue(bucket.full(10.0))

    def test_rate_budget_per_key(self) -> None:
        clock = Clock()
        budget = RateBudget(clock, per_minute=2)
        self.assertTrue(budget.spend("a"))
        self.assertTrue(budget.spend("a"))
        self.assertFalse(budget.allows("a"))
        self.assertTrue(budget.allows("b"))
        clock.advance(30)
        self.assertTrue(budget.allows("a"))

    def test_rate_budget_forgets_full_buckets(self) -> None:
        clock = Clock()
        budget = RateBudget(clock, per_minute=1)
        budget.PRUNE_ABOVE = 3  # type: ignore[misc]
        for key in "abc":
            budget.spend(key)
        clock.advance(120)
        budget.spend("d")
        self.assertEqual(sorted(budget._buckets), ["d"])


class PendingTests(SynchronousTestCase):
    def test_oldest_of_the_address_dropped_first(self) -> None:
        dropped: list[str] = []
        pending = PendingConnections(Clock(), total=10, per_address=2)
        for name, address in (("a1", "A"), ("b1", "B"), ("a2", "A"), ("a3", "A")):
            pending.admit(name, address, lambda name=name: dropped.append(name))
        self.assertEqual(dropped, ["a1"])
        self.assertEqual((pending.count("A"), pending.count("B"), len(pending)), (2, 1, 3))

    def test_oldest_overall_dropped_at_the_total(self) -> None:
        dropped: list[str] = []
        pending = PendingConnections(Clock(), total=2, per_address=5)
        for name, address in (("a1", "A"), ("b1", "B"), ("c1", "C")):
            pending.admit(name, address, lambda name=name: dropped.append(name))
        self.assertEqual(dropped, ["a1"])
        self.assertNotIn("a1", pending)
        pending.release("b1")
        pending.release("b1")
        self.assertEqual(len(pending), 1)


class NameTests(SynchronousTestCase):
    def test_host_name(self) -> None:
        self.assertEqual(host_name("LocalHost:8081"), "localhost")
        self.assertEqual(host_name("[::1]:8081"), "::1")
        self.assertEqual(host_name("example.org."), "example.org")
        self.assertEqual(host_name("::1"), "::1")

    def test_host_allowed(self) -> None:
        config = test_config(server_names=frozenset({"daemon.example"}))
        for header in ("localhost", "127.0.0.1:1", "[::1]", "Daemon.Example:443", "10.0.0.5"):
            self.assertTrue(host_allowed(config, header, "10.0.0.5"), header)
        for header in (None, "evil.example", "127.0.0.1.evil.example", "10.0.0.6"):
            self.assertFalse(host_allowed(config, header, "10.0.0.5"), header)

    def test_origin_allowed(self) -> None:
        config = test_config(allowed_origins=frozenset({"https://app.example/"}))
        self.assertTrue(origin_allowed(config, "HTTPS://APP.example", None, False))
        self.assertTrue(origin_allowed(config, "http://localhost:8081", "localhost:8081", False))
        self.assertFalse(origin_allowed(config, "http://localhost:8081", "localhost:8081", True))
        self.assertFalse(origin_allowed(config, "http://localhost:1", "localhost:8081", False))
        self.assertFalse(origin_allowed(config, "null", "localhost", False))


class InternalsCanaryTests(SynchronousTestCase):
    def test_autobahn_attributes_used_by_the_session(self) -> None:
        # Per-connection limits are instance attributes copied from the factory.
        self.assertIn("maxMessagePayloadSize", WebSocketServerProtocol.CONFIG_ATTRS)
        self.assertIn("maxFramePayloadSize", WebSocketServerProtocol.CONFIG_ATTRS)
        self.assertTrue(hasattr(WebSocketServerProtocol(), "log"))
        # The keepalive timers the session cancels in onClose are set up on connection.
        setup = inspect.getsource(WebSocketProtocol._connectionMade)
        for name in ("autoPingPendingCall", "autoPingTimeoutCall"):
            self.assertIn(f"self.{name} = None", setup)

    def test_http_channel_internals_used_by_httplimits(self) -> None:
        channel = HTTPChannel()
        self.assertIsNone(channel._transferDecoder)
        for name in ("headerReceived", "allHeadersReceived", "requestDone", "rawDataReceived"):
            self.assertTrue(callable(getattr(channel, name)), name)
