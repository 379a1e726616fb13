"""SecureTcpSocketManager from Python: TLS from the start, STARTTLS, and every way TLS fails.

The servers run on loopback with certificates of a CA the tests generate; the daemon trusts
it through ``tls_ca_file`` (``--tls-ca-file``), never by turning verification off.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tcpsocket.bincode import DecodeError
from tcpsocket.client import (
    CLOSE_EVENT,
    DATA_EVENT,
    DRAIN_EVENT,
    ERROR_EVENT,
    SecureTcpSocketManager,
    Session,
    TcpSocketError,
    TcpSocketManager,
)
from tcpsocket.policy import DestinationPolicy
from tcpsocket.services import default_services
from tcpsocket.services.securesocket.messages import (
    SECURE_FINGERPRINT,
    SECURE_SIGNATURE,
    encode_secure_open,
    encode_upgrade,
    encode_upgrade_error,
)
from tcpsocket.services.tcpsocket.messages import Reply, encode_reply
from tests.support import TOKEN, Echo, open_sockets, start_daemon, temp_dir, wait_until
from tests.tls_support import (
    TLS_NAMES,
    TLS_RULES,
    CloseAtOnce,
    CloseAtStartTLS,
    CloseOnHello,
    ResetOnHello,
    TestAuthority,
    listen_starttls,
    listen_tls,
)

CA = TestAuthority()


class Collect:
    """DATA of a socket, with a Deferred for the moment it contains some bytes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._waiting: list[tuple[bytes, defer.Deferred[None]]] = []

    def __call__(self, data: bytes) -> None:
        self.data += data
        for entry in list(self._waiting):
            if entry[0] in self.data:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def until(self, marker: bytes) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        if marker in self.data:
            done.callback(None)
        else:
            self._waiting.append((marker, done))
        return done


async def secure_manager(test: Any) -> SecureTcpSocketManager:
    """A SecureTcpSocketManager on a daemon that trusts the test CA and reaches *.test."""
    _, port = await start_daemon(
        test,
        tls_ca_file=CA.write(test),
        resolver=TLS_NAMES,
        policy=DestinationPolicy(TLS_RULES),
    )
    session = await Session.connect(f"ws://127.0.0.1:{port}/ws", TOKEN)
    test.addCleanup(session.close)
    manager: SecureTcpSocketManager = await SecureTcpSocketManager.get(session)
    return manager


class SecureSocketTests(TestCase):
    def test_fingerprint(self) -> None:
        """Computed as protocol.md A.5 computes TcpSocketManager's."""
        digest = hashlib.sha256("".join(SECURE_SIGNATURE).encode()).digest()
        self.assertEqual(SECURE_FINGERPRINT, "".join(format(b, "x") for b in digest))

    async def test_tls_from_the_start(self) -> None:
        """IMAPS-style: TLS from the first byte, SNI and verification for the host, ALPN."""
        options = CA.issue("imap.test").server_options(acceptableProtocols=[b"imap"])
        port = await listen_tls(self, options, Echo)
        manager = await secure_manager(self)
        socket = await manager.open(
            host="imap.test", port=port, use_secure_transport=True, alpn=["imap", "h2"]
        )
        self.assertTrue(socket.tls.secure)
        self.assertIn(socket.tls.version, ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(socket.tls.alpn, "imap")
        self.assertEqual(socket.tls.peer_subject, "CN=imap.test")
        self.assertEqual((socket.info.remote_address, socket.info.remote_port), ("127.0.0.1", port))
        self.assertEqual(socket.info.local_address, "127.0.0.1")
        self.assertGreater(socket.info.local_port, 0)
        received = Collect()
        await socket.add_event_listener(DATA_EVENT, received)
        self.assertTrue(await socket.send(b"a1 CAPABILITY\r\n"))
        await received.until(b"a1 CAPABILITY\r\n")
        self.assertEqual(bytes(received.data), b"a1 CAPABILITY\r\n")

    async def test_plain_open_reports_addresses(self) -> None:
        options = CA.issue("imap.test").server_options()
        port = await listen_tls(self, options, Echo)
        manager = await secure_manager(self)
        socket = await manager.open(host="127.0.0.1", port=port)
        self.assertFalse(socket.tls.secure)
        self.assertEqual(socket.tls.version, "")
        self.assertEqual(socket.info.remote_port, port)

    async def test_starttls(self) -> None:
        """SMTP-style: clear bytes before upgradeToSecure, encrypted after; DATA in order."""
        port = await listen_starttls(self, CA.issue("smtp.test").server_options())
        manager = await secure_manager(self)
        socket = await manager.open(host="smtp.test", port=port)
        received = Collect()
        await socket.add_event_listener(DATA_EVENT, received)
        await socket.send(b"NOOP\r\n")
        await socket.send(b"STARTTLS\r\n")
        await received.until(b"220 go ahead\r\n")
        info = await socket.upgrade_to_secure()
        self.assertTrue(info.secure)
        self.assertEqual(info.peer_subject, "CN=smtp.test")
        await socket.send(b"EHLO me\r\n")
        await received.until(b"secure: EHLO me\r\n")
        self.assertEqual(
            bytes(received.data),
            b"220 smtp.test ready\r\n250 clear: NOOP\r\n220 go ahead\r\nsecure: EHLO me\r\n",
        )
        again = socket.upgrade_to_secure()
        with self.assertRaisesRegex(TcpSocketError, "already secure"):
            await again

    async def failure(self, options: object, host: str = "imap.test", **kw: object) -> str:
        port = await listen_tls(self, options, Echo)  # type: ignore[arg-type]
        manager = await secure_manager(self)
        opening = manager.open(host=host, port=port, use_secure_transport=True, **kw)  # type: ignore[arg-type]
        with self.assertRaises(TcpSocketError) as caught:
            await opening
        return str(caught.exception)

    async def test_name_mismatch(self) -> None:
        reason = await self.failure(CA.issue("other.test").server_options())
        self.assertIn("certificate name mismatch", reason)

    async def test_server_name_option(self) -> None:
        """The name TLS checks can differ from the host (and SNI carries it)."""
        port = await listen_tls(self, CA.issue("other.test").server_options(), Echo)
        manager = await secure_manager(self)
        socket = await manager.open(
            host="imap.test", port=port, use_secure_transport=True, server_name="other.test"
        )
        self.assertEqual(socket.tls.peer_subject, "CN=other.test")

    async def test_unknown_authority(self) -> None:
        reason = await self.failure(
            TestAuthority("nobody's CA").issue("imap.test").server_options()
        )
        self.assertIn("unknown authority", reason)

    async def test_operator_exception(self) -> None:
        """--tls-no-verify NAME: the operator, never a client, accepts a name's certificate
        unverified (a device with its own CA); other names are still verified."""
        options = TestAuthority("a device's own CA").issue("imap.test").server_options()
        port = await listen_tls(self, options, Echo)
        _, daemon = await start_daemon(
            self,
            tls_ca_file=CA.write(self),
            tls_no_verify=frozenset({"IMAP.test."}),
            resolver=TLS_NAMES,
            policy=DestinationPolicy(TLS_RULES),
        )
        session = await Session.connect(f"ws://127.0.0.1:{daemon}/ws", TOKEN)
        self.addCleanup(session.close)
        manager = await SecureTcpSocketManager.get(session)
        socket = await manager.open(host="imap.test", port=port, use_secure_transport=True)
        self.assertTrue(socket.tls.secure)
        self.assertEqual(socket.tls.peer_subject, "CN=imap.test")
        # Another name for the same server is verified, and refused.
        other = manager.open(
            host="imap.test", port=port, use_secure_transport=True, server_name="other.test"
        )
        with self.assertRaisesRegex(TcpSocketError, "unknown authority|name mismatch"):
            await other
        # The exception is the destination's: a client cannot borrow it for another host
        # by naming the exempt server in serverName.
        borrowed = manager.open(
            host="other.test", port=port, use_secure_transport=True, server_name="imap.test"
        )
        with self.assertRaisesRegex(TcpSocketError, "unknown authority"):
            await borrowed

    async def test_expired(self) -> None:
        reason = await self.failure(
            CA.issue("expired.test", expired=True).server_options(), "expired.test"
        )
        self.assertIn("certificate expired", reason)

    async def test_reset_during_handshake(self) -> None:
        port = await self.listen_plain(ResetOnHello)
        manager = await secure_manager(self)
        opening = manager.open(host="imap.test", port=port, use_secure_transport=True)
        with self.assertRaises(TcpSocketError) as caught:
            await opening
        self.assertIn("during the TLS handshake", str(caught.exception))

    async def listen_plain(self, protocol: type[Protocol]) -> int:
        """A plain TCP server on 127.0.0.1 speaking ``protocol``; returns its port."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory

        server = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(protocol)
        )
        self.addCleanup(server.stopListening)
        number: int = server.getHost().port
        return number

    async def test_clean_close_during_handshake(self) -> None:
        """A remote that closes with a FIN (not a reset), before or after reading the
        ClientHello, fails the open with the reason; no socket is left behind."""
        manager = await secure_manager(self)
        for protocol in (CloseAtOnce, CloseOnHello):
            port = await self.listen_plain(protocol)
            baseline = open_sockets()
            opening = manager.open(host="imap.test", port=port, use_secure_transport=True)
            with self.assertRaises(TcpSocketError) as caught:
                await opening
            self.assertIn(
                "the remote closed the connection during the TLS handshake",
                str(caught.exception),
                protocol.__name__,
            )
            await wait_until(lambda baseline=baseline: open_sockets() == baseline)

    async def test_clean_close_during_upgrade(self) -> None:
        """STARTTLS to a remote that closes cleanly on the ClientHello fails upgradeToSecure
        with the reason and ends the socket; its descriptors are released."""
        options = CA.issue("smtp.test").server_options()
        port = await listen_starttls(self, options, CloseAtStartTLS)
        manager = await secure_manager(self)
        baseline = open_sockets()
        socket = await manager.open(host="smtp.test", port=port)
        received = Collect()
        await socket.add_event_listener(DATA_EVENT, received)
        await socket.send(b"STARTTLS\r\n")
        errors: list[object] = []
        closed: defer.Deferred[object] = defer.Deferred()
        await socket.add_event_listener(ERROR_EVENT, errors.append)
        await socket.add_event_listener(CLOSE_EVENT, closed.callback)
        await received.until(b"220 go ahead\r\n")
        upgrading = socket.upgrade_to_secure()
        with self.assertRaises(TcpSocketError) as caught:
            await upgrading
        reason = "the remote closed the connection during the TLS handshake"
        self.assertIn(reason, str(caught.exception))
        await closed  # ERROR with the same reason, then CLOSE (protocol.md E)
        self.assertEqual(len(errors), 1)
        self.assertIn(reason, str(errors[0]))
        await wait_until(lambda: open_sockets() == baseline)

    async def test_policy_applies(self) -> None:
        manager = await secure_manager(self)
        opening = manager.open(host="10.1.2.3", port=993, use_secure_transport=True)
        with self.assertRaisesRegex(TcpSocketError, "not allowed"):
            await opening

    async def test_both_services_in_one_session(self) -> None:
        """The session routes by service id: plain and secure side by side."""
        port = await listen_tls(self, CA.issue("imap.test").server_options(), Echo)
        secure = await secure_manager(self)
        plain = await TcpSocketManager.get(secure.session)
        self.assertNotEqual(plain.service_id, secure.service_id)
        self.assertTrue(await secure.session.has_service("SecureTcpSocketManager"))
        socket = await secure.open(host="imap.test", port=port, use_secure_transport=True)
        self.assertTrue(socket.tls.secure)


MiB = 1024 * 1024
BLOCK = hashlib.sha256(b"tcpsocket").digest() * (256 * 1024 // 32)  # 256 KiB
TOTAL = 64 * MiB


def expected_digest() -> str:
    digest = hashlib.sha256()
    for _ in range(TOTAL // len(BLOCK)):
        digest.update(BLOCK)
    return digest.hexdigest()


@implementer(IPullProducer)
class _Blocks:
    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.left = TOTAL // len(BLOCK)

    def resumeProducing(self) -> None:
        if not self.left:
            self.transport.unregisterProducer()
            return
        self.left -= 1
        self.transport.write(BLOCK)

    def stopProducing(self) -> None:
        self.left = 0


class Bulk(Protocol):
    """Sends 64 MiB, hashes what it receives; ``factory.received`` fires with the digest."""

    def connectionMade(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.transport.registerProducer(_Blocks(self.transport), False)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        if self.count == TOTAL:
            self.factory.received.callback(self.digest.hexdigest())  # type: ignore[attr-defined]


class BulkTests(TestCase):
    timeout = 300

    async def test_64_mib_each_way(self) -> None:
        """64 MiB each way through TLS, byte-exact, with DRAIN, suspend and resume."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import SSL4ServerEndpoint
        from twisted.internet.protocol import Factory
        from twisted.internet.task import deferLater

        factory = Factory.forProtocol(Bulk)
        factory.received = defer.Deferred()  # type: ignore[attr-defined]
        options = CA.issue("imap.test").server_options()
        server = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(server.stopListening)
        manager = await secure_manager(self)
        socket = await manager.open(
            host="imap.test", port=server.getHost().port, use_secure_transport=True
        )

        digest = hashlib.sha256()
        got = 0
        all_in: defer.Deferred[None] = defer.Deferred()
        drained: list[defer.Deferred[None]] = []
        suspended_at: list[int] = []

        def data(chunk: bytes) -> None:
            nonlocal got
            digest.update(chunk)
            got += len(chunk)
            if got >= 16 * MiB and not suspended_at:
                suspended_at.append(got)
                socket.suspend()
            if got == TOTAL:
                all_in.callback(None)

        def drain(_: object) -> None:
            while drained:
                drained.pop().callback(None)

        await socket.add_event_listener(DATA_EVENT, data)
        await socket.add_event_listener(DRAIN_EVENT, drain)
        for _ in range(TOTAL // len(BLOCK)):
            if suspended_at and len(suspended_at) == 1:
                # While suspended, only what was already on its way arrives.
                await deferLater(reactor, 0.2, lambda: None)
                held = got
                await deferLater(reactor, 0.2, lambda: None)
                self.assertLessEqual(got - held, 2 * MiB)
                suspended_at.append(got)
                await socket.resume()
            if not await socket.send(BLOCK):
                waiting: defer.Deferred[None] = defer.Deferred()
                drained.append(waiting)
                await waiting
        await all_in
        self.assertEqual(digest.hexdigest(), expected_digest())
        self.assertEqual(await factory.received, expected_digest())  # type: ignore[attr-defined]


class OptionTests(TestCase):
    def test_tls_ca_file_option(self) -> None:
        from twisted.python import usage

        from tcpsocket.tap import Options

        path = CA.write(self)
        options = Options()
        options.parseOptions(
            ["--token", "a" * 16, "--tls-ca-file", path, "--tls-no-verify", "printer.lan"]
        )
        self.assertEqual(options["config"].tls_ca_file, path)
        self.assertEqual(options["config"].tls_no_verify, {"printer.lan"})
        empty = temp_dir(self) / "empty.pem"
        empty.write_text("nothing\n")
        for bad, why in ((str(empty), "no PEM certificate"), ("/nonexistent/ca.pem", "No such")):
            with self.assertRaisesRegex(usage.UsageError, why):
                Options().parseOptions(["--token", "a" * 16, "--tls-ca-file", bad])

    def test_no_client_option_turns_verification_off(self) -> None:
        """The open options are SNI name, ALPN, noDelay, keep-alive: nothing about trust."""
        from dataclasses import fields

        from tcpsocket.services.securesocket.messages import SecureOpen, TlsOptions

        names = {f.name for f in fields(SecureOpen)} | {f.name for f in fields(TlsOptions)}
        self.assertFalse({n for n in names if "verif" in n or "insecure" in n or "trust" in n})


class DocTests(TestCase):
    def test_protocol_md_section_e(self) -> None:
        """The fingerprint and test vectors in doc/protocol.md are the code's."""
        from pathlib import Path

        from tcpsocket.services.securesocket.messages import encode_secure_open, encode_upgrade

        text = (Path(__file__).parent.parent / "doc" / "protocol.md").read_text()
        section = text[text.index("## E. SecureTcpSocketManager") :]
        self.assertIn(SECURE_FINGERPRINT, section)
        for name in SECURE_SIGNATURE:
            self.assertIn(f"`{name}`", section)
        vector = encode_secure_open("imap.test", 993, use_secure_transport=True, alpn=("imap",))
        self.assertIn(vector.hex(" "), section)
        self.assertIn(encode_upgrade().hex(" "), section)


class RejectTests(SynchronousTestCase):
    """A request to a service id without an instance: the error variant of its service."""

    def reject(self, content: bytes) -> list[tuple[int, int, int, bytes]]:
        sent: list[tuple[int, int, int, bytes]] = []

        class Session:
            def send_response(self, service: int, obj: int, request: int, data: bytes) -> None:
                sent.append((service, obj, request, data))

        default_services().reject(Session(), 5, 2, 7, memoryview(content), "unknown service 5")
        return sent

    def test_upgrade_gets_the_upgrade_error(self) -> None:
        sent = self.reject(encode_upgrade("imap.example.org"))
        self.assertEqual(sent, [(5, 2, 7, encode_upgrade_error("unknown service 5"))])

    def test_socket_request_gets_its_error_reply(self) -> None:
        sent = self.reject(encode_secure_open("imap.example.org", 993, use_secure_transport=True))
        self.assertEqual(sent, [(5, 2, 7, encode_reply(Reply.OPEN_ERROR, "unknown service 5"))])

    def test_no_request_of_any_service_is_a_decode_error(self) -> None:
        self.assertRaises(DecodeError, self.reject, b"\xff\xff\xff\xff")
