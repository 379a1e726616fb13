"""The daemon's live remote connections, so that a stopping daemon can wait for them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["ConnectionSet"]


class ConnectionSet:
    """Connections that are still open; :meth:`when_empty` fires once none is.

    Sockets that a session let go of (released, or their session ended) stay
    here while they flush what was accepted, up to the close timeout.
    """

    def __init__(self) -> None:
        self._live: set[Any] = set()
        self._waiters: list[Deferred[None]] = []
        #: Accepted bytes that closing connections could not deliver, in total.
        self.undelivered = 0
        #: Connections that ended without delivering everything they accepted.
        self.incomplete = 0

    def __len__(self) -> int:
        return len(self._live)

    def add(self, connection: Any) -> None:
        self._live.add(connection)

    def discard(self, connection: Any, undelivered: int = 0) -> None:
        """``connection`` is gone, leaving ``undelivered`` accepted bytes unsent."""
        self._live.discard(connection)
        if undelivered:
            self.undelivered += undelivered
            self.incomplete += 1
        if not self._live:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_empty(self) -> Deferred[None]:
        """A Deferred that fires once no connection is open."""
        waiter: Deferred[None] = Deferred()
        if self._live:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter
