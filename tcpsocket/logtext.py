"""Client-supplied text made safe to log: escaped and cut.

Close reasons, ``Origin`` and ``Host`` headers, peer strings and token
identities reach the logs through :func:`printable`, so that a client cannot
forge log lines (newlines, terminal escapes) or fill the disk with one line.
:class:`LogBudget` bounds how many lines one kind of event may log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["ClientLog", "LogBudget", "printable"]


def _escape(char: str) -> str:
    if char.isprintable() and char != "\\":
        return char
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


def printable(text: str | bytes | None, limit: int = 200) -> str:
    """``text`` with every non-printable character escaped, cut to ``limit`` characters.

    Bytes are decoded as UTF-8, invalid bytes escaped as ``\\xNN``; ``None`` is ``"-"``.
    A cut text ends with ``…`` and says how long it was.
    """
    if text is None:
        return "-"
    if isinstance(text, bytes | bytearray | memoryview):
        text = bytes(text).decode("utf-8", "surrogateescape")
    length = len(text)
    escaped = "".join(_escape(char) for char in text[: limit + 1])
    if len(escaped) > limit or length > limit:
        return f"{escaped[:limit]}…({length} chars)"
    return escaped


class LogBudget:
    """At most ``lines`` log lines per ``period`` seconds; the rest are counted.

    When lines were dropped, the next line that fits says how many.
    """

    def __init__(self, reactor: Any, lines: int = 20, period: float = 60.0) -> None:
        self._reactor = reactor
        self._lines = lines
        self._period = period
        self._window_start = float("-inf")
        self._used = 0
        self.suppressed = 0

    def warn(self, log: Logger, format: str, **fields: Any) -> bool:
        """Log ``format`` at warn level if the budget allows; True if it was logged."""
        return self.emit(log, "warn", format, **fields)

    def emit(self, log: Logger, level: str, format: str, **fields: Any) -> bool:
        """Log ``format`` at ``level`` if the budget allows; True if it was logged."""
        now = self._reactor.seconds()
        if now - self._window_start >= self._period:
            self._window_start = now
            self._used = 0
        if self._used >= self._lines:
            self.suppressed += 1
            return False
        self._used += 1
        if self.suppressed:
            format += " ({suppressed} similar lines suppressed)"
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        getattr(log, level)(format, **fields)
        return True


class ClientLog:
    """Stands in for an Autobahn protocol's ``log`` (txaio's logger interface).

    Autobahn logs header values, close reasons and peers of the connection's
    client: here they are escaped and cut, its debug lines are dropped, and
    while ``budget()`` gives a :class:`LogBudget` (a client not yet
    authenticated) its lines are counted against it.
    """

    def __init__(self, log: Logger, budget: Callable[[], LogBudget | None]) -> None:
        self._log = log
        self._budget = budget

    def _emit(self, level: str, format: str, fields: dict[str, Any]) -> None:
        safe = {
            key: printable(value) if isinstance(value, str | bytes) else value
            for key, value in fields.items()
        }
        budget = self._budget()
        if budget is None:
            getattr(self._log, level)(format, **safe)
        else:
            budget.emit(self._log, level, format, **safe)

    def trace(self, format: str, **fields: Any) -> None:
        pass  # txaio's levels below info: Autobahn calls them, they are dropped

    def debug(self, format: str, **fields: Any) -> None:
        pass

    def info(self, format: str, **fields: Any) -> None:
        self._emit("info", format, fields)

    def warn(self, format: str, **fields: Any) -> None:
        self._emit("warn", format, fields)

    def error(self, format: str, **fields: Any) -> None:
        self._emit("error", format, fields)

    def critical(self, format: str, **fields: Any) -> None:
        self._emit("critical", format, fields)

    def failure(self, format: str | None = None, failure: Any = None, **fields: Any) -> None:
        self._log.failure(format or "", failure, **fields)
