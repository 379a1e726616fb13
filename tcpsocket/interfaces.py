"""Interfaces an embedding application may provide or replace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class IToken(Interface):
    """What a session token grants."""

    identity = Attribute("str: who the session acts for (an origin or user name)")
    permissions = Attribute("frozenset[str]: the permissions it grants, e.g. 'tcp-socket'")
    origins = Attribute(
        "frozenset[str]: the only web origins it is valid from; empty: the daemon-wide rule"
    )


class TokenStoreError(Exception):
    """A token store cannot decide now (say, its record of used tokens is unreachable).

    The client is refused with 1013 (try again later); the message is logged, not sent.
    """


class ITokenStore(Interface):
    """Checks session tokens (protocol.md B.1)."""

    def authenticate(value: str, origin: str | None = None) -> Deferred[Any]:
        """
        A Deferred firing with the token's grant (an :class:`IToken`), or None
        if it is not valid (for ``origin``).

        ``origin`` is the WebSocket's ``Origin`` header, if the client sent
        one.  A single-use token is consumed by a successful call.  A store
        that must wait (for a shared record of used tokens) does so without
        blocking the reactor; the session handshake waits for the Deferred,
        other sessions go on.  It fails with :class:`TokenStoreError` when the
        store cannot decide.  (A store may also return the grant or None
        directly: the handshake takes either.)
        """

    def origins() -> frozenset[str]:
        """
        Every web origin some token is pinned to.

        The WebSocket upgrade admits these origins as well as the daemon's
        own and ``ServerConfig.allowed_origins``; the token then decides.
        """


class IOpenPolicy(Interface):
    """Decides which remotes a session may open (protocol.md B.4)."""

    def check(identity: str, host: str, port: int) -> str | None:
        """Return None to allow the connection, or the reason it is denied."""


class IAddressPolicy(IOpenPolicy):
    """An open policy that also judges each address a remote resolves to.

    A policy that provides only :class:`IOpenPolicy` gets the default
    denial (loopback, private, link-local...) applied to the addresses.
    """

    def check_address(identity: str, host: str, address: str, port: int) -> str | None:
        """
        Return None to allow connecting to ``address`` (canonical, one that
        ``host`` resolved to, or ``host`` itself if it is an address), or the
        reason it is denied.
        """
