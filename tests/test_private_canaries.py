"""Canaries for every use of Twisted's and Autobahn's private state (tcpsocket/_private.py).

Each test fails loudly when a release changes what one function of
``_private`` relies on; ``setup.py`` bounds the versions they pass with.
"""

from __future__ import annotations

import inspect

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import log as twisted_log
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
        _private.feed_frames(protocol, b"GET / HTTP/1.1\r\n")  # before the upgrade: whole
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


# -- data path (issue 11: write-through, read size) ------------------------------------


class DataPathCanaries(SynchronousTestCase):
    def test_tcp_connection_state_used_by_write_through(self) -> None:
        for name in (
            "connected",
            "disconnecting",
            "_writeDisconnected",
            "_writeDisconnecting",
            "dataBuffer",
            "_tempDataLen",
            "_tempDataBuffer",
            "offset",
        ):
            self.assertTrue(hasattr(abstract.FileDescriptor(), name), name)
        self.assertIn("self._aborting = True", inspect.getsource(tcp.Connection.abortConnection))

    def test_the_producer_pauses_on_what_buffered_counts(self) -> None:
        # _private.buffered counts what FileDescriptor compares with bufferSize.
        source = inspect.getsource(abstract.FileDescriptor._isSendBufferFull)
        self.assertIn("len(self.dataBuffer) + self._tempDataLen > self.bufferSize", source)
        self.assertIn(
            "self._maybePauseProducer()", inspect.getsource(abstract.FileDescriptor.write)
        )

    def test_writes_queue_and_wait_for_the_next_turn(self) -> None:
        # What write_through saves: write() appends to the buffer and registers for writing.
        source = inspect.getsource(abstract.FileDescriptor.write)
        self.assertIn("self._tempDataBuffer.append(data)", source)
        self.assertIn("self.startWriting()", source)

    def test_epoll_poll_is_what_dispatch_without_log_context_repeats(self) -> None:
        # _private._poll is EPollReactor.doPoll without log.callWithLogger around each event.
        from twisted.internet.base import ReactorBase
        from twisted.internet.epollreactor import EPollReactor

        source = inspect.getsource(EPollReactor.doPoll)
        self.assertIn("l = self._poller.poll(timeout, len(self._selectables))", source)
        self.assertIn("selectable = self._selectables[fd]", source)
        self.assertIn("log.callWithLogger(selectable, _drdw, selectable, fd, event)", source)
        self.assertEqual(source.count("self."), 4, "doPoll does more than it did")
        self.assertIs(EPollReactor.doIteration, EPollReactor.doPoll)
        self.assertIn("self.doIteration(t)", inspect.getsource(ReactorBase.mainLoop))
        self.assertIn("self.doIteration(delay)", inspect.getsource(ReactorBase.iterate))
        # What callWithLogger does besides the context: log what escapes, with the system.
        callWithLogger = inspect.getsource(twisted_log.callWithLogger)
        self.assertIn("err(system=lp)", callWithLogger)
        self.assertIn('lp = "(buggy logPrefix method)"', callWithLogger)

    def test_do_read_reads_buffer_size_into_data_received(self) -> None:
        # set_read_size's doRead is tcp.Connection.doRead with another size.
        source = inspect.getsource(tcp.Connection.doRead)
        self.assertIn("self.socket.recv(self.bufferSize)", source)
        self.assertIn("return self._dataReceived(data)", source)
        self.assertTrue(hasattr(tcp.Connection, "_dataReceived"))

    def test_autobahn_writes_its_frames_through_send_data(self) -> None:
        # The session flushes its gathered replies in sendData, before Autobahn's frames.
        params = list(inspect.signature(WebSocketProtocol.sendData).parameters)
        self.assertEqual(params, ["self", "data", "sync", "chopsize"])
        self.assertIn("self.sendData(", inspect.getsource(WebSocketProtocol.sendFrame))
        for method in (WebSocketProtocol.sendCloseFrame, WebSocketProtocol.sendPong):
            self.assertIn("self.sendFrame(", inspect.getsource(method))

    def test_autobahn_hands_over_masked_frames_when_apply_mask_is_off(self) -> None:
        # SessionProtocol.onFrameData unmasks with the frame's mask and the
        # null masker's pointer (bytes of the frame handed over so far).
        from autobahn.websocket.xormasker import XorMaskerNull

        source = inspect.getsource(WebSocketProtocol.processData)
        self.assertIn("frame_masked and frame_payload_len > 0 and self.applyMask", source)
        self.assertIn("self.current_frame_masker = XorMaskerNull()", source)
        self.assertIn("payload = self.current_frame_masker.process(data)", source)
        self.assertIn("fr = self.onFrameData(payload)", source)
        null = XorMaskerNull()
        null.process(b"abc")
        null.process(b"de")
        self.assertEqual(null.pointer(), 5)
        self.assertIn("applyMask", WebSocketProtocol.CONFIG_ATTRS_COMMON)

    def test_autobahn_parser_state_used_by_feed_frames(self) -> None:
        # feed_frames cuts reads where Autobahn's parser is between frames or
        # inside one, and relies on it holding what it was fed in self.data.
        source = inspect.getsource(WebSocketProtocol.processData)
        self.assertIn(
            "rest = self.current_frame.length - self.current_frame_masker.pointer()", source
        )
        self.assertIn("self.current_frame = FrameHeader(", source)
        self.assertIn("if self.current_frame is None:", source)
        self.assertIn("self.data = self.data[i:]", source)  # the re-slicing it avoids
        self.assertIn("self.data += data", inspect.getsource(WebSocketProtocol._dataReceived))
        self.assertIn("self.current_frame = None", inspect.getsource(WebSocketProtocol.onFrameEnd))

    def test_tls_is_a_class_attribute_that_start_tls_sets(self) -> None:
        # plain_tcp reads ``transport.TLS`` without a default: False on the class,
        # True once startTLS ran on the connection.
        self.assertIs(tcp.Connection.TLS, False)
        from twisted.internet import _newtls

        self.assertIn("transport.TLS = True", inspect.getsource(_newtls))

    def test_what_autobahn_does_with_a_whole_small_binary_frame(self) -> None:
        # feed_frames' whole-message path does what Autobahn's parser does for an
        # unfragmented masked binary frame between messages, when nothing else is on.
        source = inspect.getsource(WebSocketProtocol)
        for counted in (
            "self.trafficStats.incomingOctetsWireLevel += len(data)",
            "self.trafficStats.incomingOctetsWebSocketLevel += compressedLen",
            "self.trafficStats.incomingOctetsAppLevel += uncompressedLen",
            "self.trafficStats.incomingWebSocketFrames += 1",
            "self.trafficStats.incomingWebSocketMessages += 1",
        ):
            self.assertEqual(source.count(counted), 1, counted)
        # What it checks or does besides, each of which sends a frame to Autobahn.
        for other in (
            "if self.logOctets:",
            "if self.logFrames:",
            "if self.trackedTimings:",
            "if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:",
            "if not self.failedByMe:",
            "0 < self.maxMessagePayloadSize < self.message_data_total_length",
            "0 < self.maxFramePayloadSize < length",
            'f = self.fire("message", payload, is_binary=self.message_is_binary)',
            "self._onMessage(payload, self.message_is_binary)",
            "if not self.inside_message and frame_opcode == 0:",
            "if self.inside_message and frame_opcode != 0:",
        ):
            self.assertIn(other, source)
        from autobahn.util import ObservableMixin

        self.assertIn(
            "if self._listeners is None:\n            return txaio.create_future(result=[])",
            inspect.getsource(ObservableMixin.fire),
        )
        self.assertIsNone(ObservableMixin._listeners)
        protocol, _ = _server_protocol()
        protocol._dataReceived(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        for name in (
            "inside_message",
            "failedByMe",
            "logOctets",
            "logFrames",
            "trackedTimings",
            "autoPingTimeoutCall",
            "maxMessagePayloadSize",
            "maxFramePayloadSize",
            "trafficStats",
        ):
            self.assertTrue(hasattr(protocol, name), name)
        self.assertIn(
            "self.onMessage(payload, isBinary)",
            inspect.getsource(WebSocketServerProtocol._onMessage),
        )
