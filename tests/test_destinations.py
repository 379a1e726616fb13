"""Destination policy attacks against a real daemon on loopback (no DNS: a table resolves)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tcpsocket.config import remote_endpoint
from tcpsocket.policy import DestinationPolicy
from tcpsocket.services.tcpsocket.messages import Event, Reply
from tcpsocket.site import TcpSocketService
from tcpsocket.tokens import TokenStore, load_tokens_file
from tests.session_helpers import (
    SessionClient,
    free_port,
    has_ipv6_loopback,
    listen_remote6,
    manager,
)
from tests.support import (
    ROOT,
    TOKEN,
    TWISTD_CODE,
    Echo,
    NameTable,
    listen_remote,
    start_daemon,
    start_twistd,
    temp_dir,
    test_config,
    wait_until,
)

LOOPBACK_SPELLINGS = (
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "127.1",
    "0x7f.1",
    "0x7F000001",
    "127.0.0.1.",
    "::ffff:127.0.0.1",
    "[::ffff:7f00:1]",
)
OTHER_DENIED = (
    "localhost",
    "hosts-file-name",
    "::1",
    "[::1]",
    "0.0.0.0",
    "0",
    "::",
    "169.254.169.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "fd00::1",
    "fe80::1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "2002:7f00:1::1",
    "::127.0.0.1",
)
#: What the daemon's resolver answers in these tests (names from /etc/hosts included).
NAMES = {
    "localhost": ["::1", "127.0.0.1"],
    "hosts-file-name": ["127.0.1.1"],
    "evil.example.org": ["127.0.0.1"],
    "imap.example.org": ["127.0.0.1"],
}


async def open_detail(client: SessionClient, service: int, host: str, port: int) -> str:
    reply = await client.open(service, host, port)
    assert reply.reply is Reply.OPEN_ERROR, (host, reply)
    assert isinstance(reply.detail, str)
    return reply.detail


async def echo_once(
    test: TestCase, client: SessionClient, service: int, host: str, port: int
) -> None:
    socket_id = await client.open_ok(service, port, host=host, events=(Event.DATA,))
    await client.send(service, socket_id, b"hi")
    stream = client.stream(service, socket_id)
    await wait_until(lambda: bytes(stream.data) == b"hi")
    test.assertTrue(await client.release(service, socket_id))


def addresses_given(reactor: Any, host: str, port: int) -> list[str]:
    """What the reactor that the daemon gave its connector resolves ``host`` to."""
    found: list[str] = []

    class Receiver:
        def resolutionBegan(self, resolution: Any) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            found.append(address.host)

        def resolutionComplete(self) -> None:
            pass

    reactor.nameResolver.resolveHostName(Receiver(), host, port)
    return found


@implementer(IStreamClientEndpoint)
class _Refusing:
    """An endpoint whose connects are refused (nothing leaves the machine)."""

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        return fail(ConnectionRefusedError("recorded, not connected"))


class DefaultDenialTests(TestCase):
    async def test_every_loopback_spelling_denied_by_default(self) -> None:
        factory, remote_port = await listen_remote(self, Echo)
        _, port = await start_daemon(self, policy=DestinationPolicy(), resolver=NameTable(NAMES))
        client, service = await manager(self, port)
        for host in LOOPBACK_SPELLINGS:
            detail = await open_detail(client, service, host, remote_port)
            self.assertIn("127.0.0.1 is loopback, denied by default", detail)
            self.assertTrue(detail.startswith("not allowed: "), detail)
        for host in OTHER_DENIED:
            detail = await open_detail(client, service, host, remote_port)
            self.assertIn("denied by default", detail)
        self.assertEqual(factory.connections, [])
        self.assertEqual(factory.closed, 0)
        client.assert_one_response_each()

    async def test_explicit_rule_allows_each_loopback_spelling(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        policy = DestinationPolicy(["allow 127.0.0.1:*", f"allow localhost:{remote_port}"])
        _, port = await start_daemon(self, policy=policy, resolver=NameTable(NAMES))
        client, service = await manager(self, port)
        for host in (*LOOPBACK_SPELLINGS, "localhost"):
            await echo_once(self, client, service, host, remote_port)

    async def test_ipv6_loopback_by_explicit_rule(self) -> None:
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback on this machine")
        _, remote_port = await listen_remote6(self, Echo)
        _, port = await start_daemon(self, policy=DestinationPolicy(["allow [::1]:*"]))
        client, service = await manager(self, port)
        for host in ("::1", "[::1]", "0:0:0:0:0:0:0:1"):
            await echo_once(self, client, service, host, remote_port)

    async def test_wildcard_name_rule_never_reaches_loopback(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory, remote_port = await listen_remote(self, Echo)
        policy = DestinationPolicy(["allow *.example.org:*"])
        _, port = await start_daemon(self, policy=policy, resolver=NameTable(NAMES))
        client, service = await manager(self, port)
        detail = await open_detail(client, service, "evil.example.org", remote_port)
        self.assertEqual(
            detail,
            "not allowed: evil.example.org (127.0.0.1) is loopback, denied by default "
            "(a pattern rule such as 'allow *.example.org:*' does not lift that)",
        )
        # Logged with the token's identity.
        self.assertIn(
            "test denied evil.example.org port", "\n".join(formatEvent(e) for e in events)
        )
        # Not in the allow list at all: denied before any lookup.
        detail = await open_detail(client, service, "other.example.com", remote_port)
        self.assertIn("not allowed by any rule", detail)
        self.assertEqual(factory.connections, [])

    async def test_exact_name_rule_reaches_loopback(self) -> None:
        _, remote_port = await listen_remote(self, Echo)
        policy = DestinationPolicy([f"allow imap.example.org:{remote_port}"])
        _, port = await start_daemon(self, policy=policy, resolver=NameTable(NAMES))
        client, service = await manager(self, port)
        await echo_once(self, client, service, "imap.example.org", remote_port)
        detail = await open_detail(client, service, "imap.example.org", free_port())
        self.assertIn("not allowed by any rule", detail)
        # The same address by another name, or as a literal, stays denied.
        self.assertIn("denied", await open_detail(client, service, "127.0.0.1", remote_port))
        detail = await open_detail(client, service, "evil.example.org", remote_port)
        self.assertIn("not allowed by any rule", detail)


class OwnEndpointTests(TestCase):
    async def test_daemon_port_denied_even_when_loopback_allowed(self) -> None:
        _, port = await start_daemon(self, policy=DestinationPolicy(["allow 0.0.0.0/0:*"]))
        client, service = await manager(self, port)
        for host in ("127.0.0.1", "2130706433", "::ffff:127.0.0.1", "0.0.0.0", "127.1"):
            detail = await open_detail(client, service, host, port)
            self.assertIn(f"port {port} is this daemon's own endpoint, always denied", detail)

    async def test_wildcard_listen_denied_on_every_local_address(self) -> None:
        number = free_port()
        config = test_config(policy=DestinationPolicy(["allow 0.0.0.0/0:*", "allow ::/0:*"]))
        service = TcpSocketService(config, [f"tcp:{number}"])
        service.startService()
        self.addCleanup(service.stopService)
        client, manager_id = await manager(self, number)
        for host in ("127.0.0.1", "127.0.0.2", "0.0.0.0", "0"):
            detail = await open_detail(client, manager_id, host, number)
            self.assertIn("this daemon's own endpoint", detail)


class ResolutionTests(TestCase):
    async def test_dns_rebinding_never_reaches_loopback(self) -> None:
        factory, remote_port = await listen_remote(self, Echo)
        connects: list[tuple[str, list[str]]] = []
        resolver = NameTable({"rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})

        def connect(reactor: Any, host: str, port: int, timeout: float) -> Any:
            connects.append((host, addresses_given(reactor, host, port)))
            return _Refusing()

        _, port = await start_daemon(
            self, policy=DestinationPolicy(), resolver=resolver, connect=connect
        )
        client, service = await manager(self, port)
        detail = await open_detail(client, service, "rebind.example", remote_port)
        self.assertEqual(detail, f"connection refused (rebind.example port {remote_port})")
        # The connector got the name with exactly the checked address, and could
        # resolve it to nothing else.
        self.assertEqual(connects, [("rebind.example", ["93.184.216.34"])])
        detail = await open_detail(client, service, "rebind.example", remote_port)
        self.assertIn("rebind.example (127.0.0.1) is loopback, denied by default", detail)
        self.assertEqual(len(connects), 1)
        self.assertEqual(resolver.asked, ["rebind.example", "rebind.example"])
        self.assertEqual(factory.connections, [])

    async def test_several_addresses_only_allowed_ones_tried(self) -> None:
        factory, remote_port = await listen_remote(self, Echo)
        names = {"multi.example": ["127.0.0.2", "10.1.2.3", "127.0.0.1"]}
        policy = DestinationPolicy(["deny 127.0.0.2:*", "allow 127.0.0.0/8:*"])
        connects: list[tuple[str, list[str]]] = []

        def connect(reactor: Any, host: str, port: int, timeout: float) -> Any:
            connects.append((host, addresses_given(reactor, host, port)))
            return remote_endpoint(reactor, host, port, timeout)

        resolver = NameTable(names)
        _, port = await start_daemon(self, policy=policy, resolver=resolver, connect=connect)
        client, service = await manager(self, port)
        await echo_once(self, client, service, "multi.example", remote_port)
        self.assertEqual(bytes(factory.received), b"hi")
        self.assertEqual(connects, [("multi.example", ["127.0.0.1"])])
        # No address allowed at all: the first denial is the answer.
        resolver.names["only-denied.example"] = ["127.0.0.2", "10.1.2.3"]
        detail = await open_detail(client, service, "only-denied.example", remote_port)
        self.assertIn("(127.0.0.2) port", detail)
        self.assertIn("denied by rule 'deny 127.0.0.2:*'", detail)


class RuleTests(TestCase):
    async def test_deny_rules_first_match_wins(self) -> None:
        _, open_port = await listen_remote(self, Echo)
        _, closed_port = await listen_remote(self, Echo)
        deny_first = DestinationPolicy([f"deny 127.0.0.1:{closed_port}", "allow 127.0.0.0/8:*"])
        _, port = await start_daemon(self, policy=deny_first)
        client, service = await manager(self, port)
        await echo_once(self, client, service, "127.0.0.1", open_port)
        detail = await open_detail(client, service, "127.0.0.1", closed_port)
        self.assertEqual(
            detail,
            f"not allowed: 127.0.0.1 port {closed_port} is denied by rule "
            f"'deny 127.0.0.1:{closed_port}'",
        )
        allow_first = DestinationPolicy(["allow 127.0.0.0/8:*", f"deny 127.0.0.1:{closed_port}"])
        _, port = await start_daemon(self, policy=allow_first)
        client, service = await manager(self, port)
        await echo_once(self, client, service, "127.0.0.1", closed_port)

    async def test_per_token_rules_from_tokens_file(self) -> None:
        _, mail_port = await listen_remote(self, Echo)
        _, other_port = await listen_remote(self, Echo)
        path = temp_dir(self) / "tokens.json"
        entries = [
            {
                "token": "mail-token-0123456789",
                "identity": "mail",
                "rules": [f"allow localhost:{mail_port}"],
            },
            {"token": "ops-token-0123456789", "identity": "ops", "rules": ["deny *:*"]},
            {"token": TOKEN, "identity": "plain"},
        ]
        path.write_text(json.dumps(entries))
        tokens = TokenStore(load_tokens_file(path))
        rules = {t.identity: t.rules for t in load_tokens_file(path) if t.rules}
        policy = DestinationPolicy([f"allow 127.0.0.1:{other_port}"], rules)
        _, port = await start_daemon(self, tokens=tokens, policy=policy, resolver=NameTable(NAMES))
        from tests.session_helpers import session

        mail = await session(self, port, token="mail-token-0123456789")
        service = await mail.get_service()
        await echo_once(self, mail, service, "localhost", mail_port)
        await echo_once(self, mail, service, "127.0.0.1", other_port)  # the global rule
        self.assertIn("not allowed", await open_detail(mail, service, "127.0.0.1", mail_port))

        ops = await session(self, port, token="ops-token-0123456789")
        service = await ops.get_service()
        detail = await open_detail(ops, service, "127.0.0.1", other_port)
        self.assertIn("denied by rule 'deny *:*'", detail)

        plain = await session(self, port, token=TOKEN)
        service = await plain.get_service()
        await echo_once(self, plain, service, "127.0.0.1", other_port)
        self.assertIn("not allowed", await open_detail(plain, service, "localhost", mail_port))


class EchoedTextTests(TestCase):
    async def test_long_host_is_cut_in_the_error(self) -> None:
        _, port = await start_daemon(self)
        client, service = await manager(self, port)
        detail = await open_detail(client, service, "a b" * 350_000, 80)
        self.assertLess(len(detail), 200)
        self.assertIn("(1050000 characters)", detail)


class TwistdTests(TestCase):
    """``twistd tcpsocket``: safe by default, ``--allow``/``--deny`` in order."""

    async def test_default_denies_loopback(self) -> None:
        factory, remote_port = await listen_remote(self, Echo)
        number = free_port()
        await start_twistd(self, port=number, allow=None)
        client, service = await manager(self, number)
        for host in ("127.0.0.1", "0x7f.1", "::ffff:127.0.0.1", "localhost"):
            detail = await open_detail(client, service, host, remote_port)
            self.assertIn("loopback, denied by default", detail)
        self.assertEqual(factory.connections, [])

    async def test_allow_and_deny_options(self) -> None:
        _, open_port = await listen_remote(self, Echo)
        _, closed_port = await listen_remote(self, Echo)
        number = free_port()
        rules = ["--deny", f"127.0.0.1:{closed_port}", "--allow", "127.0.0.1:*"]
        output, _ = await start_twistd(self, *rules, port=number, allow=None)
        client, service = await manager(self, number)
        await echo_once(self, client, service, "127.0.0.1", open_port)
        await echo_once(self, client, service, "2130706433", open_port)
        detail = await open_detail(client, service, "127.0.0.1", closed_port)
        self.assertIn(f"denied by rule 'deny 127.0.0.1:{closed_port}'", detail)
        detail = await open_detail(client, service, "127.0.0.1", number)
        self.assertIn("this daemon's own endpoint", detail)
        await wait_until(lambda: b"command-line denied 127.0.0.1 port" in output.output)

    async def test_rule_that_never_matches_stops_the_start(self) -> None:
        head = ["-c", TWISTD_CODE, "-n", "--pidfile=", "tcpsocket", "--token", TOKEN]
        for rule in ("10.0.0.0/33:22",):  # the others: tests/test_tap.py, without a process
            out, err, code = await getProcessOutputAndValue(
                sys.executable,
                [*head, "--allow", rule],
                env=dict(os.environ),
                path=str(ROOT),
            )
            self.assertNotEqual(code, 0)
            self.assertIn(f"rule {rule!r}", (out + err).decode())
