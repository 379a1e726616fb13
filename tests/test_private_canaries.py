"""Canaries: the private Twisted/Autobahn state that ``tcpsocket/_private.py`` relies on.

Each test fails when a release changes what a function of ``_private`` assumes.
"""

from __future__ import annotations

import inspect

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import abstract, tcp
from twisted.trial.unittest import SynchronousTestCase

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
