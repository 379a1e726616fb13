"""The TcpSocketManager fingerprint (protocol.md A.5)."""

from tcpsocket.fingerprint import TCPSOCKET_FINGERPRINT, TCPSOCKET_SIGNATURE, fingerprint

__all__ = ["TCPSOCKET_FINGERPRINT", "TCPSOCKET_SIGNATURE", "fingerprint"]
