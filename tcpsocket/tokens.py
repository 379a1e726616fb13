"""Session tokens: what each grants, and where they come from."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zope.interface import implementer

from tcpsocket.interfaces import IToken, ITokenStore
from tcpsocket.messages import PERMISSION
from tcpsocket.policy import Rule

#: The identity of the token taken from ``WS_RUNTIME_TOKEN``.
DESKTOP_IDENTITY = "desktop"


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
    """An in-memory set of tokens; single-use tokens are removed when used."""

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self._tokens: dict[bytes, Token] = {}
        #: Digests of the single-use tokens already used: they never work again.
        self._consumed: set[bytes] = set()
        for token in tokens:
            self.add(token)

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[Token]:
        return iter(list(self._tokens.values()))

    def replace(self, tokens: Iterable[Token]) -> None:
        """Accept exactly ``tokens`` from now on (a reload), in one step.

        Single-use tokens already consumed stay consumed, even if listed again.
        """
        fresh: dict[bytes, Token] = {}
        for token in tokens:
            if not token.value:
                raise ValueError("a token must not be empty")
            key = _digest(token.value)
            if key not in self._consumed:
                fresh[key] = token
        self._tokens = fresh

    def add(self, token: Token) -> None:
        """Accept ``token`` from now on."""
        if not token.value:
            raise ValueError("a token must not be empty")
        self._tokens[_digest(token.value)] = token

    def authenticate(self, value: str, origin: str | None = None) -> Token | None:
        key = _digest(value)
        token = self._tokens.get(key)
        if token is None or (token.origins and (origin or "").lower() not in token.origins):
            return None
        if token.single_use:
            del self._tokens[key]
            self._consumed.add(key)
        return token


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
