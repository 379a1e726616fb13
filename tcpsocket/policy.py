"""Which remotes a session may open (protocol.md B.4, "policy denial")."""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from zope.interface import implementer

from tcpsocket.interfaces import IOpenPolicy

__all__ = ["AllowAll", "AllowList", "Rule"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@implementer(IOpenPolicy)
class AllowAll:
    """The default policy: every host and port may be opened."""

    def check(self, identity: str, host: str, port: int) -> str | None:
        return None


@dataclass(frozen=True)
class Rule:
    """``HOST:PORTS``: a name pattern (``*.example.com``) or an address/network
    (``10.0.0.0/8``, ``[::1]``), and ``*``, ``N``, ``N-M`` or a comma list of those."""

    host: str
    network: _Network | None
    ports: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> Rule:
        host, sep, ports = text.rpartition(":")
        if not sep or not host or not ports:
            raise ValueError(f"allow rule {text!r} is not HOST:PORTS")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            network: _Network | None = ipaddress.ip_network(host, strict=False)
        except ValueError:
            network = None
        ranges: list[tuple[int, int]] = []
        for part in ports.split(","):
            if part == "*":
                ranges.append((1, 65535))
                continue
            low, _, high = part.partition("-")
            try:
                first, last = int(low), int(high or low)
            except ValueError:
                raise ValueError(f"allow rule {text!r}: bad port {part!r}") from None
            if not 1 <= first <= last <= 65535:
                raise ValueError(f"allow rule {text!r}: ports must be within 1-65535")
            ranges.append((first, last))
        return cls(host.lower(), network, tuple(ranges))

    def matches(self, host: str, port: int) -> bool:
        if not any(first <= port <= last for first, last in self.ports):
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        return fnmatch.fnmatchcase(host.lower(), self.host)


@implementer(IOpenPolicy)
class AllowList:
    """Allow only remotes that match one of the rules.

    Network rules match address literals only; a host name is matched by
    name rules, whatever it resolves to.
    """

    def __init__(self, rules: Iterable[Rule | str]) -> None:
        self.rules = tuple(rule if isinstance(rule, Rule) else Rule.parse(rule) for rule in rules)

    def check(self, identity: str, host: str, port: int) -> str | None:
        if any(rule.matches(host, port) for rule in self.rules):
            return None
        return f"{host} port {port} is not in the daemon's allow list"
