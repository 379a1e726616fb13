"""The bincode primitives and messages against protocol.md A.1 and the vectors of D."""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.bincode import DecodeError, Reader, encode_i64, encode_string, encode_varint
from tcpsocket.fingerprint import fingerprint
from tcpsocket.messages import (
    Core,
    GetService,
    GetServiceResult,
    HasService,
    Kind,
    ObjectRef,
    decode_base,
    decode_core_request,
    decode_core_response,
    decode_handshake,
    encode_ack,
    encode_core_bool_response,
    encode_event,
    encode_get_service_response,
    encode_handshake,
    encode_request,
    encode_response,
)
from tcpsocket.services.tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT, TCPSOCKET_SIGNATURE
from tcpsocket.services.tcpsocket.messages import (
    Event,
    Method,
    Reply,
    SocketReply,
    data_event_head,
    decode_socket_reply,
    decode_socket_request,
    encode_data_event,
    encode_error_event,
    encode_method,
    encode_open,
    encode_open_success,
    encode_reply,
    encode_send,
    encode_send_success,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


FP = TCPSOCKET_FINGERPRINT.encode()
GET_SERVICE_3 = h("00 00 00 03 4d 00 10") + b"TcpSocketManager" + h("3a") + FP
HAS_SERVICE_17 = h("00 00 00 11 12 01 10") + b"TcpSocketManager"
OPEN_5 = h("01 00 00 05 0e 04 09 31 32 37 2e 30 2e 30 2e 31 fb 3d 8c")


class FingerprintTests(SynchronousTestCase):
    def test_recomputed_from_signature(self) -> None:
        self.assertEqual(
            fingerprint(TCPSOCKET_SIGNATURE),
            "80b7d391444db6fd2eca3b489c6c4aac8144ad3de7852f5b476abb17bf",
        )
        self.assertEqual(len(TCPSOCKET_FINGERPRINT), 58)

    def test_unpadded_hex(self) -> None:
        # Digest bytes below 0x10 are written with one hex digit.
        digest = hashlib.sha256(b"abc").digest()
        self.assertEqual(fingerprint(["ab", "c"]), "".join(format(b, "x") for b in digest))
        self.assertLess(len(fingerprint(["ab", "c"])), 64)


class OldHomeTests(SynchronousTestCase):
    """TcpSocketManager's names moved to its service package but import from their old places."""

    def test_messages_old_names(self) -> None:
        from tcpsocket import messages
        from tcpsocket.services.tcpsocket import messages as service_messages

        for name in service_messages.__all__:
            self.assertIs(getattr(messages, name), getattr(service_messages, name), name)
        with self.assertRaises(AttributeError):
            messages.__getattr__("NoSuchName")

    def test_fingerprint_old_names(self) -> None:
        from tcpsocket import fingerprint as shared

        self.assertEqual(shared.TCPSOCKET_FINGERPRINT, TCPSOCKET_FINGERPRINT)
        self.assertEqual(shared.TCPSOCKET_SIGNATURE, TCPSOCKET_SIGNATURE)
        with self.assertRaises(AttributeError):
            shared.__getattr__("NoSuchName")

    def test_session_messages_hold_no_service_names(self) -> None:
        from tcpsocket import messages

        self.assertNotIn("Method", vars(messages))
        self.assertNotIn("encode_open", vars(messages))
        self.assertIn("BaseMessage", vars(messages))


class VarintTests(SynchronousTestCase):
    def test_shortest_forms(self) -> None:
        for value, encoded in [
            (0, "00"),
            (250, "fa"),
            (251, "fb 00 fb"),
            (65535, "fb ff ff"),
            (65536, "fc 00 01 00 00"),
            (2**32 - 1, "fc ff ff ff ff"),
            (2**32, "fd 00 00 00 01 00 00 00 00"),
        ]:
            self.assertEqual(encode_varint(value), h(encoded), value)
            self.assertEqual(Reader(h(encoded)).u64(), value)

    def test_accepts_long_forms(self) -> None:
        self.assertEqual(Reader(h("fd 00 00 00 00 00 01 00 00")).u32(), 65536)
        self.assertEqual(Reader(h("fb 00 05")).u32(), 5)
        self.assertEqual(Reader(h("fc 00 00 00 07")).u32(), 7)

    def test_rejects_overflow(self) -> None:
        self.assertRaises(DecodeError, Reader(h("fd 00 00 00 01 00 00 00 00")).u32)
        self.assertRaises(DecodeError, Reader(h("fe")).u64)
        self.assertRaises(DecodeError, Reader(h("ff")).u64)

    def test_truncated(self) -> None:
        self.assertRaises(DecodeError, Reader(h("fb 01")).u32)
        self.assertRaises(DecodeError, Reader(b"").u32)
        self.assertRaises(DecodeError, Reader(h("05 61")).binary)

    def test_zigzag(self) -> None:
        self.assertEqual(encode_i64(7878), h("fb 3d 8c"))
        self.assertEqual(encode_i64(-1), h("01"))
        for value in (0, 1, -1, 70000, -(2**63), 2**63 - 1):
            self.assertEqual(Reader(encode_i64(value)).i64(), value)

    def test_bool_and_utf8(self) -> None:
        self.assertRaises(DecodeError, Reader(h("02")).boolean)
        self.assertRaises(DecodeError, Reader(h("02 c3 28")).string)
        self.assertEqual(Reader(encode_string("héllo")).string(), "héllo")


class VectorTests(SynchronousTestCase):
    """Every vector of protocol.md section D."""

    def test_handshake(self) -> None:
        self.assertEqual(encode_handshake("abc"), h("03 61 62 63"))
        self.assertEqual(decode_handshake(h("03 61 62 63")), "abc")
        self.assertEqual(encode_ack(True), h("01"))
        self.assertEqual(encode_ack(False), h("00"))
        self.assertRaises(DecodeError, decode_handshake, h("03 61 62 63 00"))

    def test_get_service(self) -> None:
        content = GetService("TcpSocketManager", TCPSOCKET_FINGERPRINT).encode()
        self.assertEqual(encode_request(0, 0, 3, content), GET_SERVICE_3)
        message = decode_base(GET_SERVICE_3)
        self.assertEqual(
            (message.service, message.object, message.kind, message.request),
            (0, 0, Kind.REQUEST, 3),
        )
        self.assertEqual(
            decode_core_request(message.content),
            GetService("TcpSocketManager", TCPSOCKET_FINGERPRINT),
        )

    def test_get_service_replies(self) -> None:
        for result, value, vector in [
            (GetServiceResult.SUCCESS, 1, "00 00 01 03 03 00 00 01"),
            (GetServiceResult.MISSING_PERMISSION, 0, "00 00 01 03 02 00 03"),
            (GetServiceResult.FINGERPRINT_MISMATCH, 0, "00 00 01 03 02 00 02"),
            (GetServiceResult.UNKNOWN_SERVICE, 0, "00 00 01 03 02 00 01"),
        ]:
            content = encode_get_service_response(result, value)
            self.assertEqual(encode_response(0, 0, 3, content), h(vector))
            decoded = decode_core_response(decode_base(h(vector)).content)
            self.assertEqual(decoded.result, result)
        self.assertEqual(decode_core_response(h("00 00 01")).value, 1)

    def test_has_service(self) -> None:
        self.assertEqual(
            encode_request(0, 0, 17, HasService("TcpSocketManager").encode()), HAS_SERVICE_17
        )
        self.assertEqual(
            decode_core_request(decode_base(HAS_SERVICE_17).content), HasService("TcpSocketManager")
        )

    def test_open(self) -> None:
        self.assertEqual(encode_request(1, 0, 5, encode_open("127.0.0.1", 7878)), OPEN_5)
        request = decode_socket_request(decode_base(OPEN_5).content)
        self.assertEqual(
            (request.method, request.host, request.port), (Method.OPEN, "127.0.0.1", 7878)
        )
        self.assertEqual(
            encode_response(1, 0, 5, encode_open_success(1)), h("01 00 01 05 02 0c 01")
        )
        self.assertEqual(
            encode_response(1, 0, 5, encode_reply(Reply.OPEN_ERROR)), h("01 00 01 05 01 0d")
        )
        self.assertEqual(decode_socket_reply(h("0c 01")), SocketReply(Reply.OPEN_SUCCESS, 1))

    def test_enable_event(self) -> None:
        vector = h("00 00 00 07 04 03 01 01 01")
        enable = ObjectRef(Core.ENABLE_EVENT, 1, 1, Event.DATA)
        self.assertEqual(encode_request(0, 0, 7, enable.encode()), vector)
        self.assertEqual(decode_core_request(decode_base(vector).content), enable)
        reply = encode_core_bool_response(Core.ENABLE_EVENT, True)
        self.assertEqual(encode_response(0, 0, 7, reply), h("00 00 01 07 02 03 01"))

    def test_send(self) -> None:
        vector = h("01 01 00 09 07 02 05 48 65 6c 6c 6f")
        self.assertEqual(encode_request(1, 1, 9, encode_send(b"Hello")), vector)
        self.assertEqual(decode_socket_request(decode_base(vector).content).data, b"Hello")
        self.assertEqual(
            encode_response(1, 1, 9, encode_send_success(True)), h("01 01 01 09 02 04 01")
        )
        self.assertEqual(decode_socket_reply(h("04 01")), SocketReply(Reply.SEND_SUCCESS, True))

    def test_events(self) -> None:
        self.assertEqual(
            encode_event(1, 1, encode_data_event(b"Hello")), h("01 01 02 07 09 05 48 65 6c 6c 6f")
        )
        self.assertEqual(encode_event(1, 1, encode_reply(Reply.CLOSE_EVENT)), h("01 01 02 01 08"))
        self.assertEqual(encode_event(1, 1, encode_error_event("x")), h("01 01 02 03 0b 01 78"))
        message = decode_base(h("01 01 02 07 09 05 48 65 6c 6c 6f"))
        self.assertEqual((message.kind, message.request), (Kind.EVENT, None))
        self.assertEqual(decode_socket_reply(message.content).value, b"Hello")

    def test_data_event_head(self) -> None:
        # The zero-copy DATA framing writes the same bytes as the plain encoder.
        self.assertEqual(data_event_head(1, 1, 5) + b"Hello", h("01 01 02 07 09 05 48 65 6c 6c 6f"))
        for size in (0, 240, 250, 251, 65535, 65536, 70000):
            data = bytes(range(256)) * (size // 256) + bytes(size % 256)
            self.assertEqual(
                data_event_head(3, 300, size) + data,
                encode_event(3, 300, encode_data_event(data)),
            )

    def test_close(self) -> None:
        close = encode_method(Method.CLOSE)
        self.assertEqual(encode_request(1, 1, 11, close), h("01 01 00 0b 01 00"))
        self.assertEqual(
            encode_response(1, 1, 11, encode_reply(Reply.CLOSE_SUCCESS)), h("01 01 01 0b 01 00")
        )

    def test_release_and_disable(self) -> None:
        release = h("00 00 00 0d 03 02 01 01")
        disable = h("00 00 00 0f 04 04 01 01 01")
        self.assertEqual(
            decode_core_request(decode_base(release).content), ObjectRef(Core.RELEASE_OBJECT, 1, 1)
        )
        self.assertEqual(
            decode_core_request(decode_base(disable).content),
            ObjectRef(Core.DISABLE_EVENT, 1, 1, Event.DATA),
        )
        self.assertEqual(
            encode_request(0, 0, 13, ObjectRef(Core.RELEASE_OBJECT, 1, 1).encode()), release
        )

    def test_error_detail_extension(self) -> None:
        content = encode_reply(Reply.OPEN_ERROR, "connection refused")
        self.assertEqual(content, h("0d 12") + b"connection refused")
        self.assertEqual(decode_socket_reply(content).detail, "connection refused")
        self.assertIsNone(decode_socket_reply(h("0d")).detail)


class MalformedTests(SynchronousTestCase):
    def test_trailing_bytes(self) -> None:
        self.assertRaises(DecodeError, decode_base, OPEN_5 + b"\x00")
        self.assertRaises(DecodeError, decode_socket_request, h("00 00"))
        self.assertRaises(DecodeError, decode_core_request, h("01 01 41 00"))

    def test_unknown_tags(self) -> None:
        self.assertRaises(DecodeError, decode_base, h("00 00 04 00"))
        self.assertRaises(DecodeError, decode_socket_request, h("05"))
        self.assertRaises(DecodeError, decode_core_request, h("05"))
        self.assertRaises(DecodeError, decode_socket_reply, h("0e"))

    def test_lenient_base_for_clients(self) -> None:
        message = decode_base(h("01 01 02 01 08 ff"), strict=False)
        self.assertEqual(message.content, h("08"))

    def test_permission_error(self) -> None:
        message = decode_base(h("01 00 03 05 0a") + b"tcp-socket" + h("02") + b"no" + h("02 01 00"))
        self.assertEqual(
            (message.kind, message.permission, message.message),
            (Kind.PERMISSION_ERROR, "tcp-socket", "no"),
        )
