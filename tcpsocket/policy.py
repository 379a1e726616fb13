"""Which remotes a session may open (protocol.md B.4, "policy denial").

Safe by default: addresses that are not globally routable (loopback,
private, link-local, CGNAT, multicast, reserved...) are denied, in every
spelling, and so are the daemon's own endpoints.  Operators open what they
need with ``allow`` and ``deny`` rules (see ``doc/destinations.md``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from twisted.internet.address import IPv4Address as TwistedIPv4
from twisted.internet.address import IPv6Address as TwistedIPv6
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from tcpsocket.interfaces import IAddressPolicy

__all__ = [
    "AllowAll",
    "AllowList",
    "DestinationPolicy",
    "OwnEndpoints",
    "Rule",
    "default_denial",
    "parse_address",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What inet_aton(3) takes: one to four dot-separated numbers, decimal, 0octal or 0xhex.
_NUMERIC = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\Z", re.IGNORECASE)
_NAME_PATTERN = re.compile(r"[a-z0-9_*?.-]+\Z")


def _number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    return int(part)


def parse_address(host: str) -> Address | None:
    """The address ``host`` spells, canonical, or None if it is a name.

    Takes every form ``inet_aton`` takes (``2130706433``, ``0177.0.0.1``,
    ``127.1``, ``0x7f.1``), IPv6 with or without brackets, and turns an
    IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) into its IPv4 address,
    which is where a connection to it goes.  Raises ``ValueError`` for a
    numeric host that is no address (``256.1``, ``09``): it is not a name either.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        address = ipaddress.IPv6Address(host)
        mapped = address.ipv4_mapped
        return address if mapped is None else mapped
    text = host[:-1] if host.endswith(".") else host
    if not _NUMERIC.match(text):
        return None
    try:
        parts = [_number(part) for part in text.split(".")]
    except ValueError:
        raise ValueError(f"{host!r} is neither a name nor an address") from None
    widths = {1: (32,), 2: (8, 24), 3: (8, 8, 16), 4: (8, 8, 8, 8)}[len(parts)]
    value = 0
    for part, width in zip(parts, widths, strict=True):
        if part >= 1 << width:
            raise ValueError(f"{host!r} is neither a name nor an address")
        value = (value << width) | part
    return ipaddress.IPv4Address(value)


def _networks(*pairs: tuple[str, str]) -> tuple[tuple[_Network, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in pairs)


#: Denied unless an address rule or an exact name rule allows them (first match names it).
DEFAULT_DENIED = _networks(
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments (Teredo, ORCHID...)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def default_denial(address: Address) -> str | None:
    """Why ``address`` is denied by default (``"loopback"``), or None if it is not.

    An IPv6 address that carries an IPv4 address (NAT64 ``64:ff9b::/96``,
    6to4 ``2002::/16``) is denied if the IPv4 address is.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for network, label in DEFAULT_DENIED:
        if address.version == network.version and address in network:
            return label
    if isinstance(address, ipaddress.IPv4Address):
        return None if address.is_global else "not globally routable"
    embedded = address.sixtofour
    kind = "6to4"
    if address in _NAT64:
        embedded, kind = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if embedded is not None:
        inner = default_denial(embedded)
        return None if inner is None else f"the {kind} form of {embedded} ({inner})"
    if address not in _GLOBAL_UNICAST:
        return "reserved (outside 2000::/3)"
    return None


def _ports(text: str, rule: str) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        if part == "*":
            ranges.append((1, 65535))
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"rule {rule!r}: bad port {part!r}") from None
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"rule {rule!r}: ports must be within 1-65535")
        ranges.append((first, last))
    return tuple(ranges)


@dataclass(frozen=True)
class Rule:
    """``[allow|deny] HOST:PORTS``; without a verb, ``allow``.

    ``HOST`` is an address or network (``127.0.0.1``, ``10.0.0.0/8``,
    ``[::1]``, ``[fd00::/8]``): it matches the addresses a remote resolves to;
    an exact name (``localhost``) or a name pattern (``*.example.org``): it
    matches the name the client asked for; or ``*``: anything.  ``PORTS`` is
    ``*``, ``N``, ``N-M`` or a comma list of those.

    Allowing by address or by exact name lifts the default denial; a
    pattern or ``*`` never does (an ``*.example.org`` name that resolves to
    127.0.0.1 stays denied).
    """

    text: str
    allow: bool
    host: str
    network: _Network | None
    ports: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str, allow: bool | None = None) -> Rule:
        """Parse a rule; ``allow`` (from ``--allow``/``--deny``) excludes a verb in ``text``."""
        body = text.strip()
        verb, _, rest = body.partition(" ")
        if verb in ("allow", "deny") and rest:
            if allow is not None:
                raise ValueError(f"rule {text!r}: the option already says allow or deny")
            allow, body = verb == "allow", rest.strip()
        host, sep, ports = body.rpartition(":")
        if not sep or not host or not ports:
            raise ValueError(f"rule {text!r} is not [allow|deny] HOST:PORTS")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        network: _Network | None = None
        if "/" in host:
            try:
                network = ipaddress.ip_network(host, strict=False)
            except ValueError as e:
                raise ValueError(f"rule {text!r}: {e}") from None
        else:
            try:
                address = parse_address(host)
            except ValueError as e:
                raise ValueError(f"rule {text!r}: {e}") from None
            if address is not None:
                network = ipaddress.ip_network(address)
            else:
                try:
                    host = host.rstrip(".").encode("idna").decode("ascii").lower()
                except UnicodeError:
                    host = ""
                if not _NAME_PATTERN.match(host):
                    raise ValueError(f"rule {text!r}: {host!r} is not a host name or pattern")
        return cls(text.strip(), allow is not False, host, network, _ports(ports, text))

    @property
    def exact_name(self) -> bool:
        """A name without wildcards: lifts the default denial for what it resolves to."""
        return self.network is None and not any(c in self.host for c in "*?[")

    def port_matches(self, port: int) -> bool:
        return any(first <= port <= last for first, last in self.ports)

    def name_matches(self, name: str | None) -> bool:
        """Whether this name rule matches the client's ``name`` (None: a literal address)."""
        if self.network is not None:
            return False
        if self.host == "*":
            return True
        return name is not None and fnmatch.fnmatchcase(name, self.host)

    def matches(self, name: str | None, address: Address, port: int) -> bool:
        if not self.port_matches(port):
            return False
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return self.name_matches(name)

    def __str__(self) -> str:
        verb = "allow" if self.allow else "deny"
        return self.text if self.text.startswith(verb + " ") else f"{verb} {self.text}"


def _rules(rules: Iterable[Rule | str]) -> tuple[Rule, ...]:
    return tuple(rule if isinstance(rule, Rule) else Rule.parse(rule) for rule in rules)


@implementer(IAddressPolicy)
class DestinationPolicy:
    """Rules, first match wins, over the default denial.

    ``rules`` apply to every session, after the rules of the session's
    identity in ``per_identity``.  If any rule that applies to a session
    allows, the session may reach only what a rule allows; otherwise it may
    reach every address that is not denied by default.
    """

    def __init__(
        self,
        rules: Iterable[Rule | str] = (),
        per_identity: Mapping[str, Iterable[Rule | str]] | None = None,
    ) -> None:
        self.rules = _rules(rules)
        self.per_identity = {k: _rules(v) for k, v in (per_identity or {}).items()}
        #: Rules that signed tokens (JWT ``rules`` claims) carry, per identity; the
        #: tokens file's rules of the same identity take precedence.
        self.claimed: dict[str, tuple[Rule, ...]] = {}

    def rules_for(self, identity: str) -> tuple[Rule, ...]:
        """The rules that apply to ``identity``'s sessions, in order."""
        own = self.per_identity.get(identity)
        return (self.claimed.get(identity, ()) if own is None else own) + self.rules

    def check(self, identity: str, host: str, port: int) -> str | None:
        """Before any lookup: deny a name that no rule lets through, without asking DNS."""
        literal = parse_address(host)
        if literal is not None:
            return self.check_address(identity, host, str(literal), port)
        rules = self.rules_for(identity)
        name = host.lower()
        for rule in rules:
            if not rule.port_matches(port):
                continue
            if rule.network is not None:
                return None  # only the addresses can tell
            if rule.name_matches(name):
                if not rule.allow:
                    return f"{host} port {port} is denied by rule '{rule}'"
                return None
        if any(rule.allow for rule in rules):
            return f"{host} port {port} is not allowed by any rule"
        return None

    def check_address(self, identity: str, host: str, address: str, port: int) -> str | None:
        """After the lookup: each address ``host`` resolved to (or the literal itself)."""
        ip = ipaddress.ip_address(address)
        literal = parse_address(host)
        name = None if literal is not None else host.lower()
        denial = default_denial(ip)
        rules = self.rules_for(identity)
        passed_over: Rule | None = None
        for rule in rules:
            if not rule.matches(name, ip, port):
                continue
            if not rule.allow:
                return f"{_where(host, ip)} port {port} is denied by rule '{rule}'"
            if denial is None or rule.network is not None or rule.exact_name:
                return None
            passed_over = passed_over or rule
        if denial is not None:
            why = f"{_where(host, ip)} is {denial}, denied by default"
            if passed_over is not None:
                why += f" (a pattern rule such as '{passed_over}' does not lift that)"
            return why
        if any(rule.allow for rule in rules):
            return f"{_where(host, ip)} port {port} is not allowed by any rule"
        return None


def _where(host: str, address: Address) -> str:
    literal = parse_address(host)
    return str(address) if literal == address else f"{host} ({address})"


#: The old name: ``AllowList(rules)`` allows what its rules allow, and nothing else.
AllowList = DestinationPolicy


@implementer(IAddressPolicy)
class AllowAll:
    """Every host, address and port may be opened, loopback and private included.

    Only for a daemon whose every client is trusted (or for in-memory tests):
    the daemon's own endpoints stay denied.
    """

    def check(self, identity: str, host: str, port: int) -> str | None:
        return None

    def check_address(self, identity: str, host: str, address: str, port: int) -> str | None:
        return None


def _is_local(address: Address) -> bool:
    """Whether this host owns ``address`` (can bind it); asks the kernel, not DNS."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class OwnEndpoints:
    """The daemon's listening TCP endpoints, which sessions may never open.

    A session never tunnels into the daemon: not through the listening
    address, nor an unspecified address (``0.0.0.0``, ``::``), nor, for a
    wildcard listen, any address of this host.
    """

    def __init__(self) -> None:
        self._exact: set[tuple[Address, int]] = set()
        self._ports: set[int] = set()
        self._wildcard_ports: set[int] = set()

    def add(self, address: IAddress) -> None:
        """Record a listening port's ``getHost()`` (other than TCP: ignored)."""
        if not isinstance(address, (TwistedIPv4, TwistedIPv6)):
            return
        host = address.host.split("%", 1)[0]
        ip = parse_address(host)
        assert ip is not None
        self._ports.add(address.port)
        if ip.is_unspecified:
            self._wildcard_ports.add(address.port)
        else:
            self._exact.add((ip, address.port))

    def denial(self, address: str, port: int) -> str | None:
        """Why (``address``, ``port``) is denied as the daemon's own, or None."""
        if port not in self._ports:
            return None
        ip = parse_address(address)
        assert ip is not None
        if (
            (ip, port) in self._exact
            or ip.is_unspecified
            or (port in self._wildcard_ports and _is_local(ip))
        ):
            return f"{ip} port {port} is this daemon's own endpoint, always denied"
        return None
