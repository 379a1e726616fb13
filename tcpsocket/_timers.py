"""Autobahn timers on a given reactor.

Autobahn asks its factories for ``_batched_timer.call_later``; its own
batches timers per 200 ms bucket on the global reactor, and leaves cancelled
buckets armed.  These are exact, cancel cleanly, and follow the reactor (or
test clock) the factory was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall


class _Timer:
    """A delayed call whose ``cancel()`` may be called again, or after it ran (as txaio's)."""

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def active(self) -> bool:
        return self._call.active()

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class ReactorTimer:
    """What Autobahn expects of ``factory._batched_timer``."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Timer:
        return _Timer(self._reactor.callLater(delay, func, *args, **kw))


def use_reactor_timers(factory: Any, reactor: Any) -> None:
    """Make an Autobahn WebSocket factory schedule its timers on ``reactor``."""
    factory._batched_timer = ReactorTimer(reactor)
