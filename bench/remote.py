"""The remote TCP servers of the benchmark, run as their own process.

One port, and the first byte a client sends picks the behaviour (so one websockify
instance, which proxies to one fixed target, can reach all of them):

* ``E``: echo everything that follows;
* ``S`` + 8-byte big-endian N: source, stream N bytes then close (256 KiB per event-loop
  turn, so that concurrent sources take turns);
* ``K`` + 8-byte big-endian N: sink, count what follows and answer the 8-byte count once
  N bytes have arrived (the upload's end-to-end acknowledgement).

Usage: ``python -m bench.remote`` prints ``{"port": P, "pid": PID}`` on one line and serves
until SIGTERM, until its parent exits, or until ``--max-seconds`` pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys

from bench.procstat import raise_nofile_limit

CHUNK = 256 * 1024
_BLOCK = memoryview(bytes(range(256)) * (CHUNK // 256))


class RemoteProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.mode = 0
        self.head = b""
        self.remaining = 0
        self.expected = 0
        self.received = 0
        self.paused = False
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        mode = self.mode
        if mode == 0x45:  # E
            self.transport.write(data)  # type: ignore[union-attr]
            return
        if mode == 0x4B:  # K
            self._count(len(data))
            return
        if mode == 0:
            self.head += data
            command = self.head[0]
            if command == 0x45:
                self.mode = command
                rest = self.head[1:]
                self.head = b""
                if rest:
                    self.transport.write(rest)  # type: ignore[union-attr]
                return
            if command not in (0x53, 0x4B) or len(self.head) < 9:
                if command not in (0x53, 0x4B):
                    self.transport.abort()  # type: ignore[union-attr]
                return
            self.mode = command
            size = int.from_bytes(self.head[1:9], "big")
            rest = self.head[9:]
            self.head = b""
            if command == 0x53:  # S
                self.remaining = size
                self._pump()
            else:
                self.expected = size
                self._count(len(rest))

    def _count(self, n: int) -> None:
        before = self.received
        self.received += n
        if before < self.expected <= self.received:
            self.transport.write(self.received.to_bytes(8, "big"))  # type: ignore[union-attr]

    def _pump(self) -> None:
        """Write one chunk, then let the other sources have their turn: many downloads at
        once are served round-robin, so the remote itself is fair to them."""
        self.scheduled = False
        transport = self.transport
        if transport is None or self.paused:
            return
        if self.remaining:
            n = min(CHUNK, self.remaining)
            transport.write(_BLOCK[:n])
            self.remaining -= n
        if not self.remaining:
            if not transport.is_closing():
                transport.close()  # flushes what is buffered, then FIN
        elif not self.paused:
            self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == 0x53:
            self._schedule()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(max_seconds: float, tls_dir: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    context = None
    if tls_dir is not None:
        # TLS from the first byte, with the certificate of bench/tlscert.py.
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(f"{tls_dir}/server.pem", f"{tls_dir}/server.key")
    server = await loop.create_server(RemoteProtocol, "127.0.0.1", 0, backlog=4096, ssl=context)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    parent = os.getppid()
    deadline = loop.time() + max_seconds
    while not stop.is_set() and loop.time() < deadline and os.getppid() == parent:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--tls-dir", help="serve TLS with server.pem/server.key of this directory")
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.max_seconds, args.tls_dir))


if __name__ == "__main__":
    main()
