"""The session handshake, without a transport: which token a first message grants, or why not.

:class:`tcpsocket.session.SessionProtocol` (the Autobahn adapter) feeds it the
first binary message with what it knows of the connection, and answers the
client (ack, close code) from the :class:`Refusal` or token it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tcpsocket.admission import RateBudget
from tcpsocket.config import ServerConfig
from tcpsocket.messages import decode_handshake

__all__ = ["POLICY_VIOLATION", "TRY_AGAIN_LATER", "Refusal", "authenticate"]

#: WebSocket close codes (RFC 6455) a refused handshake ends with.
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class Refusal:
    """A refused handshake: the close code and the reason."""

    code: int
    reason: str


def authenticate(
    payload: bytes,
    *,
    config: ServerConfig,
    failures: RateBudget,
    address: str,
    origin: str | None,
    origin_allowed: bool,
    sessions_full: bool,
) -> Any:
    """The token (``IToken``) that ``payload`` (a SessionHandshake) grants, or a :class:`Refusal`.

    Raises :class:`tcpsocket.bincode.DecodeError` for a malformed handshake.
    Failed guesses are counted per client ``address`` in ``failures``.
    """
    value = decode_handshake(payload)
    if not failures.allows(address):
        # No token is checked from an address out of budget: guessing is slowed down.
        return Refusal(POLICY_VIOLATION, "too many failed handshakes, try again later")
    token = config.tokens.authenticate(value, origin)
    if token is None:
        failures.spend(address)
        config.metrics.handshake_failed("invalid-token")
        return Refusal(POLICY_VIOLATION, "invalid token")
    if not token.origins and not origin_allowed:
        # Let in for a token pinned to this origin, but this token is not.
        failures.spend(address)
        return Refusal(POLICY_VIOLATION, "origin mismatch for this token")
    if sessions_full:
        config.metrics.session_refused("capacity")
        return Refusal(TRY_AGAIN_LATER, "too many sessions")
    return token
