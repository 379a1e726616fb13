"""``twistd tcpsocket``: command-line options and service maker."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.policy import AllowList, Rule
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


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
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
        f"Tokens come from ${TOKEN_VARIABLE}, --token and --tokens-file; at least one is needed. "
        "Web pages of other origins need --origin; other host names need --server-name "
        "(doc/security.md)."
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
            "Seconds from TCP accept to the session ack (WebSocket upgrade and token); also the "
            "deadline of each HTTP request's headers, and how long idle HTTP is kept.",
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
            "Bytes queued towards a client above which its remotes, and its own requests, "
            "stop being read.",
            _positive_int,
        ],
        [
            "used-tokens-file",
            None,
            None,
            "File recording the single-use tokens consumed (SHA-256 digests), so that they "
            "stay used across restarts; created if missing.",
        ],
        [
            "handshake-message-size",
            None,
            4096,
            "Largest WebSocket message before the token is accepted, in bytes.",
            _positive_int,
        ],
        [
            "max-pending",
            None,
            512,
            "Connections without a session (HTTP, or WebSocket before its token) allowed; "
            "over it, the oldest is dropped.",
            _positive_int,
        ],
        [
            "max-pending-per-address",
            None,
            128,
            "Connections without a session allowed per client address; over it, that "
            "address's oldest is dropped.",
            _positive_int,
        ],
        [
            "failed-handshakes-per-minute",
            None,
            30,
            "Failed session handshakes allowed per client address and minute.",
            _positive_int,
        ],
        [
            "pings-per-minute",
            None,
            60,
            "WebSocket pings a client may send per minute; more closes its connection (1008).",
            _positive_int,
        ],
        [
            "keepalive-interval",
            None,
            30.0,
            "Seconds between pings to a quiet client (0: no pings).",
            _non_negative_float,
        ],
        [
            "keepalive-timeout",
            None,
            20.0,
            "Seconds a client has to answer a ping before its connection is dropped.",
            _positive_float,
        ],
        [
            "idle-timeout",
            None,
            600.0,
            "Seconds a session with no socket open may stay silent before it is closed (0: never).",
            _non_negative_float,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["token"] = []
        self["allow"] = []
        self["origin"] = []
        self["server-name"] = []

    def opt_listen(self, description: str) -> None:
        """Strports to listen on, repeatable [default: tcp:8081:interface=127.0.0.1]."""
        self["listen"].append(description)

    def opt_token(self, value: str) -> None:
        """A session token granting tcp-socket (repeatable, 16+ chars; shows in `ps`)."""
        self["token"].append(value)

    def opt_origin(self, origin: str) -> None:
        """A web origin allowed to open sessions, e.g. 'https://app.example' (repeatable;
        '*': any). Pages the daemon serves itself and clients sending no Origin are always
        allowed."""
        self["origin"].append(origin)

    def opt_server_name(self, name: str) -> None:
        """A host name the daemon is reached by, besides localhost and its addresses
        (repeatable; '*': any). Other Host headers get 421 (DNS rebinding)."""
        self["server-name"].append(name)

    def opt_allow(self, rule: str) -> None:
        """Allow only matching remotes, HOST:PORTS, repeatable (e.g. '*.example.org:993,143',
        '10.0.0.0/8:*', '[::1]:6667'); without it every remote is allowed."""
        try:
            self["allow"].append(Rule.parse(rule))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def postOptions(self) -> None:
        environment = os.environ.get(TOKEN_VARIABLE)
        try:
            tokens = TokenStore(used_tokens_file=self["used-tokens-file"])
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
                    "handshake-message-size",
                    "max-pending",
                    "max-pending-per-address",
                    "failed-handshakes-per-minute",
                    "pings-per-minute",
                    "keepalive-interval",
                    "keepalive-timeout",
                    "idle-timeout",
                )
            }
            config_values["allowed_origins"] = frozenset(self["origin"])
            config_values["server_names"] = frozenset(self["server-name"])
            if self["allow"]:
                config_values["policy"] = AllowList(self["allow"])
            if not len(tokens):
                raise usage.UsageError(_NO_TOKEN)
            self["config"] = ServerConfig(tokens=tokens, **config_values)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]


def makeService(options: Options) -> IService:
    """Build the daemon's service from parsed options."""
    return TcpSocketService(options["config"], options["listen"])
