"""Logs for machines: one JSON object per line (``twistd tcpsocket --json-logs``).

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``message`` (the text the
plain log would show), ``event`` (the message's template: stable, so it groups events of a
kind), and every field the event was logged with (``identity``, ``peer``, ``host``, ``port``,
``sent``, ``received``, ``reason``, ...: see doc/operators.md). Values that are not JSON
numbers, strings, booleans or null are written as their text. A failure adds ``failure``
(its traceback as text).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python import logfile

__all__ = [
    "TWISTD_OBSERVER",
    "event_as_json_line",
    "json_observer",
    "twistd_observer",
    "use_twistd_output",
]

_SIMPLE = (str, int, float, bool, type(None))


def _value(value: Any) -> Any:
    return value if isinstance(value, _SIMPLE) else str(value)


def event_as_json_line(event: LogEvent) -> str:
    """One event as a JSON object on one line (with its newline)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
        "event": event.get("log_format") or "",
    }
    for key, value in event.items():
        if not key.startswith(("log_", "_")) and key not in record and key != "format":
            record[key] = _value(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"


def json_observer(out: IO[str]) -> ILogObserver:
    """An observer writing :func:`event_as_json_line` lines to ``out``."""
    return FileLogObserver(out, event_as_json_line)


#: Where :func:`twistd_observer` writes: twistd's ``--logfile`` and ``--nodaemon``.
_twistd_output: tuple[str | None, bool] = (None, True)

#: The name ``--json-logs`` gives twistd's ``logger`` option (which takes a dotted name).
TWISTD_OBSERVER = "tcpsocket.jsonlog.twistd_observer"


def use_twistd_output(logfile_name: str | None, foreground: bool) -> None:
    """Remember twistd's log destination for :func:`twistd_observer`."""
    global _twistd_output
    _twistd_output = (logfile_name, foreground)


def twistd_observer() -> ILogObserver:
    """For twistd's ``logger`` option: where twistd would write, JSON lines instead.

    Standard output for ``--logfile=-`` or ``-n`` without ``--logfile``, else the log file
    (``twistd.log`` by default), rotated as twistd rotates it.
    """
    logfile_name, foreground = _twistd_output
    out: IO[str]
    if logfile_name == "-" or (not logfile_name and foreground):
        out = sys.stdout
    else:
        out = logfile.LogFile.fromFullPath(logfile_name or "twistd.log")
    return json_observer(out)
