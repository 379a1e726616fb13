"""The daemon behind TLS (``--listen ssl:...``) and the Python client over ``wss://``."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import TestCase

from tcpsocket.client import DATA_EVENT, Session, TcpSocketManager
from tcpsocket.site import build_site
from tests.support import TOKEN, Echo, listen_remote, temp_dir, test_config


def self_signed() -> tuple[bytes, bytes]:
    """A key and a certificate for ``localhost`` and ``127.0.0.1``, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


class TLSTests(TestCase):
    async def test_echo_over_wss(self) -> None:
        key_pem, cert_pem = self_signed()
        pem = temp_dir(self) / "daemon.pem"
        pem.write_bytes(key_pem + cert_pem)
        # The same strports description an operator passes to --listen.
        server = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}")
        site = build_site(test_config(session_buffer=123 * 1024))
        port = await server.listen(site)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        _, remote_port = await listen_remote(self, Echo)

        trust = Certificate.loadPEM(cert_pem)
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", number),
        )
        session = await Session.connect(f"wss://localhost:{number}/ws", TOKEN, endpoint=endpoint)
        self.addCleanup(session.close)
        manager = await TcpSocketManager.get(session)
        socket = await manager.open(host="127.0.0.1", port=remote_port)
        received: defer.Deferred[bytes] = defer.Deferred()
        await socket.add_event_listener(DATA_EVENT, received.callback)
        self.assertTrue(await socket.send(b"over TLS"))
        self.assertEqual(await received, b"over TLS")
        # The session's --session-buffer reaches the TCP transport under the TLS layer,
        # where Twisted pauses the session's producer.
        (daemon_session,) = site.session_factory.sessions
        tls_transport = daemon_session.transport
        self.assertIsInstance(tls_transport, TLSMemoryBIOProtocol)
        self.assertEqual(tls_transport.transport.bufferSize, 123 * 1024)
