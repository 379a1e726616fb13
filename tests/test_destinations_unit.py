"""The destination policy on its own: spellings, ranges, rules (with property tests)."""

from __future__ import annotations

import ipaddress
import shlex
import socket
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.policy import (
    DEFAULT_DENIED,
    AllowAll,
    DestinationPolicy,
    OwnEndpoints,
    Rule,
    default_denial,
    parse_address,
)
from tcpsocket.tap import Options
from tcpsocket.tokens import token_from_json

DOC = Path(__file__).parent.parent / "doc"

_IPV4_DENIED = [net for net, _ in DEFAULT_DENIED if net.version == 4]


@st.composite
def denied_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    network = draw(st.sampled_from(_IPV4_DENIED))
    offset = draw(st.integers(0, network.num_addresses - 1))
    return ipaddress.IPv4Address(int(network.network_address) + offset)


def inet_aton_spellings(address: ipaddress.IPv4Address) -> list[str]:
    """Ways ``inet_aton`` spells ``address``: 1 to 4 parts, decimal, octal, hex."""
    a, b, c, d = address.packed
    value = int(address)
    forms = [str(value), hex(value), oct(value).replace("0o", "0")]
    forms += [f"{a}.{(b << 16) | (c << 8) | d}", f"{a}.{b}.{(c << 8) | d}"]
    forms += [f"{hex(a)}.{hex(b)}.{hex(c)}.{hex(d)}", f"0{a:o}.0{b:o}.0{c:o}.0{d:o}"]
    return forms


class ParseAddressTests(SynchronousTestCase):
    def test_spellings(self) -> None:
        loopback = ipaddress.IPv4Address("127.0.0.1")
        for text in ("127.0.0.1", "2130706433", "0177.0.0.1", "127.1", "0x7f.1", "127.0.0.1."):
            self.assertEqual(parse_address(text), loopback, text)
        self.assertEqual(parse_address("::ffff:127.0.0.1"), loopback)
        self.assertEqual(parse_address("[::1]"), ipaddress.IPv6Address("::1"))
        self.assertIsNone(parse_address("localhost"))
        self.assertIsNone(parse_address("1.example"))
        for bad in ("256.1.1.1", "1.16777216", "09", "0x100.1.1.1", "4294967296"):
            self.assertRaises(ValueError, parse_address, bad)

    @given(st.integers(0, 2**32 - 1))
    @settings(max_examples=300)
    def test_agrees_with_inet_aton(self, value: int) -> None:
        address = ipaddress.IPv4Address(value)
        for text in inet_aton_spellings(address):
            self.assertEqual(socket.inet_aton(text), address.packed, text)
            self.assertEqual(parse_address(text), address, text)


class DefaultDenialTests(SynchronousTestCase):
    def test_ranges(self) -> None:
        expected = {
            "127.0.0.1": "loopback",
            "::1": "loopback",
            "0.0.0.0": "unspecified ('this network')",
            "::": "unspecified",
            "169.254.169.254": "link-local",
            "10.1.1.1": "private (RFC 1918)",
            "100.64.0.1": "shared address space (CGNAT)",
            "fd12::1": "unique local (private)",
            "ff02::1": "multicast",
            "255.255.255.255": "broadcast",
            "64:ff9b::7f00:1": "the NAT64 form of 127.0.0.1 (loopback)",
            "2002:a00:1::": "the 6to4 form of 10.0.0.1 (private (RFC 1918))",
            "64:ff9b:1::1": "local-use NAT64",
        }
        for text, label in expected.items():
            self.assertEqual(default_denial(ipaddress.ip_address(text)), label, text)
        for text in ("93.184.216.34", "2606:2800:220:1::1", "64:ff9b::5db8:d822"):
            self.assertIsNone(default_denial(ipaddress.ip_address(text)), text)

    @given(denied_ipv4())
    def test_every_ipv6_form_of_a_denied_ipv4_is_denied(
        self, address: ipaddress.IPv4Address
    ) -> None:
        value = int(address)
        forms = [
            ipaddress.IPv6Address((0xFFFF << 32) | value),  # IPv4-mapped
            ipaddress.IPv6Address(value),  # IPv4-compatible
            ipaddress.IPv6Address((0x64FF9B << 96) | value),  # NAT64
            ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),  # 6to4
        ]
        for form in forms:
            self.assertIsNotNone(default_denial(form), str(form))
        policy = DestinationPolicy()
        for form in forms:
            self.assertIsNotNone(policy.check("id", str(form), 80), str(form))
        for text in inet_aton_spellings(address):
            self.assertIsNotNone(policy.check("id", text, 80), text)


class RuleTests(SynchronousTestCase):
    def test_errors_at_parse(self) -> None:
        for bad in (
            "10.0.0.0/33:22",
            "a host:22",
            "host:0",
            "host:70000",
            "host:9-x",
            "host:22-21",
            "nocolon",
            "256.1.1.1:80",
            "[fe80::/129]:1",
        ):
            self.assertRaises(ValueError, Rule.parse, bad)
        self.assertRaises(ValueError, Rule.parse, "deny x:1", allow=True)

    def test_kinds(self) -> None:
        self.assertTrue(Rule.parse("localhost:143").exact_name)
        self.assertFalse(Rule.parse("*.example.org:*").exact_name)
        self.assertEqual(str(Rule.parse("127.1:*").network), "127.0.0.1/32")
        self.assertEqual(str(Rule.parse("[::1]:*").network), "::1/128")
        self.assertFalse(Rule.parse("deny *:25").allow)
        self.assertEqual(str(Rule.parse("*:25", allow=False)), "deny *:25")

    def test_no_rules_allows_global_addresses_only(self) -> None:
        policy = DestinationPolicy()
        self.assertIsNone(policy.check("x", "example.org", 80))
        self.assertIsNone(policy.check_address("x", "example.org", "93.184.216.34", 80))
        self.assertEqual(
            policy.check_address("x", "example.org", "10.0.0.1", 80),
            "example.org (10.0.0.1) is private (RFC 1918), denied by default",
        )

    def test_allow_rules_restrict(self) -> None:
        policy = DestinationPolicy(["*.example.org:993"])
        self.assertIsNone(policy.check("x", "imap.example.org", 993))
        self.assertIn("not allowed by any rule", policy.check("x", "example.com", 993) or "")
        self.assertIn("not allowed by any rule", policy.check("x", "93.184.216.34", 993) or "")

    def test_deny_before_lookup(self) -> None:
        policy = DestinationPolicy(["deny *.internal:*"])
        self.assertIn(
            "denied by rule 'deny *.internal:*'", policy.check("x", "db.internal", 5) or ""
        )
        self.assertIsNone(policy.check("x", "example.org", 5))

    def test_address_rule_before_name_rule_waits_for_the_lookup(self) -> None:
        policy = DestinationPolicy(["allow 93.184.216.34:*", "deny *:*"])
        self.assertIsNone(policy.check("x", "example.org", 80))
        self.assertIsNone(policy.check_address("x", "example.org", "93.184.216.34", 80))
        self.assertIsNotNone(policy.check_address("x", "example.org", "93.184.216.35", 80))

    def test_per_identity_rules_come_first(self) -> None:
        policy = DestinationPolicy(["allow *:*"], {"mail": ["allow localhost:143", "deny *:*"]})
        self.assertIsNone(policy.check_address("mail", "localhost", "127.0.0.1", 143))
        self.assertIsNotNone(policy.check_address("mail", "example.org", "93.184.216.34", 80))
        self.assertIsNone(policy.check_address("web", "example.org", "93.184.216.34", 80))
        self.assertIsNotNone(policy.check_address("web", "localhost", "127.0.0.1", 143))

    def test_allow_all(self) -> None:
        self.assertIsNone(AllowAll().check_address("x", "localhost", "127.0.0.1", 22))

    def test_tokens_file_rules(self) -> None:
        token = token_from_json({"token": "t" * 16, "rules": ["allow localhost:143", "deny *:*"]})
        self.assertEqual([str(r) for r in token.rules], ["allow localhost:143", "deny *:*"])
        for bad in ({"rules": "allow x:1"}, {"rules": [1]}, {"rules": ["10.0.0.0/33:1"]}):
            self.assertRaises(ValueError, token_from_json, {"token": "t" * 16, **bad})


class OwnEndpointsTests(SynchronousTestCase):
    def test_exact_and_wildcard(self) -> None:
        own = OwnEndpoints()
        own.add(IPv4Address("TCP", "127.0.0.1", 8081))
        own.add(IPv6Address("TCP", "::", 8443))
        own.add(UNIXAddress(b"/run/tcpsocket.sock"))
        self.assertIsNotNone(own.denial("127.0.0.1", 8081))
        self.assertIsNotNone(own.denial("0.0.0.0", 8081))
        self.assertIsNone(own.denial("127.0.0.1", 8082))
        self.assertIsNone(own.denial("93.184.216.34", 8081))
        self.assertIsNotNone(own.denial("127.0.0.1", 8443))
        self.assertIsNotNone(own.denial("::", 8443))
        self.assertIsNone(own.denial("93.184.216.34", 8443))


class DocumentationTests(SynchronousTestCase):
    """The examples of doc/destinations.md and doc/operators.md are what the code takes."""

    def test_tokens_file_example(self) -> None:
        example = DOC / "examples" / "tokens-rules.json"
        text = (DOC / "destinations.md").read_text()
        self.assertIn(example.read_text().strip(), text)
        options = Options()
        options.parseOptions(["--tokens-file", str(example), "--allow", "*:*"])
        policy = options["config"].policy
        self.assertIsNone(policy.check_address("mail-app", "localhost", "127.0.0.1", 143))
        self.assertIsNone(policy.check_address("mail-app", "example.org", "93.184.216.34", 80))
        self.assertIsNotNone(policy.check_address("mail-app", "localhost", "127.0.0.1", 22))
        self.assertIsNotNone(policy.check_address("viewer", "example.org", "93.184.216.34", 993))

    def test_command_lines(self) -> None:
        example = (DOC / "examples" / "allow_rules.sh").read_text()
        for page in ("destinations.md", "operators.md"):
            self.assertIn(f"```sh\n{example}```", (DOC / page).read_text(), page)
            for line in [example.strip()]:
                words = shlex.split(line)
                options = Options()
                options.parseOptions(["--token", "t" * 16, *words[words.index("tcpsocket") + 1 :]])
                policy = options["config"].policy
                self.assertIsNone(policy.check_address("x", "localhost", "127.0.0.1", 143))
                self.assertIsNotNone(policy.check_address("x", "mx.example", "93.184.216.34", 25))
