"""tcpsocket.offload: blocking calls on a bounded pool of their own, each with a deadline."""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.trial.unittest import TestCase

from tcpsocket.offload import BlockingCalls, CallTimedOut
from tests.test_tokens import threads_named


class BlockingCallsTests(TestCase):
    def calls(self, threads: int = 2, timeout: float = 5.0) -> BlockingCalls:
        calls = BlockingCalls("tcpsocket-test-calls", threads, timeout, reactor)
        self.addCleanup(calls.stop)
        return calls

    async def test_result_and_error_off_the_reactor_thread(self) -> None:
        calls = self.calls()
        self.assertFalse(calls.running, "started by the first call")
        name = await calls.call(lambda: threading.current_thread().name)
        self.assertIn("tcpsocket-test-calls", name)
        with self.assertRaises(ZeroDivisionError):
            await calls.call(lambda: 1 // 0)
        self.assertEqual(calls.in_flight, 0)

    async def test_deadline_and_a_queued_call_never_started(self) -> None:
        calls = self.calls(threads=1, timeout=0.2)
        release = threading.Event()
        started: list[str] = []
        stuck = calls.call(release.wait, 10)
        queued = calls.call(started.append, "queued")
        with self.assertRaises(CallTimedOut):
            await stuck
        with self.assertRaises(CallTimedOut):
            await queued
        self.assertEqual(calls.in_flight, 0)
        release.set()
        await calls.call(started.append, "after")
        self.assertEqual(started, ["after"], "the call given up while queued never ran")

    async def test_stop_gives_up_calls_and_ends_the_threads(self) -> None:
        calls = self.calls(threads=1)
        release = threading.Event()
        stuck = calls.call(release.wait, 10)
        self.assertEqual(calls.in_flight, 1)
        # The thread finishes its call (bounded, as every offloaded call is): stop() joins it.
        timer = threading.Timer(0.05, release.set)
        timer.start()
        calls.stop()
        timer.join()
        with self.assertRaises(CancelledError):
            await stuck
        self.assertFalse(calls.running)
        self.assertEqual(threads_named("tcpsocket-test-calls"), [])
        self.assertTrue(await calls.call(lambda: True), "a later call starts the pool again")
