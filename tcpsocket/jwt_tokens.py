"""JSON Web Tokens: session tokens that any node can verify without shared state.

A JWT (RFC 7519) signed by the operator's key carries what a static token's
entry in a tokens file says, as claims:

``sub``
    the identity (required);
``exp``
    when it stops being accepted (required; ``nbf`` and ``iat`` are checked if present);
``permissions``
    a list, default ``["tcp-socket"]``;
``origins``
    the only web origins it is valid from (a list, default: the daemon-wide rule);
``rules``
    destination rules of its sessions, as in a tokens file (``"allow imap.example:993"``);
``single_use`` and ``jti``
    with ``"single_use": true`` (which needs a ``jti``) the token opens one session
    only: its ``jti`` is recorded in a :class:`IUsedRecord` until the token expires
    (:class:`RedisUsedRecord` waits for Redis on a thread, never on the reactor).

``aud`` and ``iss`` are checked when the daemon is configured with an
audience or an issuer (then they are required).  Verification is PyJWT's:
the algorithms are fixed by the key the daemon holds (HS256 for a secret, RS256
or ES256 for a public key), never taken from the token's header.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jwt
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from tcpsocket.interfaces import TokenStoreError
from tcpsocket.logtext import printable
from tcpsocket.offload import BlockingCalls, CallTimedOut
from tcpsocket.policy import Rule
from tcpsocket.services.tcpsocket.messages import PERMISSION
from tcpsocket.tokens import Token

__all__ = [
    "IUsedRecord",
    "JwtVerifier",
    "LocalUsedRecord",
    "RedisUsedRecord",
    "looks_like_jwt",
]

log = Logger()

#: Claims a token may carry; any other is refused, so that a typo does not widen access.
KNOWN_CLAIMS = frozenset(
    {
        "sub",
        "exp",
        "nbf",
        "iat",
        "aud",
        "iss",
        "jti",
        "permissions",
        "origins",
        "rules",
        "single_use",
    }
)
#: Subjects whose claimed destination rules are remembered at once; more are refused.
MAX_SUBJECTS_WITH_RULES = 100_000
#: Shortest HS256 secret accepted, in bytes (RFC 7518 3.2: at least the hash size).
MIN_SECRET_BYTES = 32


class IUsedRecord(Interface):
    """Where the ``jti`` of single-use tokens is recorded, shared by every node that checks them."""

    def claim(jti: str, expires: float) -> Deferred[bool]:
        """Record ``jti`` until ``expires`` (a UNIX time): a Deferred firing with True, or
        with False if it was already recorded.  Fails with
        :class:`~tcpsocket.interfaces.TokenStoreError` if it cannot be recorded (a
        single-use token is never accepted unrecorded).  A plain bool is taken too."""


@implementer(IUsedRecord)
class LocalUsedRecord:
    """The ``jti`` record of one process (one node, one worker): entries leave at expiry."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def claim(self, jti: str, expires: float) -> Deferred[bool]:
        now = self._clock()
        if len(self._expiry) > 1024:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
        if self._expiry.get(jti, 0.0) > now:
            return succeed(False)
        self._expiry[jti] = expires
        return succeed(True)


@implementer(IUsedRecord)
class RedisUsedRecord:
    """The ``jti`` record in Redis (``SET key 1 NX EXAT exp``), shared by every node.

    Each claim is one round trip to Redis, made on a thread of the record's own
    (at most ``threads`` at once), never on the reactor: the handshake that
    claims waits, other sessions go on.  Redis must answer within ``timeout``
    seconds, or the claim fails (:class:`~tcpsocket.interfaces.TokenStoreError`)
    and the token is refused; a ``SET NX`` that reached Redis all the same
    leaves the token used (never the reverse).  Two claims of one ``jti``, from
    any node, are ordered by Redis: one only gets True.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 0.5,
        prefix: str = "tcpsocket:jti:",
        threads: int = 4,
        reactor: Any = None,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = prefix
        # One try: a retried SET NX could find its own first try's key.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._calls = BlockingCalls("tcpsocket-redis", threads, timeout, reactor)

    def claim(self, jti: str, expires: float) -> Deferred[bool]:
        import redis

        key = self.prefix + hashlib.sha256(jti.encode("utf-8")).hexdigest()

        def failed(failure: Failure) -> NoReturn:
            failure.trap(redis.RedisError, CallTimedOut)
            raise TokenStoreError(f"the used-token store {self.url} failed: {failure.value}")

        claimed = self._calls.call(self._set, key, max(int(expires) + 1, 1))
        return claimed.addErrback(failed)

    def _set(self, key: str, expires: int) -> bool:
        """``SET key 1 NX EXAT expires``; blocking, on a thread."""
        return bool(self._client.set(key, b"1", nx=True, exat=expires))

    @property
    def in_flight(self) -> int:
        """Claims sent to Redis (or queued for a thread) and not answered yet."""
        return self._calls.in_flight

    def same_store(self, other: RedisUsedRecord) -> bool:
        """Whether ``other`` records in the same place, the same way."""
        return (self.url, self.prefix, self._calls.timeout, self._calls.threads) == (
            other.url,
            other.prefix,
            other._calls.timeout,
            other._calls.threads,
        )

    def stop(self) -> None:
        """Stop the record's threads (the daemon stopping); a later claim starts them again."""
        self._calls.stop()
        self._client.close()


def looks_like_jwt(value: str) -> bool:
    """Whether ``value`` has a JWS compact form's shape (three dot-separated parts)."""
    return value.count(".") == 2


def _key_algorithms(secret: bytes | None, public_key: bytes | None) -> list[tuple[Any, list[str]]]:
    keys: list[tuple[Any, list[str]]] = []
    if secret is not None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"JWT secret is too short: {len(secret)} bytes, at least {MIN_SECRET_BYTES} "
                "are needed; make one with: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'"
            )
        keys.append((secret, ["HS256"]))
    if public_key is not None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            loaded = load_pem_public_key(public_key)
        except ValueError as e:
            raise ValueError(f"JWT public key is not a PEM public key: {e}") from None
        if isinstance(loaded, rsa.RSAPublicKey):
            keys.append((loaded, ["RS256"]))
        elif isinstance(loaded, ec.EllipticCurvePublicKey):
            keys.append((loaded, ["ES256"]))
        else:
            raise ValueError("JWT public key must be an RSA or an EC (P-256) key")
    return keys


class JwtVerifier:
    """Turns a valid JWT into a :class:`~tcpsocket.tokens.Token`.

    ``claimed_rules`` receives the destination rules each subject's tokens
    claim (give it the policy's ``claimed`` mapping); a token whose rules differ
    from those already in use for its subject is refused.
    """

    def __init__(
        self,
        secret: bytes | None = None,
        public_key: bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        used: IUsedRecord | None = None,
        claimed_rules: MutableMapping[str, tuple[Rule, ...]] | None = None,
        clock: Any = time.time,
    ) -> None:
        self._keys = _key_algorithms(secret, public_key)
        if not self._keys:
            raise ValueError("a JWT verifier needs a secret or a public key")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.used: IUsedRecord = LocalUsedRecord(clock) if used is None else used
        self.claimed_rules: MutableMapping[str, tuple[Rule, ...]] = (
            {} if claimed_rules is None else claimed_rules
        )
        self._clock = clock

    @classmethod
    def from_files(
        cls,
        secret_file: str | Path | None,
        public_key_file: str | Path | None,
        **options: Any,
    ) -> JwtVerifier:
        """A verifier with the secret and/or public key read from files."""

        def read(path: str | Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes().strip()
            except OSError as e:
                raise ValueError(f"cannot read JWT {what} file {path}: {e}") from None

        return cls(read(secret_file, "secret"), read(public_key_file, "public key"), **options)

    def inherit(self, previous: JwtVerifier) -> None:
        """After a reload: keep ``previous``'s record of used single-use tokens.

        Its in-process record, or its Redis record (client and threads) if the
        store is unchanged; a Redis record given up is stopped.
        """
        old, new = previous.used, self.used
        if isinstance(new, LocalUsedRecord) and isinstance(old, LocalUsedRecord):
            self.used = old
        elif isinstance(new, RedisUsedRecord) and isinstance(old, RedisUsedRecord):
            if new.same_store(old):
                self.used = old
            else:
                old.stop()
        elif isinstance(old, RedisUsedRecord):
            old.stop()

    def stop(self) -> None:
        """Stop the threads of the record of used tokens, if it has any."""
        stop = getattr(self.used, "stop", None)
        if stop is not None:
            stop()

    def verify(self, value: str, origin: str | None = None) -> Deferred[Token | None]:
        """The token's grant (a Deferred), or None (the reason is logged at debug level).

        A single-use token waits for its record (:meth:`IUsedRecord.claim`),
        and fails as it does when that cannot be written.
        """
        claims = self._decode(value)
        if claims is None:
            return succeed(None)
        try:
            token = _token_from_claims(value, claims)
        except (ValueError, TypeError) as e:
            log.info("JWT refused: {why}", why=printable(str(e)))
            return succeed(None)
        if token.origins and (origin or "").lower() not in token.origins:
            return succeed(None)
        if not self._rules_agree(token):
            return succeed(None)
        if not token.single_use:
            return succeed(token)
        claimed = maybeDeferred(self.used.claim, str(claims["jti"]), float(claims["exp"]))
        return claimed.addCallback(lambda fresh: token if fresh else None)

    def _decode(self, value: str) -> dict[str, Any] | None:
        required = ["exp", "sub"]
        if self.audience is not None:
            required.append("aud")
        if self.issuer is not None:
            required.append("iss")
        for key, algorithms in self._keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    value,
                    key,
                    algorithms=algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": required, "verify_aud": self.audience is not None},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAlgorithmError:
                continue
            except jwt.PyJWTError as e:
                log.info("JWT refused: {why}", why=printable(str(e)))
                return None
            return claims
        return None

    def _rules_agree(self, token: Token) -> bool:
        known = self.claimed_rules.get(token.identity)
        if known is None:
            if len(self.claimed_rules) >= MAX_SUBJECTS_WITH_RULES:
                log.warn("JWT of {sub} refused: too many subjects", sub=printable(token.identity))
                return False
            self.claimed_rules[token.identity] = token.rules
            return True
        if known != token.rules:
            log.warn(
                "JWT of {sub} refused: its rules differ from those of the subject's earlier "
                "tokens (one subject, one set of rules)",
                sub=printable(token.identity),
            )
            return False
        return True


def _strings(claims: Mapping[str, Any], name: str, default: Sequence[str]) -> list[str]:
    value = claims.get(name, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"claim {name!r} must be a list of strings")
    return value


def _token_from_claims(value: str, claims: Mapping[str, Any]) -> Token:
    unknown = set(claims) - KNOWN_CLAIMS
    if unknown:
        raise ValueError(f"unknown claims: {', '.join(sorted(unknown))}")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise ValueError("claim 'sub' must be a non-empty string")
    single_use = claims.get("single_use", False)
    if not isinstance(single_use, bool):
        raise ValueError("claim 'single_use' must be true or false")
    if single_use and not (isinstance(claims.get("jti"), str) and claims["jti"]):
        raise ValueError("a single-use token needs a 'jti' claim")
    rules = tuple(Rule.parse(rule) for rule in _strings(claims, "rules", ()))
    return Token(
        value,
        identity=subject,
        permissions=frozenset(_strings(claims, "permissions", [PERMISSION])),
        single_use=single_use,
        origins=frozenset(_strings(claims, "origins", ())),
        rules=rules,
    )
