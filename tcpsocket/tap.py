"""``twistd tcpsocket``: command-line options and service maker."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from tcpsocket.budgets import raise_nofile_limit
from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.policy import DestinationPolicy, Rule
from tcpsocket.reload import HangupReload
from tcpsocket.site import TcpSocketService
from tcpsocket.tokens import Token, TokenStore, load_tokens_file

#: The environment variable holding the desktop token.
TOKEN_VARIABLE = "WS_RUNTIME_TOKEN"

_NO_TOKEN = (
    "no session token is set: start with WS_RUNTIME_TOKEN=<secret> in the environment, "
    "or --token <secret>, or --tokens-file <file.json>"
)


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


class Options(usage.Options):
    """Options of ``twistd tcpsocket``."""

    synopsis = "[options]"
    longdesc = (
        "Serve raw TCP client sockets to web and Python apps over a session WebSocket at "
        "/ws, with the JavaScript library under /api/v1/ and a demo page at /. "
        f"Tokens come from ${TOKEN_VARIABLE}, --token and --tokens-file; at least one is needed."
    )

    optParameters = [
        [
            "tokens-file",
            None,
            None,
            'JSON list of tokens: [{"token": "...", "identity": "app", '
            '"permissions": ["tcp-socket"], "single_use": false, '
            '"rules": ["allow localhost:143"]}, ...].',
        ],
        ["connect-timeout", None, 10.0, "Seconds an open() may take to connect.", _positive_float],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a client has for the WebSocket and session handshakes "
            "(and an idle HTTP connection is kept).",
            _positive_float,
        ],
        [
            "close-timeout",
            None,
            30.0,
            "Seconds a closing socket may take to flush before it is aborted.",
            _positive_float,
        ],
        ["max-sockets-per-session", None, 1024, "Open sockets allowed per session.", _positive_int],
        [
            "max-sessions",
            None,
            1024,
            "Concurrent sessions allowed (lowered to fit the open files limit).",
            _positive_int,
        ],
        [
            "max-message-size",
            None,
            16 * 1024 * 1024 + 64,
            "Largest WebSocket message accepted, in bytes.",
            _positive_int,
        ],
        [
            "high-water-mark",
            None,
            64 * 1024,
            "Unsent bytes per socket above which send() answers false.",
            _positive_int,
        ],
        [
            "max-send-buffer",
            None,
            16 * 1024 * 1024,
            "Unsent bytes per socket above which send() fails.",
            _positive_int,
        ],
        [
            "session-buffer",
            None,
            256 * 1024,
            "Bytes queued towards a client above which its remotes stop being read.",
            _positive_int,
        ],
        [
            "max-sockets",
            None,
            16384,
            "Sockets of all sessions together (lowered to fit the open files limit).",
            _positive_int,
        ],
        [
            "max-session-send-buffer",
            None,
            64 * 1024 * 1024,
            "Unsent bytes of all sockets of one session above which send() fails.",
            _positive_int,
        ],
        [
            "max-total-send-buffer",
            None,
            512 * 1024 * 1024,
            "Unsent bytes of all sockets of all sessions above which send() fails.",
            _positive_int,
        ],
        ["max-services-per-session", None, 64, "Services (GetService) per session.", _positive_int],
        [
            "max-lookups-per-session",
            None,
            4,
            "Name lookups in progress at once per session.",
            _positive_int,
        ],
        ["max-lookups", None, 32, "Name lookups in progress at once in all.", _positive_int],
    ]

    def __init__(self) -> None:
        super().__init__()
        #: The arguments parsed, so that a reload (SIGHUP) can parse them again.
        self.arguments: list[str] = []
        self["listen"] = []
        self["token"] = []
        self["allow"] = []

    def opt_listen(self, description: str) -> None:
        """Strports to listen on, repeatable [default: tcp:8081:interface=127.0.0.1]."""
        self["listen"].append(description)

    def opt_token(self, value: str) -> None:
        """A session token granting tcp-socket (repeatable)."""
        self["token"].append(value)

    def opt_allow(self, rule: str) -> None:
        self._rule(rule, allow=True)

    opt_allow.__doc__ = (
        "Allow remotes matching HOST:PORTS, repeatable, e.g. '*.example.org:993,143', "
        "'10.0.0.0/8:*', '127.0.0.1:*', 'localhost:143'. Rules are tried in order, first match "
        "wins; with an allow rule, only allowed remotes may be opened. Loopback, private, "
        "link-local and other non-global addresses are denied unless an address rule or an "
        "exact name allows them (doc/destinations.md)."
    )

    def opt_deny(self, rule: str) -> None:
        """Deny remotes matching HOST:PORTS, repeatable, e.g. '*:25' (in order with --allow)."""
        self._rule(rule, allow=False)

    def _rule(self, text: str, allow: bool) -> None:
        try:
            self["allow"].append(Rule.parse(text, allow=allow))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        tokens = TokenStore()
        environment = os.environ.get(TOKEN_VARIABLE)
        try:
            if environment:
                tokens.add(Token(environment))
            for value in self["token"]:
                tokens.add(Token(value, identity="command-line"))
            per_identity: dict[str, tuple[Rule, ...]] = {}
            if self["tokens-file"]:
                for token in load_tokens_file(self["tokens-file"]):
                    tokens.add(token)
                    if per_identity.setdefault(token.identity, token.rules) != token.rules:
                        raise ValueError(
                            f"tokens of identity {token.identity!r} have different rules"
                        )
            config_values: dict[str, Any] = {
                name.replace("-", "_"): self[name]
                for name in (
                    "connect-timeout",
                    "handshake-timeout",
                    "close-timeout",
                    "max-sockets-per-session",
                    "max-sessions",
                    "max-message-size",
                    "high-water-mark",
                    "max-send-buffer",
                    "session-buffer",
                    "max-sockets",
                    "max-session-send-buffer",
                    "max-total-send-buffer",
                    "max-services-per-session",
                    "max-lookups-per-session",
                    "max-lookups",
                )
            }
            config_values["policy"] = DestinationPolicy(
                self["allow"], {k: v for k, v in per_identity.items() if v}
            )
            if not len(tokens):
                raise usage.UsageError(_NO_TOKEN)
            self["config"] = ServerConfig(tokens=tokens, **config_values)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]


def reparse(options: Options) -> ServerConfig:
    """The configuration that ``options``' arguments give now (files read again)."""
    fresh = Options()
    fresh.parseOptions(options.arguments)
    config: ServerConfig = fresh["config"]
    return config


def makeService(options: Options) -> IService:
    """Build the daemon's service from parsed options (raising the open files limit first);
    SIGHUP reloads it."""
    raise_nofile_limit()
    service = TcpSocketService(options["config"], options["listen"])
    HangupReload(partial(reparse, options), service.reconfigure).setServiceParent(service)
    return service
