"""Event ids (the same numbers as the JS client) and listener bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

from twisted.logger import Logger

from tcpsocket.services.tcpsocket.messages import Event

__all__ = [
    "CLOSE_EVENT",
    "DATA_EVENT",
    "DRAIN_EVENT",
    "ERROR_EVENT",
    "EventConstants",
    "Listeners",
    "check_event",
]

CLOSE_EVENT: Final = Event.CLOSE
DATA_EVENT: Final = Event.DATA
DRAIN_EVENT: Final = Event.DRAIN
ERROR_EVENT: Final = Event.ERROR

log = Logger()

L = TypeVar("L", bound=Callable[..., object])


class EventConstants:
    """Gives a class the ``*_EVENT`` constants, like the JS objects have."""

    CLOSE_EVENT: Final = Event.CLOSE
    DATA_EVENT: Final = Event.DATA
    DRAIN_EVENT: Final = Event.DRAIN
    ERROR_EVENT: Final = Event.ERROR


def check_event(event: int) -> Event:
    """The :class:`Event` for an event id; ``ValueError`` if there is none."""
    if isinstance(event, bool) or not isinstance(event, int):
        raise TypeError(f"event must be an int, not {type(event).__name__}")
    try:
        return Event(event)
    except ValueError:
        raise ValueError(f"unknown event {event}") from None


class Listeners(Generic[L]):
    """The listeners of each event, in the order they were added, without duplicates."""

    def __init__(self) -> None:
        self._sets: dict[Event, dict[L, None]] = {event: {} for event in Event}

    def add(self, event: Event, listener: L) -> bool:
        """Add ``listener``; whether it was not there yet."""
        if not callable(listener):
            raise TypeError("listener must be callable")
        listeners = self._sets[event]
        if listener in listeners:
            return False
        listeners[listener] = None
        return True

    def remove(self, event: Event, listener: L) -> bool:
        """Remove ``listener``; whether it was there."""
        listeners = self._sets[event]
        if listener not in listeners:
            return False
        del listeners[listener]
        return True

    def has(self, event: Event) -> bool:
        """Whether ``event`` has any listener."""
        return bool(self._sets[event])

    def call(self, event: Event, *args: object) -> None:
        """Call each listener; one removed during the dispatch is skipped, errors are logged."""
        listeners = self._sets[event]
        for listener in list(listeners):
            if listener not in listeners:
                continue
            try:
                listener(*args)
            except Exception:
                log.failure(
                    "tcpsocket: {event} listener {listener!r} failed",
                    event=event.name,
                    listener=listener,
                )
