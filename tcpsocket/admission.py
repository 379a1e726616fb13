"""Who gets in before authentication: pending connections, failure and ping budgets.

A *pending* connection is one without a session yet: an HTTP connection, or a
WebSocket whose token has not been accepted.  :class:`PendingConnections`
caps them in total and per client address, apart from the session slots, and
makes room by dropping the *oldest* pending connection: a flood from the same
address as a legitimate client (a hostile page in the same browser) cannot
keep that client out, since a real client finishes its handshake in
milliseconds while the flood's connections age.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Pending", "PendingConnections", "RateBudget", "TokenBucket", "client_address"]


def client_address(transport: Any) -> str:
    """The client's IP address for per-address limits (``"local"`` for UNIX sockets)."""
    peer = transport.getPeer() if transport is not None else None
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else "local"


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("_capacity", "_level", "_rate", "_updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self._capacity = capacity
        self._rate = rate
        self._level = capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now

    def take(self, now: float) -> bool:
        """Take one token; False if the bucket is empty."""
        self._refill(now)
        if self._level < 1:
            return False
        self._level -= 1
        return True

    def has(self, now: float) -> bool:
        """Whether one token is there (without taking it)."""
        self._refill(now)
        return self._level >= 1

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._level >= self._capacity


class RateBudget:
    """One :class:`TokenBucket` per key (a client address): ``per_minute`` events, as a burst."""

    #: Above this many keys, full buckets are forgotten.
    PRUNE_ABOVE = 4096

    def __init__(self, reactor: Any, per_minute: int) -> None:
        self._reactor = reactor
        self._per_minute = per_minute
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, key: str) -> TokenBucket:
        now = self._reactor.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.PRUNE_ABOVE:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[key] = TokenBucket(self._per_minute, self._per_minute / 60, now)
        return bucket

    def allows(self, key: str) -> bool:
        """Whether ``key`` has budget left."""
        return self._bucket(key).has(self._reactor.seconds())

    def spend(self, key: str) -> bool:
        """Spend one event of ``key``'s budget; False if there was none left."""
        return self._bucket(key).take(self._reactor.seconds())


class Pending:
    """One pending connection: its client address, when it was accepted, how to drop it."""

    __slots__ = ("accepted", "address", "drop")

    def __init__(self, address: str, accepted: float, drop: Callable[[], None]) -> None:
        self.address = address
        self.accepted = accepted
        self.drop = drop


class PendingConnections:
    """The connections without a session, capped in total and per address, oldest first out."""

    def __init__(self, reactor: Any, total: int, per_address: int) -> None:
        self._reactor = reactor
        self.total = total
        self.per_address = per_address
        self._all: dict[Hashable, Pending] = {}
        self._by_address: dict[str, dict[Hashable, Pending]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._all

    def count(self, address: str) -> int:
        """Pending connections from ``address``."""
        return len(self._by_address.get(address, ()))

    def get(self, key: Hashable) -> Pending | None:
        return self._all.get(key)

    def admit(self, key: Hashable, address: str, drop: Callable[[], None]) -> Pending:
        """Record a new pending connection; drops the oldest ones over either cap.

        ``drop`` aborts that connection; it is called after its entry is gone.
        """
        same = self._by_address.get(address)
        while same is not None and len(same) >= self.per_address:
            self._evict(next(iter(same)))
            same = self._by_address.get(address)
        while len(self._all) >= self.total:
            self._evict(next(iter(self._all)))
        entry = Pending(address, self._reactor.seconds(), drop)
        self._all[key] = entry
        self._by_address.setdefault(address, {})[key] = entry
        return entry

    def release(self, key: Hashable) -> None:
        """Forget a connection: it got its session, or it is gone."""
        entry = self._all.pop(key, None)
        if entry is None:
            return
        same = self._by_address[entry.address]
        del same[key]
        if not same:
            del self._by_address[entry.address]

    def _evict(self, key: Hashable) -> None:
        entry = self._all[key]
        self.release(key)
        entry.drop()
