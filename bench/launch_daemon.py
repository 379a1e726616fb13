"""Run the tcpsocket daemon in this process, with any ``ServerConfig`` field overridden.

``twistd -n tcpsocket`` is what the benchmark normally runs; this launcher is used when
the twistd plugin is not registered, or when a setting has no command-line option,
e.g. for tuning experiments::

    python -m bench.launch_daemon --port 8081 --token T --allow '127.0.0.1:*' \
        --set session_buffer=4194304
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.procstat import raise_nofile_limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--logfile", default="-")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST:PORTS",
        help="allowed remotes, as twistd tcpsocket --allow (repeatable)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="override a ServerConfig field (integers or floats)",
    )
    args = parser.parse_args()
    raise_nofile_limit()

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tcpsocket.config import ServerConfig
    from tcpsocket.policy import DestinationPolicy
    from tcpsocket.site import TcpSocketService
    from tcpsocket.tokens import Token, TokenStore

    overrides: dict[str, Any] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name.replace("-", "_")] = float(value) if "." in value else int(value)
    # The benchmark's remotes are on loopback, which the daemon denies by default.
    rules = [f"allow {rule}" for rule in args.allow] or ["allow 127.0.0.1:*"]
    overrides_all: dict[str, Any] = {"policy": DestinationPolicy(rules)}
    overrides_all.update(overrides)
    config = ServerConfig(tokens=TokenStore([Token(args.token)]), **overrides_all)
    out = sys.stdout if args.logfile == "-" else open(args.logfile, "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(out)], redirectStandardIO=False)
    service = TcpSocketService(config, [f"tcp:{args.port}:interface=127.0.0.1"])
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
