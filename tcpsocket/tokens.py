"""Session tokens: what each grants, and where they come from."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket.interfaces import IToken, ITokenStore, TokenStoreError
from tcpsocket.offload import BlockingCalls, CallTimedOut
from tcpsocket.policy import Rule
from tcpsocket.services.tcpsocket.messages import PERMISSION

if TYPE_CHECKING:
    from tcpsocket.jwt_tokens import JwtVerifier

log = Logger()

#: The identity of the token taken from ``WS_RUNTIME_TOKEN``.
DESKTOP_IDENTITY = "desktop"
#: Shortest token accepted: 16 characters (from ``secrets.token_urlsafe(12)`` up).
MIN_TOKEN_LENGTH = 16
#: Seconds a check-and-append on the used-tokens file may take, waiting for its lock included.
USED_FILE_TIMEOUT = 2.0
#: How to make a good token, for error messages.
TOKEN_ADVICE = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


@implementer(IToken)
@dataclass(frozen=True)
class Token:
    """A token value and what it grants."""

    value: str
    identity: str = DESKTOP_IDENTITY
    permissions: frozenset[str] = field(default_factory=lambda: frozenset({PERMISSION}))
    single_use: bool = False
    #: If not empty, the only web origins (``https://app.example``) it is valid from.
    origins: frozenset[str] = frozenset()
    #: Destination rules of this token's sessions, tried before the global ones.
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "origins", frozenset(o.lower() for o in self.origins))


def _digest(value: str) -> bytes:
    # Look tokens up by digest so that the lookup time says nothing about
    # how much of a guessed token is right.
    return hashlib.sha256(value.encode("utf-8")).digest()


@implementer(ITokenStore)
class TokenStore:
    """An in-memory set of tokens, and the record of the single-use tokens consumed.

    A single-use token stays in the set once used; its digest goes into the
    consumption record, which outlives any change of the set of tokens.  With
    ``used_tokens_file``, the record is also kept in that file (one hex
    SHA-256 digest per line, appended and synced before the session is
    accepted), so a used token stays used across restarts.  Several processes
    may share the file: each check-and-append holds an exclusive ``flock``.
    That check-and-append runs on a thread of the store's own (it waits for
    the lock and for the disk), within ``used_tokens_timeout`` seconds, or
    the token is refused (and stays unused); :meth:`stop` stops that thread.

    With ``jwt``, a value that is not one of the tokens but has a JWT's shape
    is verified by it.
    """

    def __init__(
        self,
        tokens: Iterable[Token] = (),
        used_tokens_file: str | Path | None = None,
        jwt: JwtVerifier | None = None,
        used_tokens_timeout: float = USED_FILE_TIMEOUT,
    ) -> None:
        self._tokens: dict[bytes, Token] = {}
        #: Verifies signed tokens (:mod:`tcpsocket.jwt_tokens`), if any.
        self.jwt = jwt
        self._used: set[bytes] = set()
        self._used_file = None if used_tokens_file is None else Path(used_tokens_file)
        if self._used_file is not None:
            self._used = _read_used(self._used_file)
        #: One thread: the appends queue there rather than on the file's lock.
        self._file_calls = BlockingCalls("tcpsocket-used-tokens", 1, used_tokens_timeout)
        for token in tokens:
            self.add(token)

    def __len__(self) -> int:
        """How many static tokens (plus one for a JWT verifier) are accepted."""
        return len(self._tokens) + (self.jwt is not None)

    def __iter__(self) -> Iterator[Token]:
        return iter(list(self._tokens.values()))

    def replace(self, tokens: Iterable[Token]) -> None:
        """Accept exactly ``tokens`` from now on (a reload), in one step.

        Each is checked as :meth:`add` checks it; the record of used single-use
        tokens is kept, so a used one stays used even if listed again.
        """
        fresh = TokenStore(tokens)
        self._tokens = fresh._tokens
        if isinstance(tokens, TokenStore):
            if tokens.jwt is not None and self.jwt is not None:
                tokens.jwt.inherit(self.jwt)
            elif self.jwt is not None:
                self.jwt.stop()
            self.jwt = tokens.jwt

    def add(self, token: Token) -> None:
        """Accept ``token`` from now on (unless it is a single-use token already used)."""
        if len(token.value) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"token of {token.identity!r} is too short: {len(token.value)} characters, "
                f"at least {MIN_TOKEN_LENGTH} are needed; {TOKEN_ADVICE}"
            )
        self._tokens[_digest(token.value)] = token

    def stop(self) -> None:
        """Stop the threads of this store and of its JWT verifier (the daemon stopping)."""
        self._file_calls.stop()
        if self.jwt is not None:
            self.jwt.stop()

    def origins(self) -> frozenset[str]:
        """Every web origin some token is pinned to."""
        return frozenset(origin for token in self._tokens.values() for origin in token.origins)

    def authenticate(self, value: str, origin: str | None = None) -> Deferred[Token | None]:
        """The grant of ``value`` (a Deferred), or None; a single-use token is consumed.

        Fails with :class:`~tcpsocket.interfaces.TokenStoreError` if a
        single-use token cannot be recorded in the used-tokens file.
        """
        key = _digest(value)
        token = self._tokens.get(key)
        if token is None and self.jwt is not None:
            from tcpsocket.jwt_tokens import looks_like_jwt

            return self.jwt.verify(value, origin) if looks_like_jwt(value) else succeed(None)
        if token is None or (token.origins and (origin or "").lower() not in token.origins):
            return succeed(None)
        if not token.single_use:
            return succeed(token)
        if key in self._used:
            return succeed(None)
        if self._used_file is None:
            self._used.add(key)
            return succeed(token)
        return self._record(token, key, self._used_file)

    def _record(self, token: Token, key: bytes, path: Path) -> Deferred[Token | None]:
        """Append ``key`` to the used-tokens file off the reactor thread, then decide."""
        # Two handshakes with one token may both get here: the file's lock
        # orders their appends, and the second finds the first's line.  The
        # thread stops waiting for the lock a little before the handshake stops
        # waiting for it: a refused token is then not recorded after all.
        deadline = time.monotonic() + 0.9 * self._file_calls.timeout

        def recorded(fresh: bool) -> Token | None:
            self._used.add(key)  # by this process, or another one (fresh is False)
            return token if fresh else None

        def failed(failure: Failure) -> NoReturn:
            failure.trap(OSError, CallTimedOut)
            raise TokenStoreError(
                f"single-use token of {token.identity} refused: cannot record it in {path}: "
                f"{failure.value}"
            )

        appended = self._file_calls.call(_append_used, path, key, deadline)
        return appended.addCallbacks(recorded, failed)


def _read_used(path: Path) -> set[bytes]:
    try:
        lines = path.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read used-tokens file {path}: {e}") from None
    try:
        return {bytes.fromhex(line) for line in lines}
    except ValueError:
        raise ValueError(f"used-tokens file {path} holds a line that is not a hex digest") from None


def _append_used(path: Path, key: bytes, deadline: float) -> bool:
    """Record ``key``; False if the file already holds it (another process used it).

    Blocking: run on a thread.  Raises ``TimeoutError`` if the lock is not had
    by ``deadline`` (a ``time.monotonic()`` value).
    """
    # Written and synced before the token is accepted: if this raises, the
    # session is refused rather than the token left reusable after a restart.
    # The exclusive lock makes check-and-append one step for every process.
    with path.open("a+", encoding="ascii") as file:
        _lock(file.fileno(), deadline)
        try:
            file.seek(0)
            if key.hex() in file.read().split():
                return False
            file.write(key.hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    return True


def _lock(fd: int, deadline: float) -> None:
    """Take an exclusive ``flock`` on ``fd`` by ``deadline``, or raise ``TimeoutError``.

    Polled, so that a lock another process keeps (stopped, or hung on its
    disk) cannot hold a thread past the deadline.
    """
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError("another process holds the file's lock") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def token_from_json(entry: Mapping[str, Any]) -> Token:
    """Build a token from one entry of a tokens file."""
    unknown = set(entry) - {"token", "identity", "permissions", "single_use", "origins", "rules"}
    if unknown:
        raise ValueError(f"unknown token fields: {', '.join(sorted(unknown))}")
    value = entry.get("token")
    if not isinstance(value, str) or not value:
        raise ValueError("each token needs a non-empty string 'token'")
    identity = entry.get("identity", DESKTOP_IDENTITY)
    permissions = entry.get("permissions", [PERMISSION])
    single_use = entry.get("single_use", False)
    origins = entry.get("origins", [])
    if not isinstance(identity, str):
        raise ValueError("'identity' must be a string")
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise ValueError("'permissions' must be a list of strings")
    if not isinstance(single_use, bool):
        raise ValueError("'single_use' must be true or false")
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ValueError("'origins' must be a list of strings")
    rules = entry.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise ValueError("'rules' must be a list of strings such as 'allow localhost:143'")
    parsed = tuple(Rule.parse(rule) for rule in rules)
    return Token(value, identity, frozenset(permissions), single_use, frozenset(origins), parsed)


def load_tokens_file(path: str | Path) -> list[Token]:
    """Read a JSON tokens file: a list of ``{"token", "identity", "permissions", ...}``."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read tokens file {path}: {e}") from None
    if not isinstance(entries, list):
        raise ValueError(f"tokens file {path} must hold a JSON list")
    tokens: list[Token] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        try:
            token = token_from_json(entry)
        except (ValueError, TypeError) as e:
            raise ValueError(f"tokens file {path}, entry {number}: {e}") from None
        if token.value in seen:
            raise ValueError(
                f"tokens file {path}: entry {number} repeats the token of entry {seen[token.value]}"
            )
        seen[token.value] = number
        tokens.append(token)
    return tokens
