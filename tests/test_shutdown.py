"""Graceful shutdown: every accepted byte reaches a slow remote before the daemon stops.

Embedded (``TcpSocketService.stopService``) and as a real ``twistd -n
tcpsocket`` process stopped with SIGTERM, with byte counts and hashes.
"""

from __future__ import annotations

import hashlib
import os
import signal
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tcpsocket.site import TcpSocketService
from tests.session_helpers import (
    SMALL_BUFFER,
    HashingSink,
    MiB,
    PausedSink,
    listen_small,
    pattern,
    shrink_send_buffer,
    unix_manager,
)
from tests.support import (
    capture_logs,
    open_sockets,
    start_twistd,
    temp_dir,
    test_config,
    wait_until,
)

ACCEPTED = 8 * MiB


class Received(Protocol):
    """Keeps what it receives."""

    data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class SlowSink(HashingSink):
    """Reads 256 KiB, then rests a moment, once :meth:`go` is called: a slow remote."""

    burst = 256 * 1024

    def go(self) -> None:
        self.on_pause = lambda: reactor.callLater(0.01, self.resume)  # type: ignore[attr-defined]
        self.resume()


async def send_accepted(client: Any, service: int, socket_id: int) -> bytes:
    """Have the daemon accept :data:`ACCEPTED` bytes for the remote; returns them."""
    data = pattern(ACCEPTED, seed=77)
    for offset in range(0, ACCEPTED, MiB):
        reply = await client.send(service, socket_id, data[offset : offset + MiB])
        assert reply.value in (True, False), reply
    return data


class EmbeddedShutdownTests(TestCase):
    async def start(self, **overrides: Any) -> tuple[TcpSocketService, str]:
        path = str(temp_dir(self) / "d.sock")
        service = TcpSocketService(test_config(**overrides), [f"unix:{path}"], reactor)
        service.startService()

        async def stop() -> None:
            if service.running:
                await service.stopService()

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        await wait_until(lambda: os.path.exists(path))
        return service, path

    async def test_stop_service_flushes_accepted_bytes_to_a_slow_remote(self) -> None:
        fds = open_sockets()
        factory, remote_port = await listen_small(self, SlowSink)
        service, path = await self.start(close_timeout=60)
        client, service_id = await unix_manager(self, path)
        socket_id = await client.open_ok(service_id, remote_port)
        # A small kernel buffer: the daemon itself holds what the remote has not read.
        shrink_send_buffer(service.site, service_id, socket_id)
        data = await send_accepted(client, service_id, socket_id)
        (sink,) = factory.connections
        assert isinstance(sink, SlowSink)
        self.assertLess(sink.count, ACCEPTED // 2)  # most of it waits in the daemon

        stopped = service.stopService()
        at_stop: list[int] = []
        stopped.addCallback(lambda _: at_stop.append(sink.count))
        # The client is told at once; the remote keeps getting its bytes.
        self.assertEqual(await client.raw.closed, (1001, "daemon stopping"))
        self.assertEqual(at_stop, [])
        sink.go()
        await stopped
        # When it fires, only what the kernel's small socket buffers hold is on the way.
        self.assertGreaterEqual(at_stop[0], ACCEPTED - 2 * SMALL_BUFFER - 2 * SMALL_BUFFER)
        await wait_until(lambda: sink.reason is not None)
        self.assertEqual(sink.count, ACCEPTED)
        self.assertEqual(sink.digest.hexdigest(), hashlib.sha256(data).hexdigest())
        self.assertTrue(sink.clean_eof)
        self.assertEqual(len(service.site.session_factory.connections), 0)
        await wait_until(lambda: open_sockets() <= fds + 1)  # + the remote's listening socket

    async def test_what_cannot_be_delivered_in_time_is_reported(self) -> None:
        logs = capture_logs(self)
        _, remote_port = await listen_small(self, PausedSink)  # never reads
        service, path = await self.start(close_timeout=1)
        client, service_id = await unix_manager(self, path)
        socket_id = await client.open_ok(service_id, remote_port)
        shrink_send_buffer(service.site, service_id, socket_id)
        await send_accepted(client, service_id, socket_id)
        await service.stopService()
        errors = [
            e for e in logs if e.get("log_level") is not None and e["log_level"].name == "error"
        ]
        lost = [e["undelivered"] for e in errors if "undelivered" in e]
        self.assertEqual(len(lost), 1, errors)
        self.assertGreater(lost[0], ACCEPTED // 2)
        summary = [e for e in errors if "sockets could not deliver" in e["log_format"]]
        self.assertEqual((summary[0]["sockets"], summary[0]["bytes"]), (1, lost[0]))

    async def test_new_sessions_are_refused_while_stopping(self) -> None:
        factory, remote_port = await listen_small(self, PausedSink)
        service, path = await self.start(close_timeout=60)
        client, service_id = await unix_manager(self, path)
        socket_id = await client.open_ok(service_id, remote_port)
        shrink_send_buffer(service.site, service_id, socket_id)
        await send_accepted(client, service_id, socket_id)
        # An HTTP connection accepted before the stop (it got a page), upgrading only after it.
        late = await connectProtocol(UNIXClientEndpoint(reactor, path), Received())
        late.transport.write(b"GET /api/v1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await wait_until(lambda: b"\r\n\r\n" in late.data)
        late.data = b""
        stopped = service.stopService()
        done: list[None] = []
        stopped.addCallback(done.append)
        await client.raw.closed
        self.assertFalse(os.path.exists(path))  # no longer listening
        late.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await wait_until(lambda: b"HTTP/1.1 503" in late.data or b"HTTP/1.1 101" in late.data)
        self.assertIn(b"HTTP/1.1 503", late.data)
        self.assertEqual(done, [])
        (sink,) = factory.connections
        assert isinstance(sink, PausedSink)
        sink.resume()
        await stopped


class TwistdShutdownTests(TestCase):
    async def test_sigterm_mid_transfer_delivers_everything(self) -> None:
        factory, remote_port = await listen_small(self, SlowSink)
        collect, path = await start_twistd(self, "--close-timeout", "60")
        client, service_id = await unix_manager(self, path)
        socket_id = await client.open_ok(service_id, remote_port)
        data = await send_accepted(client, service_id, socket_id)
        (sink,) = factory.connections
        assert isinstance(sink, SlowSink)

        collect.process.signalProcess(signal.SIGTERM)
        self.assertEqual(await client.raw.closed, (1001, "daemon stopping"))
        sink.go()
        await collect.ended
        log = collect.output.decode()
        # The daemon exits once the kernel has the last bytes (at most its
        # socket buffer, 4 MiB here), which it then delivers, with a FIN.
        await wait_until(lambda: sink.reason is not None, timeout=30)
        self.assertEqual(sink.count, ACCEPTED, log)
        self.assertEqual(sink.digest.hexdigest(), hashlib.sha256(data).hexdigest())
        await wait_until(lambda: sink.reason is not None)
        self.assertTrue(sink.clean_eof)
        self.assertIn("daemon stopping: ending 1 sessions", log)
        self.assertIn("daemon stopped: every socket delivered what it accepted", log)
        self.assertIn("code 1001: daemon stopping; closed by the daemon", log)
