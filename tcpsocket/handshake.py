"""The session handshake, without a transport: which token a first message grants, or why not.

:class:`tcpsocket.session.SessionProtocol` (the Autobahn adapter) feeds it the
first binary message with what it knows of the connection, and answers the
client (ack, close code) from the :class:`Refusal` or token it is given.  The
token store may have to wait (a shared record of used tokens): the answer is
a Deferred, and the session stays pending until it fires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from tcpsocket.admission import RateBudget
from tcpsocket.config import ServerConfig
from tcpsocket.interfaces import TokenStoreError
from tcpsocket.messages import decode_handshake

__all__ = ["POLICY_VIOLATION", "TRY_AGAIN_LATER", "Refusal", "authenticate"]

#: WebSocket close codes (RFC 6455) a refused handshake ends with.
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class Refusal:
    """A refused handshake: the close code and the reason (sent), and what to log only."""

    code: int
    reason: str
    cause: str | None = None


def authenticate(
    payload: bytes,
    *,
    config: ServerConfig,
    failures: RateBudget,
    address: str,
    origin: str | None,
    origin_allowed: bool,
    sessions_full: Callable[[], bool],
) -> Deferred[Any]:
    """A Deferred firing with the token (``IToken``) that ``payload`` (a SessionHandshake)
    grants, or with a :class:`Refusal`.

    Raises :class:`tcpsocket.bincode.DecodeError` at once for a malformed handshake.
    Failed guesses are counted per client ``address`` in ``failures``;
    ``sessions_full`` is asked once the token is known to be good.
    """
    value = decode_handshake(payload)
    if not failures.allows(address):
        # No token is checked from an address out of budget: guessing is slowed down.
        return succeed(Refusal(POLICY_VIOLATION, "too many failed handshakes, try again later"))

    def decide(token: Any) -> Any:
        if token is None:
            failures.spend(address)
            config.metrics.handshake_failed("invalid-token")
            return Refusal(POLICY_VIOLATION, "invalid token")
        if not token.origins and not origin_allowed:
            # Let in for a token pinned to this origin, but this token is not.
            failures.spend(address)
            return Refusal(POLICY_VIOLATION, "origin mismatch for this token")
        if sessions_full():
            config.metrics.session_refused("capacity")
            return Refusal(TRY_AGAIN_LATER, "too many sessions")
        return token

    def undecided(failure: Failure) -> Refusal:
        # Not the client's fault: its failed-handshake budget is not spent.
        if failure.check(CancelledError):
            # Given up: the client left, or the daemon is stopping (nobody is answered).
            return Refusal(TRY_AGAIN_LATER, "the token check was given up")
        failure.trap(TokenStoreError)
        config.metrics.handshake_failed("token-store")
        reason = "the token cannot be checked now, try again later"
        return Refusal(TRY_AGAIN_LATER, reason, str(failure.value))

    checked: Deferred[Any] = maybeDeferred(config.tokens.authenticate, value, origin)
    return checked.addCallbacks(decide, undecided)
