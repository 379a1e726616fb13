"""Give the heap memory freed by finished sessions back to the operating system.

Sessions hold no reference cycles (see ``tests/test_memory.py``): their
buffers are freed as soon as they end.  But glibc's allocator keeps freed
heap pages mapped, so the RSS of a daemon stays at its peak after a burst of
traffic.  ``malloc_trim`` returns them; it is called when the last session
ends, and otherwise at most once per interval as sessions end.  Elsewhere
than glibc it is not available and nothing is done.  :func:`set_top_pad` is
the daemon's start-up allocator setting (``--malloc-top-pad``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

__all__ = ["HeapTrimmer", "set_top_pad"]

#: ``mallopt`` parameter number of ``M_TOP_PAD`` (glibc malloc.h).
M_TOP_PAD = -2


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def set_top_pad(size: int) -> bool:
    """Set glibc's ``M_TOP_PAD``: heap kept on top when the heap grows or is trimmed.

    Large reads allocate and free big buffers; without a pad, glibc may give
    the top of the heap back and take it again (``brk``) on every read.
    Returns whether it was set (False elsewhere than glibc, or for 0).
    """
    if size <= 0:
        return False
    try:
        mallopt: Callable[[int, int], int] = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TOP_PAD, size))


class HeapTrimmer:
    """Calls ``malloc_trim`` as sessions end: always when none is left, else rate-limited."""

    def __init__(self, clock: Any, interval: float = 10.0) -> None:
        self._clock = clock
        self._interval = interval
        self._trim = _malloc_trim()
        self._last = float("-inf")
        #: How many times memory was given back.
        self.trims = 0

    def session_ended(self, sessions_left: int) -> None:
        now = self._clock.seconds()
        if self._trim is None or (sessions_left and now - self._last < self._interval):
            return
        self._last = now
        self._trim(0)
        self.trims += 1
