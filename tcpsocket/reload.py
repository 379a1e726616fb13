"""Reload the tokens and the destination rules of a running daemon (SIGHUP under twistd).

A reload parses the daemon's options again (the same command line, the
tokens file read anew) into a fresh :class:`~tcpsocket.config.ServerConfig`,
then swaps its tokens and destination policy into the live configuration in
one step.  A configuration that does not parse changes nothing: the daemon
keeps the one it has and logs why.  Live sessions are untouched: a revoked
token only stops new handshakes; new opens follow the new rules.  Other
options need a restart; a reload that changes them logs that they were kept.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from tcpsocket.config import ServerConfig

__all__ = ["HangupReload", "apply_reload"]

log = Logger()

#: What a reload swaps in; everything else needs a restart.
RELOADED = ("tokens", "policy")


def apply_reload(live: ServerConfig, fresh: ServerConfig) -> ServerConfig:
    """The live configuration with ``fresh``'s tokens and policy.

    The live token store is kept (it holds the record of consumed single-use
    tokens) and its tokens replaced in place.
    """
    replace = getattr(live.tokens, "replace", None)
    if replace is None:
        raise ValueError(f"the token store {type(live.tokens).__name__} cannot be reloaded")
    for spec in dataclasses.fields(live):
        old, new = getattr(live, spec.name), getattr(fresh, spec.name)
        if spec.name not in RELOADED and isinstance(old, (int, float, str)) and old != new:
            log.warn(
                "reload: {option} changed ({old} -> {new}); a restart applies it",
                option=spec.name.replace("_", "-"),
                old=old,
                new=new,
            )
    reloaded = dataclasses.replace(live, policy=fresh.policy)
    live_claims, fresh_claims = (getattr(p, "claimed", None) for p in (live.policy, fresh.policy))
    if live_claims is not None and fresh_claims is not None:
        # Live sessions of signed tokens keep the rules their tokens carried.
        fresh_claims.update(live_claims)
    replace(fresh.tokens)
    return reloaded


class HangupReload(Service):
    """Reloads a daemon on SIGHUP while running.

    ``parse`` builds a fresh configuration (it raises ``ValueError`` or
    ``usage.UsageError`` for a bad one); ``apply`` installs it.  The signal
    handler only schedules the reload on the reactor.
    """

    def __init__(
        self,
        parse: Callable[[], ServerConfig],
        apply: Callable[[ServerConfig], None],
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._parse = parse
        self._apply = apply
        self._reactor = reactor
        self._previous: Any = None

    def privilegedStartService(self) -> None:
        # Under twistd this runs as the listeners start, long before startService (at
        # reactor start-up): a SIGHUP in between must reload, not end the process.
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        self._install()

    def _install(self) -> None:
        if self._previous is None and hasattr(signal, "SIGHUP"):  # not on Windows
            self._previous = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """Parse and apply; whether the new configuration is in use."""
        try:
            fresh = self._parse()
            self._apply(fresh)
        except Exception as e:  # a bad file must never stop the daemon
            log.error("reload failed, the configuration in use is kept: {why}", why=str(e))
            return False
        log.info("reloaded the tokens and destination rules")
        return True
