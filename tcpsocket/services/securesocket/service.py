"""SecureTcpSocketManager: TcpSocketManager's sockets, with TLS from the start or STARTTLS.

TLS runs in the daemon, over the same :class:`~tcpsocket.remote.RemoteSocket`
as a plain socket (``ITLSTransport.startTLS`` on its TCP transport), so flow
control, suspend/resume, DRAIN, held DATA and the CLOSE/ERROR order are the
plain socket's (doc/behaviour.md); the destination policy and every limit
apply in ``open`` as for plain sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener, ITCPTransport, ITLSTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpsocket import fastpath
from tcpsocket.remote import RemoteSocket, SocketError
from tcpsocket.services.securesocket.messages import (
    SecureOpen,
    SocketInfo,
    TlsInfo,
    TlsOptions,
    UpgradeRequest,
    decode_secure_request,
    encode_upgrade_error,
    encode_upgrade_success,
)
from tcpsocket.services.securesocket.tls import client_creator, describe_tls_failure, tls_info
from tcpsocket.services.tcpsocket.service import TcpSocketManagerService

__all__ = ["SecureRemoteSocket", "SecureSocketService", "TlsFailed"]


class TlsFailed(Exception):
    """A TLS handshake failed; the message is the reason for the client."""


@implementer(IHandshakeListener)
class SecureRemoteSocket(RemoteSocket):
    """A remote connection that can start TLS, once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The host the client asked for: the default TLS server name.
        self.host = ""
        #: What TLS negotiated (``secure`` is False until it has).
        self.tls = TlsInfo()
        self._handshake: Deferred[TlsInfo] | None = None
        self._tls_connection: Any = None
        self._creator: Any = None

    def start_tls(self, creator: Any) -> Deferred[TlsInfo]:
        """Start TLS (what was sent before goes in the clear); fires with what it negotiated,
        or fails with :class:`TlsFailed` (the connection is then lost)."""
        transport: Any = self.transport
        if self.state != "open" or transport is None:
            raise SocketError(f"socket is {self.state}")
        if self._tls_connection is not None:
            raise SocketError("socket is already secure")
        if not ITLSTransport.providedBy(transport):
            raise SocketError("this connection cannot start TLS")
        # Bytes accepted before the upgrade go in the clear, before the handshake:
        # those gathered for this read's batch first (tcpsocket.fastpath), then the queue.
        fastpath.flush(transport)
        while self._queue:
            chunk = self._queue.popleft()
            self._queued -= len(chunk)
            transport.write(chunk)
        # Sends during the handshake queue here, bounded as ever, and go encrypted after it.
        self._writable = False
        self._creator = creator
        transport.startTLS(creator)
        self._tls_connection = self.transport.getHandle()  # type: ignore[union-attr]
        self._handshake = Deferred(lambda _: transport.abortConnection())
        return self._handshake

    def handshakeCompleted(self) -> None:
        handshake, self._handshake = self._handshake, None
        self.tls = tls_info(self._tls_connection)
        if handshake is not None:
            handshake.callback(self.tls)
        self._transport_drained()

    def connectionLost(self, reason: Failure | None = None) -> None:
        handshake, self._handshake = self._handshake, None
        why = ""
        if handshake is not None:
            code = getattr(self._creator, "verify_error", 0)
            why = describe_tls_failure(reason, code) if reason else "closed"
            self._error = why
        if reason is None:
            super().connectionLost()
        else:
            super().connectionLost(reason)
        # Once closed, so that what the failure's callbacks do finds the socket gone.
        if handshake is not None and not handshake.called:
            handshake.errback(TlsFailed(why))


class SecureSocketService(TcpSocketManagerService):
    """One SecureTcpSocketManager instance of a session."""

    socket_class = SecureRemoteSocket
    #: A ``send`` decodes and is answered as TcpSocketManager's.
    plain_send = True

    def decode(self, content: memoryview) -> Any:
        return decode_secure_request(content)

    def handle_request(self, object_id: int, request_id: int, request: Any) -> None:
        if isinstance(request, UpgradeRequest):
            self._upgrade(object_id, request_id, request.tls)
        else:
            super().handle_request(object_id, request_id, request)

    async def prepare(self, socket: RemoteSocket, options: Any) -> None:
        assert isinstance(socket, SecureRemoteSocket) and isinstance(options, SecureOpen)
        socket.host = _server_name(options.host)
        transport: Any = socket.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(options.no_delay)
            transport.setTcpKeepAlive(options.keep_alive)
        if options.use_secure_transport:
            creator = self._creator(socket, options.tls)
            await socket.start_tls(creator)

    def open_answer(self, socket: RemoteSocket) -> bytes:
        assert isinstance(socket, SecureRemoteSocket)
        transport: Any = socket.transport
        peer, local = transport.getPeer(), transport.getHost()
        info = SocketInfo(
            socket.socket_id,
            getattr(peer, "host", ""),
            getattr(peer, "port", 0),
            getattr(local, "host", ""),
            getattr(local, "port", 0),
            socket.tls,
        )
        return info.encode()

    def _creator(self, socket: SecureRemoteSocket, options: TlsOptions) -> Any:
        config = self.session.config
        return client_creator(socket.host, options, config.tls_ca_file, config.tls_no_verify)

    def _upgrade(self, object_id: int, request_id: int, options: TlsOptions) -> None:
        def fail(reason: str) -> None:
            self._respond(object_id, request_id, encode_upgrade_error(reason))

        if object_id == 0:
            return fail("upgradeToSecure is a method of a socket, not of the service")
        socket = self.sockets.get(object_id)
        if socket is None:
            return fail(
                f"socket {object_id} is closed"
                if object_id < self._next_id
                else f"unknown socket {object_id}"
            )
        assert isinstance(socket, SecureRemoteSocket)
        try:
            handshake = socket.start_tls(self._creator(socket, options))
        except (SocketError, ValueError) as e:
            return fail(str(e))

        def done(info: TlsInfo) -> None:
            self._respond(object_id, request_id, encode_upgrade_success(info))

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError):
                fail("the socket was released")
            else:
                fail(str(reason.value))

        handshake.addCallbacks(done, failed)


def _server_name(host: str) -> str:
    """The name TLS verifies by default: the host as the client gave it."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".").lower()
