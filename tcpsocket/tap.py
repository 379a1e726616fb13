"""``twistd tcpsocket``: command-line options and service maker."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.policy import AllowList, Rule
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
            '"permissions": ["tcp-socket"], "single_use": false}, ...].',
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
        ["max-sockets-per-session", None, 256, "Open sockets allowed per session.", _positive_int],
        ["max-sessions", None, 1024, "Concurrent sessions allowed.", _positive_int],
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
        """Allow only matching remotes, HOST:PORTS, repeatable (e.g. '*.example.org:993,143',
        '10.0.0.0/8:*', '[::1]:6667'); without it every remote is allowed."""
        try:
            self["allow"].append(Rule.parse(rule))
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
            if self["tokens-file"]:
                for token in load_tokens_file(self["tokens-file"]):
                    tokens.add(token)
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
                )
            }
            if self["allow"]:
                config_values["policy"] = AllowList(self["allow"])
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
    """Build the daemon's service from parsed options; SIGHUP reloads it."""
    service = TcpSocketService(options["config"], options["listen"])
    HangupReload(partial(reparse, options), service.reconfigure).setServiceParent(service)
    return service
