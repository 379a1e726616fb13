"""``twistd tcpsocket``: command-line options and service maker."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from tcpsocket import jsonlog
from tcpsocket._private import dispatch_without_log_context
from tcpsocket._version import __version__
from tcpsocket.budgets import raise_nofile_limit
from tcpsocket.config import DEFAULT_LISTEN, ServerConfig
from tcpsocket.configfile import apply_config_file, command_line_settings, name_coercions
from tcpsocket.jwt_tokens import JwtVerifier, RedisUsedRecord
from tcpsocket.memory import set_top_pad
from tcpsocket.observability import Access
from tcpsocket.policy import DestinationPolicy, Rule
from tcpsocket.reload import HangupReload
from tcpsocket.site import TcpSocketService
from tcpsocket.tokens import Token, TokenStore, load_tokens_file
from tcpsocket.workers import (
    AggregateMetricsResource,
    WorkerControl,
    WorkerPool,
    divide_budgets,
    tcp_listen_address,
)

log = Logger()

#: The environment variable holding the desktop token.
TOKEN_VARIABLE = "WS_RUNTIME_TOKEN"

_NO_TOKEN = (
    "no session token is set: start with WS_RUNTIME_TOKEN=<secret> in the environment, "
    "or --token <secret>, or --tokens-file <file.json>, or --jwt-secret-file / "
    "--jwt-public-key-file"
)


_N = TypeVar("_N", int, float)

#: twistd's default pid file, which ``-n`` drops (see :meth:`Options.postOptions`).
_TWISTD_DEFAULT_PIDFILE = "twistd.pid"


def _checked(
    parse: Callable[[str], _N], what: str, allowed: Callable[[_N], bool], rule: str
) -> Callable[[str], _N]:
    """An option's coercion: ``parse`` the value (or it "is not ``what``"), then ``allowed``
    (or the error is ``rule``)."""

    def coerce(value: str) -> _N:
        try:
            number = parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not {what}") from None
        if not allowed(number):
            raise ValueError(rule)
        return number

    return coerce


_INFINITY = float("inf")
_positive_float = _checked(float, "a number", lambda n: 0 < n < _INFINITY, "must be positive")
_non_negative_float = _checked(
    float, "a number", lambda n: 0 <= n < _INFINITY, "must not be negative"
)
_positive_int = _checked(int, "a whole number", lambda n: n >= 1, "must be at least 1")
_non_negative_int = _checked(int, "a whole number", lambda n: n >= 0, "must not be negative")


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

    optFlags = [
        ["json-logs", None, "Log one JSON object per line (fields in doc/operators.md)."],
        [
            "log-context",
            None,
            "Keep Twisted's per-event log context: legacy twisted.python.log lines emitted "
            "while a connection is handled name it as their system. Costs ~16 % more instructions "
            "per message; the daemon's own log lines do not use it.",
        ],
    ]

    optParameters = [
        [
            "tls-ca-file",
            None,
            None,
            "PEM file of certificate authorities that secure sockets (SecureTcpSocketManager) "
            "trust besides the system's trust store; certificates are always verified.",
        ],
        [
            "config",
            None,
            None,
            "TOML file of options: long names as keys (max-sessions = 2), lists for "
            "repeatable options (listen = [...]); the command line overrides it.",
        ],
        [
            "metrics-listen",
            None,
            None,
            "Serve /metrics and /healthz only on this strport, to any client that reaches it "
            "[default: on the daemon's listeners, to loopback clients only].",
        ],
        [
            "metrics-token",
            None,
            None,
            "Serve /metrics and /healthz to any client sending 'Authorization: Bearer <token>'.",
        ],
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
            "Bytes queued towards a client above which its remotes, and its own requests, "
            "stop being read.",
            _positive_int,
        ],
        [
            "read-size",
            None,
            1024 * 1024,
            "Bytes read from a remote at once for the one bulk transfer of a session; "
            "otherwise (held DATA, small exchanges, concurrent transfers) no more than "
            "the high-water mark.",
            _positive_int,
        ],
        [
            "malloc-top-pad",
            None,
            0,
            "Bytes of heap glibc keeps at the top when it grows or trims it (M_TOP_PAD; "
            "0: glibc's default). Setting it also stops glibc's adaptive mmap threshold; "
            "it measured no faster (doc/performance.md).",
            _non_negative_int,
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
        [
            "used-tokens-file",
            None,
            None,
            "File recording the single-use tokens consumed (SHA-256 digests), so that they "
            "stay used across restarts; created if missing.",
        ],
        [
            "workers",
            None,
            1,
            "Worker processes sharing the listeners (tcp: strports); the parent hands each "
            "connection to the least-loaded one and divides the global budgets among them.",
            _positive_int,
        ],
        [
            "worker-share",
            None,
            0,
            "(internal) Run as one of this many workers, on the control socket from the parent.",
            int,
        ],
        [
            "jwt-secret-file",
            None,
            None,
            "File holding the HS256 secret (32+ bytes) of signed session tokens (JWT; "
            "doc/security.md).",
        ],
        [
            "jwt-public-key-file",
            None,
            None,
            "PEM file of the RSA (RS256) or EC P-256 (ES256) public key of signed session tokens.",
        ],
        ["jwt-audience", None, None, "Signed tokens must carry this 'aud' claim."],
        ["jwt-issuer", None, None, "Signed tokens must carry this 'iss' claim."],
        [
            "jwt-leeway",
            None,
            30.0,
            "Seconds of clock skew allowed when checking 'exp', 'nbf' and 'iat'.",
            _non_negative_float,
        ],
        [
            "jwt-used-store",
            None,
            None,
            "redis://HOST:PORT/DB recording the 'jti' of single-use signed tokens for every "
            "node [default: this process's memory].",
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
        #: The arguments parsed, so that a reload (SIGHUP) can parse them again.
        self.arguments: list[str] = []
        self["listen"] = []
        self["token"] = []
        self["allow"] = []
        self["origin"] = []
        self["server-name"] = []
        self["tls-no-verify"] = []
        name_coercions(self)

    def opt_version(self) -> None:
        """Print the version of tcpsocket (and of Twisted) and exit."""
        from twisted.copyright import version

        print(f"tcpsocket {__version__} (Twisted {version})")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse ``--config FILE``, then the command line, which overrides it.

        Under ``twistd`` (with a parent), a usage error is one line on stderr and exit code 1,
        not twistd's whole usage text.  The arguments are kept for a reload (SIGHUP).
        """
        argv = sys.argv[1:] if options is None else list(options)
        self.arguments = list(argv)
        try:
            given = command_line_settings(self, argv)
            for path in given.get("config", []):
                apply_config_file(self, path, skip=set(given))
            super().parseOptions(argv)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            sys.exit(f"twistd tcpsocket: {e} (see twistd tcpsocket --help)")

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

    def opt_tls_no_verify(self, name: str) -> None:
        """A destination host (as clients open it) whose certificate secure sockets accept
        unverified, e.g. a device with a self-signed certificate (repeatable; the operator's
        per-destination exception, which no client can make or borrow through serverName).
        Prefer --tls-ca-file."""
        self["tls-no-verify"].append(name)

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

    def postOptions(self) -> None:
        environment = os.environ.get(TOKEN_VARIABLE)
        try:
            policy = DestinationPolicy()
            tokens = TokenStore(
                used_tokens_file=self["used-tokens-file"], jwt=self._jwt_verifier(policy)
            )
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
                    "read-size",
                    "handshake-message-size",
                    "max-pending",
                    "max-pending-per-address",
                    "failed-handshakes-per-minute",
                    "pings-per-minute",
                    "keepalive-interval",
                    "keepalive-timeout",
                    "idle-timeout",
                    "max-sockets",
                    "max-session-send-buffer",
                    "max-total-send-buffer",
                    "max-services-per-session",
                    "max-lookups-per-session",
                    "max-lookups",
                )
            }
            config_values["allowed_origins"] = frozenset(self["origin"])
            config_values["server_names"] = frozenset(self["server-name"])
            config_values["tls_no_verify"] = frozenset(self["tls-no-verify"])
            if self["tls-ca-file"]:
                config_values["tls_ca_file"] = _readable_ca_file(self["tls-ca-file"])
            config_values["policy"] = DestinationPolicy(
                self["allow"], {k: v for k, v in per_identity.items() if v}
            )
            config_values["policy"].claimed = policy.claimed
            if not len(tokens):
                raise usage.UsageError(_NO_TOKEN)
            # The --config file was read before parsing; "config" now holds the result.
            self["config"] = ServerConfig(tokens=tokens, **config_values)
        except ValueError as e:
            raise usage.UsageError(self._option_names(str(e))) from None
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for option in ("listen", "metrics-listen"):
            values = self[option] if option == "listen" else [self[option]]
            for description in filter(None, values):
                _check_strport(option, description)
        if self["workers"] > 1:
            for description in self["listen"]:
                try:
                    tcp_listen_address(description)
                except ValueError as e:
                    raise usage.UsageError(str(e)) from None
        if self.parent is not None:
            self._adjust_twistd(self.parent)

    def _jwt_verifier(self, policy: DestinationPolicy) -> JwtVerifier | None:
        """The verifier of signed tokens, if a key is given; their rules go to ``policy``."""
        if not (self["jwt-secret-file"] or self["jwt-public-key-file"]):
            return None
        store = self["jwt-used-store"]
        return JwtVerifier.from_files(
            self["jwt-secret-file"],
            self["jwt-public-key-file"],
            audience=self["jwt-audience"],
            issuer=self["jwt-issuer"],
            leeway=self["jwt-leeway"],
            used=RedisUsedRecord(store) if store else None,
            claimed_rules=policy.claimed,
        )

    def _option_names(self, message: str) -> str:
        """``message`` naming options as ``--high-water-mark``, not ``high_water_mark``."""
        for name in self.longOpt:
            name = name.rstrip("=")
            message = re.sub(rf"\b{name.replace('-', '_')}\b", f"--{name}", message)
        return message

    def _adjust_twistd(self, twistd: usage.Options) -> None:
        """twistd's own options: no pid file in the foreground, and the JSON logger."""
        if twistd.get("nodaemon") and twistd.get("pidfile") == _TWISTD_DEFAULT_PIDFILE:
            twistd["pidfile"] = ""
        if self["json-logs"]:
            jsonlog.use_twistd_output(twistd.get("logfile"), bool(twistd.get("nodaemon")))
            twistd["logger"] = jsonlog.TWISTD_OBSERVER


def _check_strport(option: str, description: str) -> None:
    """Raise a one-line ``UsageError`` if ``description`` is not a usable server strport."""
    try:
        # Parsing builds the endpoint without touching the reactor.
        serverFromString(None, description)
    except ImportError as e:
        raise usage.UsageError(
            f"--{option} {description!r}: TLS needs the tls extra "
            f"(pip install 'tcpsocket[tls]'): {e}"
        ) from None
    except (IndexError, KeyError):
        if not description.startswith("systemd:"):
            raise usage.UsageError(f"--{option} {description!r}: invalid description") from None
        raise usage.UsageError(
            f"--{option} {description!r}: no such socket was passed (systemd socket activation "
            "passes them in LISTEN_FDS and LISTEN_FDNAMES)"
        ) from None
    except Exception as e:
        raise usage.UsageError(f"--{option} {description!r}: {e or type(e).__name__}") from None


class _DaemonService(TcpSocketService):
    """The daemon under twistd: a port it cannot listen on ends it with one line.

    In the foreground that line goes to stderr. A daemonizing twistd reports only exceptions
    to the process that started it (and waits forever after a plain exit), so there the line
    is an exception's message, which twistd prints as "An error has occurred: ...".
    """

    foreground = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._cannot_listen(e)

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListenError as e:
            self._cannot_listen(e)

    def _cannot_listen(self, error: CannotListenError) -> None:
        message = f"twistd tcpsocket: {error}"
        if self.foreground:
            sys.exit(message)
        raise RuntimeError(message) from None


def reparse(options: Options) -> ServerConfig:
    """The configuration that ``options``' arguments give now (files read again)."""
    fresh = Options()
    fresh.parseOptions(options.arguments)
    config: ServerConfig = fresh["config"]
    if fresh["worker-share"]:
        config = divide_budgets(config, fresh["worker-share"])
    return config


def _worker_argv(options: Options) -> list[str]:
    """How the parent of ``--workers N`` starts each worker (the same options, one worker)."""
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    return [*twistd, "--nodaemon", "--pidfile=", "tcpsocket", *options.arguments, "--workers=1"]


def _make_pool(options: Options) -> IService:
    """The parent of ``--workers N``: it accepts and supervises; the workers serve."""
    pool = WorkerPool(options["workers"], options["listen"], _worker_argv(options))
    twistd = options.parent
    log_file = None if twistd is None else twistd.get("logfile")
    if log_file and log_file != "-":
        pool.log_file = str(log_file)
    if not options["metrics-listen"]:
        return pool
    parent = MultiService()
    pool.setServiceParent(parent)
    root = Resource()
    access = Access(options["metrics-token"], local_only=False)
    root.putChild(b"metrics", AggregateMetricsResource(pool, access))
    endpoint = serverFromString(reactor_of(), options["metrics-listen"])
    StreamServerEndpointService(endpoint, Site(root)).setServiceParent(parent)
    return parent


def reactor_of() -> Any:
    """The global reactor (twistd's), for the service maker only."""
    from twisted.internet import reactor

    return reactor


def makeService(options: Options) -> IService:
    """Build the daemon's service from parsed options (raising the open files limit first);
    SIGHUP reloads it."""
    raise_nofile_limit()
    # A process-wide allocator setting: the daemon's to make, not the library's.
    set_top_pad(options["malloc-top-pad"])
    if not options["log-context"] and dispatch_without_log_context(reactor_of()):
        log.info(
            "reactor: events dispatched without Twisted's per-event log context "
            "(--log-context keeps it)"
        )
    if options["workers"] > 1:
        return _make_pool(options)
    share = options["worker-share"]
    service = _DaemonService(
        divide_budgets(options["config"], share) if share else options["config"],
        () if share else options["listen"],
        metrics_listen=None if share else options["metrics-listen"],
        metrics_token=options["metrics-token"],
    )
    if share:
        WorkerControl(service.site).setServiceParent(service)
    twistd = options.parent
    service.foreground = twistd is None or bool(twistd.get("nodaemon"))
    HangupReload(partial(reparse, options), service.reconfigure).setServiceParent(service)
    return service


def _readable_ca_file(path: str) -> str:
    """``path`` if it holds at least one PEM certificate, or a usage error saying why not."""
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise usage.UsageError(f"--tls-ca-file {path}: {e.strerror or e}") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise usage.UsageError(f"--tls-ca-file {path}: no PEM certificate in it")
    return path
