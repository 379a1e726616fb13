"""What all sessions of one daemon share: sockets, upstream bytes, lookups, own endpoints."""

from __future__ import annotations

import resource
from typing import Any, Protocol

from twisted.logger import Logger

from tcpsocket.config import ServerConfig
from tcpsocket.policy import OwnEndpoints
from tcpsocket.resolve import Lookups

__all__ = ["FD_RESERVE", "Budgets", "nofile_limit", "raise_nofile_limit"]

log = Logger()

#: File descriptors kept out of the socket budget: listening ports, HTTP
#: connections that are not sessions yet, logs, pipes, the lookup threads' needs.
FD_RESERVE = 128


def nofile_limit() -> int:
    """The soft limit on open files of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_nofile_limit() -> int:
    """Raise the soft ``nofile`` limit to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn("could not raise the open files limit from {soft}: {e}", soft=soft, e=e)
    return nofile_limit()


class _Holder(Protocol):
    @property
    def queued_upstream(self) -> int: ...


class Budgets:
    """The daemon-wide limits of one ``SessionFactory``."""

    def __init__(self, config: ServerConfig, reactor: Any, nofile: int | None = None) -> None:
        self.config = config
        #: Where the daemon listens (sessions may never open these).
        self.own_endpoints = OwnEndpoints()
        self.lookups = Lookups(
            reactor, config.resolver, config.max_lookups_per_session, config.max_lookups
        )
        #: The open files limit the caps are fitted to (this process's soft limit).
        self.nofile = nofile if nofile is not None else nofile_limit()
        available = max(2, self.nofile - FD_RESERVE)
        #: Sessions allowed at once: ``max_sessions``, unless the open files limit
        #: cannot also hold a socket for each; then a quarter of what it can hold.
        self.max_sessions = config.max_sessions
        if 2 * config.max_sessions > available:
            self.max_sessions = max(1, available // 4)
        #: Sockets (connected or connecting, each connect attempt counts) allowed in total.
        self.max_sockets = max(1, min(config.max_sockets, available - self.max_sessions))
        if self.max_sessions < config.max_sessions or self.max_sockets < config.max_sockets:
            log.info(
                "at most {sessions} sessions and {n} remote sockets in total: the open files "
                "limit is {nofile} ({reserve} kept for listening ports, HTTP and logs)",
                sessions=self.max_sessions,
                n=self.max_sockets,
                nofile=self.nofile,
                reserve=FD_RESERVE,
            )
        self.sockets = 0
        # Sockets holding upstream bytes, and whose session they belong to.
        self._holding: dict[_Holder, object] = {}

    def sockets_refusal(self, wanted: int = 1) -> str | None:
        """Why ``wanted`` more sockets may not be opened now, or None."""
        if self.sockets + wanted > self.max_sockets:
            return f"too many sockets open in the daemon (limit {self.max_sockets})"
        return None

    def upstream_refusal(self, session: object, socket: _Holder, size: int) -> str | None:
        """Why ``size`` more upstream bytes may not be held now, or None.

        Counts the bytes that sockets queue because the remote does not read
        as fast as the client sends.
        """
        total = per_session = 0
        for holder, owner in list(self._holding.items()):
            queued = holder.queued_upstream
            if not queued:
                del self._holding[holder]
                continue
            total += queued
            if owner is session:
                per_session += queued
        limit = self.config.max_session_send_buffer
        if per_session + size > limit:
            return f"session send buffers full: {per_session} bytes waiting, limit {limit}"
        limit = self.config.max_total_send_buffer
        if total + size > limit:
            return f"daemon send buffers full: {total} bytes waiting, limit {limit}"
        return None

    def forget(self, socket: _Holder) -> None:
        """``socket`` is gone: it holds nothing any more."""
        self._holding.pop(socket, None)

    def holding(self, session: object, socket: _Holder) -> None:
        """Note that ``socket`` (of ``session``) may now hold upstream bytes."""
        if socket.queued_upstream:
            self._holding[socket] = session
