"""The TcpSocketManager messages (protocol.md A.5).

They are defined in :mod:`tcpsocket.messages` beside the session's own, where
the clients and api-daemon-compatible code have always found them.
"""

from tcpsocket.messages import (
    EVENT_OF_REPLY,
    PERMISSION,
    REPLIES,
    SERVICE_NAME,
    Event,
    Method,
    Reply,
    SocketReply,
    SocketRequest,
    data_event_head,
    decode_socket_reply,
    decode_socket_request,
    encode_data_event,
    encode_drain_event,
    encode_error_event,
    encode_method,
    encode_open,
    encode_open_success,
    encode_reply,
    encode_send,
    encode_send_success,
)

__all__ = [
    "EVENT_OF_REPLY",
    "PERMISSION",
    "REPLIES",
    "SERVICE_NAME",
    "Event",
    "Method",
    "Reply",
    "SocketReply",
    "SocketRequest",
    "data_event_head",
    "decode_socket_reply",
    "decode_socket_request",
    "encode_data_event",
    "encode_drain_event",
    "encode_error_event",
    "encode_method",
    "encode_open",
    "encode_open_success",
    "encode_reply",
    "encode_send",
    "encode_send_success",
]
