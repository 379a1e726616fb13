"""Blocking calls made off the reactor thread, on a bounded thread pool of their owner's own.

A token store that must wait for I/O it cannot make asynchronous (a Redis
client, ``flock`` on a shared file) runs that call here: the reactor goes on
serving every other connection meanwhile.  Each call has a deadline, counted
from when it is asked for: past it, its Deferred fails with
:class:`CallTimedOut` (the thread, if one has the call already, finishes it on
its own, bounded by the call's own timeouts), and a call still queued then is
never started.  The pool starts with the first call; :meth:`BlockingCalls.stop`
(the service stopping, or the reactor shutting down) gives up the calls in
flight and stops its threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = ["BlockingCalls", "CallTimedOut"]

T = TypeVar("T")


class CallTimedOut(Exception):
    """A blocking call did not answer within its deadline."""


class BlockingCalls:
    """Runs blocking calls on at most ``threads`` threads named ``name``, ``timeout`` s each."""

    def __init__(self, name: str, threads: int, timeout: float, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.name = name
        self.threads = threads
        self.timeout = timeout
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._trigger: Any = None
        #: The calls asked for and not answered yet, with the flag that skips them if queued.
        self._waiting: dict[Deferred[Any], threading.Event] = {}

    @property
    def in_flight(self) -> int:
        """Calls asked for and not answered (nor given up) yet."""
        return len(self._waiting)

    @property
    def running(self) -> bool:
        """Whether the pool has been started (and not stopped since)."""
        return self._pool is not None

    def call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """``f(*args)`` on a thread of the pool; :class:`CallTimedOut` past the deadline."""
        pool = self._start()
        given_up = threading.Event()

        def run() -> T | None:
            if given_up.is_set():
                return None  # nobody waits for it any more: not started
            return f(*args)

        done: Deferred[Any] = deferToThreadPool(self._reactor, pool, run)
        self._waiting[done] = given_up

        def settle(result: Any) -> Any:
            given_up.set()
            self._waiting.pop(done, None)
            return result

        def timed_out(failure: Failure) -> Failure:
            if failure.check(CancelledError) and timer.active():
                return failure  # given up by stop(), not by the deadline
            failure.trap(CancelledError)
            raise CallTimedOut(f"no answer within {self.timeout:g} s")

        timer = self._reactor.callLater(self.timeout, done.cancel)
        done.addBoth(settle)
        done.addErrback(timed_out)
        done.addBoth(_cancel_timer, timer)
        return done

    def stop(self) -> None:
        """Give up the calls in flight and stop the threads (each finishes its current call)."""
        for waiting in list(self._waiting):
            waiting.cancel()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if self._trigger is not None:
                self._reactor.removeSystemEventTrigger(self._trigger)
                self._trigger = None
            pool.stop()

    def _start(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self.threads, name=self.name)
            self._pool.start()
            self._trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._shutting_down
            )
        return self._pool

    def _shutting_down(self) -> None:
        self._trigger = None  # firing: not to be removed
        self.stop()


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result
