"""Fair sharing of one session WebSocket between its sockets (protocol.md B.10).

The WebSocket's transport tells a :class:`FairShare` when more than
``--session-buffer`` bytes are queued towards the client (``pauseProducing``)
and when they are written (``resumeProducing``).  While it is congested, a
socket that has DATA for the client holds it (each socket stops reading its
remote at its own high-water mark) and joins the queue of waiting sockets,
once.  When the WebSocket drains, the waiting sockets are served in turn, one
DATA event each per turn (at most a high-water mark of it while others wait),
from where the last pass stopped, until the WebSocket is congested again or
nobody waits.

Every step is O(1) per socket event: nothing iterates over all of a
session's sockets, and delivering an event (which may finish and forget a
socket) never changes a container being iterated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["FairShare", "Waiter"]


class Waiter(Protocol):
    """A socket that holds DATA for the client until the WebSocket has room."""

    def serve_turn(self, shared: bool = False) -> bool:
        """Deliver one DATA event (and the events up to the next one); whether more waits.

        ``shared``: other sockets wait too, so the turn is at most a high-water mark of bytes.
        """


def _not_reading(reading: bool) -> None:
    """What a stopped :class:`FairShare` does with the client: nothing."""


@implementer(IPushProducer)
class FairShare:
    """Round-robin turns on a congested WebSocket, registered as its push producer."""

    def __init__(self, read_client: Callable[[bool], None] = lambda reading: None) -> None:
        """``read_client(False)`` is called while congested, ``read_client(True)`` after:
        a client that does not read its replies has its requests left unread too."""
        self.congested = False
        self._read_client = read_client
        self._waiting: OrderedDict[Waiter, None] = OrderedDict()

    def __len__(self) -> int:
        """How many sockets wait for a turn."""
        return len(self._waiting)

    def wait(self, socket: Waiter) -> None:
        """``socket`` holds DATA because of congestion: give it a turn when there is room."""
        self._waiting[socket] = None

    def forget(self, socket: Waiter) -> None:
        """``socket`` no longer waits (it was released or closed)."""
        self._waiting.pop(socket, None)

    # -- IPushProducer, called by the WebSocket's transport ------------------

    def pauseProducing(self) -> None:
        self.congested = True
        self._read_client(False)

    def resumeProducing(self) -> None:
        self._read_client(True)
        self.congested = False
        waiting = self._waiting
        # Serving a socket writes to the transport, which calls
        # pauseProducing() as soon as its buffer is full again.
        while waiting and not self.congested:
            socket, _ = waiting.popitem(last=False)
            if socket.serve_turn(bool(waiting)):
                waiting[socket] = None

    def stopProducing(self) -> None:
        """The WebSocket is gone: nobody waits, and the client is not read again."""
        self.congested = True
        self._waiting.clear()
        self._read_client = _not_reading
