"""Canaries for every use of Twisted's and Autobahn's private state (tcpsocket/_private.py).

Each test fails loudly when a release changes what one function of
``_private`` relies on; ``setup.py`` bounds the versions they pass with.
"""

from __future__ import annotations

import inspect

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel

from tcpsocket import _private

AUTOBAHN_SOURCE = inspect.getsource(autobahn_protocol)


def _server_protocol(clock: Clock | None = None) -> tuple[WebSocketServerProtocol, StringTransport]:
    factory = WebSocketServerFactory()
    _private.use_reactor_timers(factory, clock or Clock())
    factory.protocol = WebSocketServerProtocol
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class AutobahnCanaries(SynchronousTestCase):
    def test_batched_timer(self) -> None:
        """Autobahn schedules its timers through ``factory._batched_timer.call_later``."""
        self.assertIn("self.factory._batched_timer.call_later", AUTOBAHN_SOURCE)
        clock = Clock()
        factory = WebSocketServerFactory()
        _private.use_reactor_timers(factory, clock)
        timer = factory._batched_timer.call_later(5, lambda: None)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        timer.cancel()
        timer.cancel()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_data_received(self) -> None:
        """``dataReceived`` only logs and hands the bytes to ``_dataReceived``."""
        self.assertTrue(callable(WebSocketServerProtocol._dataReceived))
        protocol, _ = _server_protocol()
        _private.autobahn_data_received(protocol, b"GET / HTTP/1.1\r\n")
        self.assertEqual(protocol.data, b"GET / HTTP/1.1\r\n")

    def test_timer_attributes(self) -> None:
        """The four timers Autobahn may leave armed are attributes of the protocol."""
        clock = Clock()
        protocol, _ = _server_protocol(clock)
        for name in _private.AUTOBAHN_TIMERS:
            self.assertTrue(hasattr(protocol, name), name)
            self.assertIn(f"self.{name}", AUTOBAHN_SOURCE)
        protocol.autoPingPendingCall = clock.callLater(1, lambda: None)
        _private.cancel_autobahn_timers(protocol)
        self.assertIsNone(protocol.autoPingPendingCall)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_futures(self) -> None:
        """``is_open`` and ``is_closed`` are the futures that make the cycle."""
        protocol, _ = _server_protocol()
        self.assertIsNotNone(protocol.is_open)
        self.assertIsNotNone(protocol.is_closed)
        _private.drop_autobahn_futures(protocol)
        self.assertIsNone(protocol.is_open)

    def test_message_data(self) -> None:
        """The fragments of the message being received are ``message_data``."""
        self.assertIn("self.message_data.append(", AUTOBAHN_SOURCE)

    def test_frame_head(self) -> None:
        """Our frame header is byte for byte the one ``sendMessage`` writes."""
        protocol, transport = _server_protocol()
        protocol.state = protocol.STATE_OPEN
        protocol.websocket_version = 13
        protocol._perMessageCompress = None
        for length in (0, 1, 125, 126, 65535, 65536, 70000):
            transport.clear()
            payload = b"x" * length
            protocol.sendMessage(payload, isBinary=True)
            self.assertEqual(transport.value(), _private.binary_frame_head(length) + payload)


class TwistedCanaries(SynchronousTestCase):
    def test_buffer_size_on_tls(self) -> None:
        """On a TLS wrapper, ``bufferSize`` is not forwarded: set_buffer_size sets both."""
        from twisted.internet.ssl import CertificateOptions

        wrapped = Factory.forProtocol(Protocol)
        tls = TLSMemoryBIOFactory(CertificateOptions(), True, wrapped)
        tls_protocol = tls.buildProtocol(None)
        inner = StringTransport()
        inner.bufferSize = 1  # type: ignore[attr-defined]
        tls_protocol.makeConnection(inner)
        tls_protocol.bufferSize = 12345
        self.assertEqual(inner.bufferSize, 1)  # type: ignore[attr-defined]
        _private.set_buffer_size(tls_protocol, 4321)
        self.assertEqual(inner.bufferSize, 4321)  # type: ignore[attr-defined]

    def test_transport_unsent(self) -> None:
        """A FileDescriptor's unsent bytes are ``_tempDataLen``, ``dataBuffer``, ``offset``."""
        from twisted.internet.abstract import FileDescriptor

        descriptor = FileDescriptor(Clock())  # type: ignore[arg-type]
        self.assertEqual(_private.transport_unsent(descriptor), 0)
        descriptor._tempDataBuffer.append(b"abc")
        descriptor._tempDataLen += 3
        self.assertEqual(_private.transport_unsent(descriptor), 3)
        self.assertEqual(_private.transport_unsent(object()), 0)

    def test_request_has_body(self) -> None:
        """HTTPChannel keeps the body decoder of the request it parses in ``_transferDecoder``."""
        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        self.assertFalse(_private.request_has_body(channel))
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX: y\r\n")
        self.assertTrue(_private.request_has_body(channel))

    def test_raise_synchronously(self) -> None:
        """StreamServerEndpointService re-raises a listen failure when told to."""
        self.assertIn("_raiseSynchronously", inspect.getsource(StreamServerEndpointService))

        class Failing:
            def listen(self, factory: object) -> object:
                from twisted.internet.defer import fail

                return fail(OSError("no"))

        service = StreamServerEndpointService(Failing(), Factory())  # type: ignore[arg-type]
        _private.raise_listen_errors(service)
        self.assertRaises(OSError, service.startService)

    def test_option_handlers(self) -> None:
        """usage.Options keeps a handler per long option in ``_dispatch``."""

        class Options(usage.Options):
            optParameters = [["size", None, "1", "a size", int]]

        handlers = _private.option_handlers(Options())
        self.assertIsInstance(handlers["size"], usage.CoerceParameter)

    def test_gai_resolver(self) -> None:
        """GAIResolver still lives in twisted.internet._resolver and resolves host names."""
        self.assertTrue(IHostnameResolver.implementedBy(_private.GAIResolver))


class TLSCanaries(SynchronousTestCase):
    def test_trust_root(self) -> None:
        """IOpenSSLTrustRoot's one (private) method is still ``_addCACertsToContext``."""
        from OpenSSL import SSL
        from twisted.internet._sslverify import IOpenSSLTrustRoot

        self.assertIn("_addCACertsToContext", IOpenSSLTrustRoot.names())
        root = _private.trust_root(None)
        self.assertTrue(IOpenSSLTrustRoot.providedBy(root))
        root._addCACertsToContext(SSL.Context(SSL.TLS_METHOD))

    def test_verify_callback(self) -> None:
        """Twisted's ClientTLSOptions keeps its host name and builds ``_verifyCB`` from it."""
        from twisted.internet import _sslverify
        from twisted.internet.ssl import optionsForClientTLS

        creator = optionsForClientTLS("imap.test")
        self.assertTrue(creator._hostnameIsDnsName)
        self.assertEqual(creator._hostnameASCII, "imap.test")
        self.assertTrue(callable(_sslverify._verifyCB))
        self.assertIn("_verifyCB(", inspect.getsource(_sslverify.ClientTLSOptions))

    def test_client_tls_options(self) -> None:
        """ClientTLSOptions(createConnection, hostname) over CertificateOptions' own
        ``_makeTLSConnection``: what optionsForClientTLS returns, with a shared context."""
        from twisted.internet import _sslverify
        from twisted.internet.ssl import CertificateOptions, optionsForClientTLS

        self.assertIn(
            "ClientTLSOptions(\n        certificateOptions._makeTLSConnection, hostname",
            inspect.getsource(_sslverify.optionsForClientTLS),
        )
        shared = CertificateOptions(trustRoot=_private.trust_root(None))
        creator = _private.client_tls_for("imap.test", shared)
        self.assertIsInstance(creator, type(optionsForClientTLS("imap.test")))
        self.assertEqual(creator._hostnameASCII, "imap.test")
