"""Flow control through the browser: the JavaScript library in Chromium against the real daemon.

The same scenarios as ``tests/test_flow_control.py`` (protocol.md B.5-B.7, B.10), but with the
page as the client, so Chromium's WebSocket, the library's ``send``/``suspend``/``resume``/DRAIN
and the daemon's bounds are exercised together:

* a download of 32 MiB to a page that suspends and resumes the socket like a slow reader;
* an upload of 16 MiB with the canonical DRAIN loop to a remote that reads slowly;
* a download to a page whose JavaScript thread blocks, so the session WebSocket backs up and the
  daemon pauses the remote (B.10).

Everything is in-process on the reactor (daemon, loopback remotes, app origin); Chromium is
driven from the harness's browser thread (``tests/test_browser.py``). The daemon-side values are
sampled on the reactor: by a ``LoopingCall`` while a transfer runs, and right after the daemon
calls that change them (an event sent, a send accepted), so that peaks are seen. With
``TCPSOCKET_FLOW_STATS=1`` each test prints what it saw (throughput, maxima, pauses) to stderr
(``pytest -s``).
"""

from __future__ import annotations

import hashlib
import os
import random
import socket as stdlib_socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, task

from tests import test_browser as harness  # the module, so its TestCases are not collected twice
from tests.session_helpers import Source
from tests.support import Remote, listen_remote, wait_until

KiB = 1024
MiB = 1024 * KiB
#: Bytes a DATA event adds around its payload (BaseMessage head, tags, lengths, frame header:
#: about 24), with room for the few small responses (suspend, resume) written while congested.
FRAMING = 1024
#: How often the reactor samples the daemon while a transfer runs, in seconds.
SAMPLE_EVERY = 0.002


def pattern(size: int, seed: int) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def transport_buffered(transport: Any) -> int | None:
    """Bytes a Twisted TCP transport holds that the kernel has not taken (None if unknown).

    Reads ``FileDescriptor`` internals: tests only.
    """
    try:
        return int(transport._tempDataLen + len(transport.dataBuffer) - transport.offset)
    except (AttributeError, TypeError):
        return None


def small_kernel_buffer(transport: Any, option: int, size: int = 16 * KiB) -> None:
    """Fix a kernel buffer (SO_RCVBUF/SO_SNDBUF) of a TCP transport's socket.

    A fixed size also turns off autotuning, so that what one side does not read backs up into
    the other's user-space buffers quickly instead of into megabytes of kernel memory.
    """
    transport.socket.setsockopt(stdlib_socket.SOL_SOCKET, option, size)


def report(name: str, stats: dict[str, Any]) -> None:
    """Print the numbers a test saw when ``TCPSOCKET_FLOW_STATS`` is set."""
    if os.environ.get("TCPSOCKET_FLOW_STATS"):
        items = ", ".join(f"{k}={v}" for k, v in stats.items())
        print(f"\n[{name}] {items}", file=sys.stderr)


# -- loopback remotes ----------------------------------------------------------


class StreamSource(Source):
    """Once started, writes ``factory.payload`` as fast as its transport takes it, then FIN.

    Its transport pauses it whenever more than its buffer size (64 KiB) is waiting:
    ``pauses`` counts that (it writes 256 KiB at a time, so every write pauses it),
    ``longest_stall`` is the longest time it stayed paused, in seconds: long stalls mean
    that the daemon stopped reading.
    """

    autostart = False

    def connectionMade(self) -> None:
        self.longest_stall = 0.0
        self._paused_at = 0.0
        super().connectionMade()

    def resumeProducing(self) -> None:
        if self.paused:
            stall = reactor.seconds() - self._paused_at  # type: ignore[attr-defined]
            self.longest_stall = max(self.longest_stall, stall)
        super().resumeProducing()

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._paused_at = reactor.seconds()  # type: ignore[attr-defined]


class SlowSink(Remote):
    """Hashes what it reads; reading is paused until :meth:`grant` allows more bytes."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.count = 0
        self.digest = hashlib.sha256()
        self.budget = 0
        self.grants = 0
        small_kernel_buffer(self.transport, stdlib_socket.SO_RCVBUF)
        self.paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def grant(self, size: int) -> None:
        """Read about ``size`` more bytes, then pause again."""
        self.grants += 1
        self.budget += size
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)
        self.budget -= len(data)
        if self.budget <= 0 and not self.paused:
            self.paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]


# -- page code -----------------------------------------------------------------

HEX = "(b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, '0')).join('')"

# A DATA/CLOSE/ERROR recorder on socket i, stored in window.flow; `onData(st, value)` runs
# after each chunk is stored. At CLOSE it hashes everything received.
RECEIVER = f"""
window.receiver = (i, onData) => {{
  const s = T.sockets[i].socket;
  const hex = {HEX};
  const st = {{ bytes: 0, events: 0, chunks: [], errors: [], closes: 0, digest: null,
               first: null, last: null, failures: [] }};
  window.flow = st;
  s.addEventListener(s.ERROR_EVENT, (m) => st.errors.push(m));
  s.addEventListener(s.CLOSE_EVENT, () => {{
    st.closes++;
    st.last = performance.now();
    const all = new Uint8Array(st.bytes);
    let offset = 0;
    for (const c of st.chunks) {{ all.set(c, offset); offset += c.length; }}
    st.chunks = null;
    crypto.subtle.digest("SHA-256", all).then((d) => {{ st.digest = hex(d); }});
  }});
  s.addEventListener(s.DATA_EVENT, (v) => {{
    if (st.first === null) st.first = performance.now();
    const owned = v instanceof Uint8Array && v.buffer.byteLength === v.length;
    if (!owned) st.failures.push("a DATA value that does not own its buffer");
    st.chunks.push(v);
    st.bytes += v.length;
    st.events++;
    onData(st, v);
  }});
  return st;
}};
"""

# The slow reader: every `every` bytes, suspend(), then resume() `pauseMs` later.
SLOW_READER = """
([i, size, every, pauseMs]) => {
  const s = T.sockets[i].socket;
  const why = (e) => (e && e.message ? e.message : JSON.stringify(e));
  let next = every;
  const st = window.receiver(i, (st, v) => {
    if (st.bytes < next) return;
    while (next <= st.bytes) next += every;
    if (st.bytes >= size) return;
    st.suspends++;
    s.suspend().then(
      () => {
        st.suspended++;
        setTimeout(() => s.resume().then(
          () => { st.resumed++; },
          (e) => st.callFailures.push("resume: " + why(e)),
        ), pauseMs);
      },
      (e) => st.callFailures.push("suspend: " + why(e)),
    );
  });
  Object.assign(st, { suspends: 0, suspended: 0, resumed: 0, callFailures: [] });
}
"""

# The busy page: at each of `at` (bytes received), the DATA listener blocks the thread `ms`.
BUSY_READER = """
([i, at, ms]) => {
  const marks = at.slice();
  const st = window.receiver(i, (st, v) => {
    if (marks.length === 0 || st.bytes < marks[0]) return;
    marks.shift();
    const start = performance.now();
    while (performance.now() - start < ms) { /* the page is busy */ }
    st.blocks.push(Math.round(performance.now() - start));
  });
  st.blocks = [];
}
"""

# The canonical DRAIN loop of the docs: `if (!(await send(chunk))) await <one DRAIN>`, with a
# DRAIN listener added for each wait (so DRAIN is enabled and disabled on the daemon each time)
# and, with `recorder`, also a permanent DRAIN listener that logs every DRAIN. Runs in the
# background; the outcome is window.upload.result (or .failure).
DRAIN_LOOP = f"""
([i, size, chunkSize, recorder]) => {{
  const s = T.sockets[i].socket;
  const hex = {HEX};
  const up = {{ log: [], errors: [], result: null, failure: null }};
  window.upload = up;
  if (recorder) s.addEventListener(s.DRAIN_EVENT, (v) => up.log.push("drain:" + v));
  s.addEventListener(s.ERROR_EVENT, (m) => up.errors.push(m));
  const drained = () => new Promise((resolve) => {{
    const once = (v) => {{
      if (!recorder) up.log.push("drain:" + v);
      s.removeEventListener(s.DRAIN_EVENT, once);
      resolve();
    }};
    s.addEventListener(s.DRAIN_EVENT, once);
  }});
  (async () => {{
    const data = new Uint8Array(size);
    for (let o = 0; o < size; o += 65536) crypto.getRandomValues(data.subarray(o, o + 65536));
    const digest = hex(await crypto.subtle.digest("SHA-256", data));
    const start = performance.now();
    for (let o = 0; o < size; o += chunkSize) {{
      const more = await s.send(data.subarray(o, o + chunkSize));
      up.log.push("send:" + more);
      if (!more) await drained();
    }}
    up.result = {{ digest, ms: performance.now() - start }};
  }})().catch((e) => {{ up.failure = JSON.stringify(e) + " " + String(e); }});
}}
"""

# After the loop: one more DRAIN listener; a DRAIN still owed or kept would arrive now.
LATE_DRAIN = """
(i) => {
  const s = T.sockets[i].socket;
  s.addEventListener(s.DRAIN_EVENT, (v) => window.upload.log.push("late drain:" + v));
}
"""

# One request round trip: every message the daemon sent before its answer has been handled.
ROUND_TRIP = "() => T.session.has_service('TcpSocketManager')"


class Sampler:
    """Maxima of daemon-side values, sampled on the reactor while a transfer runs."""

    def __init__(self, probes: dict[str, Callable[[], int | bool | None]]) -> None:
        self.probes = probes
        self.max: dict[str, int] = dict.fromkeys(probes, 0)
        self.samples = 0
        self._loop = task.LoopingCall(self.sample)

    def sample(self) -> None:
        self.samples += 1
        for name, probe in self.probes.items():
            value = probe()
            if value is not None:
                self.max[name] = max(self.max[name], int(value))

    def start(self) -> None:
        self._loop.start(SAMPLE_EVERY, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.sample()


class BrowserFlowTests(harness.BrowserTestCase):
    """Bounds and byte-exact transfers with Chromium as the client."""

    async def receiving_page(self, payload: bytes) -> tuple[Any, int, StreamSource, Any]:
        """A connected page with a socket to a (not yet started) source of ``payload``."""
        factory, remote_port = await listen_remote(self, StreamSource, payload)
        page = await self.harness_page()
        await self.js(page, f"() => {{ {RECEIVER} }}")
        await self.connected_manager(page)
        index = await self.open_socket(page, remote_port)
        await wait_until(lambda: len(factory.connections) == 1)
        (source,) = factory.connections
        assert isinstance(source, StreamSource)
        return page, index, source, self.daemon_socket()

    def watch_session(self, socket: Any) -> tuple[Sampler, dict[str, int]]:
        """Sample the session's and ``socket``'s downstream state; count congestion changes."""
        (session,) = self.site.session_factory.sessions
        seen = {"congested": 0, "congested_and_paused": 0, "events": 0, "longest_ms": 0}
        since: list[float] = []
        sampler = Sampler(
            {
                "held": lambda: socket.held_downstream,
                "session_buffer": lambda: transport_buffered(session.transport),
                "reading_paused": lambda: socket.reading_paused,
                "congested": lambda: session.congested,
            }
        )
        original_send_event = session.send_event

        def send_event(service: int, object_id: int, content: bytes) -> None:
            original_send_event(service, object_id, content)
            seen["events"] += 1
            sampler.sample()

        # The WebSocket's transport pauses and resumes the session's FairShare.
        share = session._share
        original_pause, original_resume = share.pauseProducing, share.resumeProducing

        def pause() -> None:
            original_pause()
            seen["congested"] += 1
            since.append(reactor.seconds())  # type: ignore[attr-defined]
            sampler.sample()

        def resume() -> None:
            # Did the socket stop reading its remote during this congestion?
            if socket.reading_paused:
                seen["congested_and_paused"] += 1
            if since:
                episode = round((reactor.seconds() - since.pop()) * 1000)  # type: ignore[attr-defined]
                seen["longest_ms"] = max(seen["longest_ms"], episode)
                since.clear()
            original_resume()
            sampler.sample()

        session.send_event = send_event
        share.pauseProducing = pause
        share.resumeProducing = resume
        sampler.start()
        self.addCleanup(sampler.stop)
        return sampler, seen

    def check_download(
        self, flow: dict[str, Any], payload: bytes, sampler: Sampler, source: StreamSource
    ) -> None:
        self.assertEqual(flow["failures"], [], flow)
        self.assertEqual(flow["errors"], [])
        self.assertEqual(flow["closes"], 1)
        self.assertEqual(flow["bytes"], len(payload))
        self.assertEqual(flow["digest"], hashlib.sha256(payload).hexdigest())
        self.assertEqual(source.offset, len(payload))
        config = self.site.session_factory.config
        hwm = config.high_water_mark
        # Downstream per socket: under twice the mark, or the session's one large read.
        self.assertLessEqual(sampler.max["held"], max(2 * hwm, config.read_size), sampler.max)
        # Per session: its buffer, plus the one read in progress when it filled (when the
        # transport's buffer can be read at all: it is Twisted's internals).
        (session,) = self.site.session_factory.sessions
        # (Writes go straight to the kernel when Twisted's buffer is empty, tcpsocket.fastpath:
        # that buffer fills only once the kernel's is full, which a page that keeps up may
        # never cause, so only the bound is checked, not that the buffer was ever used.)
        if transport_buffered(session.transport) is not None:
            self.assertLessEqual(
                sampler.max["session_buffer"],
                config.session_buffer + config.read_size + FRAMING,
                sampler.max,
            )

    async def test_download_to_a_page_that_suspends_and_resumes(self) -> None:
        size, every, pause_ms = 32 * MiB, 1 * MiB, 5
        payload = pattern(size, seed=41)
        page, index, source, socket = await self.receiving_page(payload)
        sampler, seen = self.watch_session(socket)
        # Every suspend the daemon answers really pauses reading from the remote.
        suspends = {"calls": 0, "paused_after": 0, "longest_ms": 0}
        suspended_at: list[float] = []
        original_suspend, original_resume = socket.suspend, socket.resume

        def suspend() -> None:
            original_suspend()
            suspends["calls"] += 1
            suspends["paused_after"] += socket.reading_paused
            suspended_at.append(reactor.seconds())  # type: ignore[attr-defined]

        def resume() -> None:
            original_resume()
            took = reactor.seconds() - suspended_at.pop()  # type: ignore[attr-defined]
            suspends["longest_ms"] = max(suspends["longest_ms"], round(took * 1000))

        socket.suspend, socket.resume = suspend, resume
        await self.js(page, SLOW_READER, [index, size, every, pause_ms])
        await self.js(page, ROUND_TRIP)  # DATA is enabled on the daemon
        source.start()
        await self.wait_js(page, "() => window.flow.digest !== null")
        await self.js(page, ROUND_TRIP)  # the last resume answers are in
        flow = await self.js(page, "() => window.flow")
        sampler.stop()
        seconds = (flow["last"] - flow["first"]) / 1000
        stats = {
            "MiB/s": round(size / MiB / seconds, 1),
            "events": flow["events"],
            "daemon_events": seen["events"],
            "suspends": flow["suspends"],
            "resumed": flow["resumed"],
            "daemon_suspends": suspends["calls"],
            "longest_suspended_ms": suspends["longest_ms"],
            "source_pauses": source.pauses,
            "source_longest_stall_ms": round(source.longest_stall * 1000),
            "congested": seen["congested"],
            "longest_congestion_ms": seen["longest_ms"],
            "samples": sampler.samples,
            **{f"max_{k}": v for k, v in sampler.max.items()},
        }
        stats["call_failures"] = flow["callFailures"]
        report("download-suspend", stats)
        self.check_download(flow, payload, sampler, source)
        # The page's suspends reached the daemon while the data flowed, and paused reading.
        self.assertGreaterEqual(flow["suspended"], 4, stats)
        self.assertEqual(suspends["calls"], flow["suspended"], stats)
        self.assertEqual(suspends["paused_after"], suspends["calls"], stats)
        # Each suspend that worked was resumed. Only near the end may a call fail: once the
        # remote's FIN has closed the daemon's socket, suspend and resume answer that it is
        # closed (the page is still catching up with the data the daemon holds for it).
        failures = flow["callFailures"]
        for failure in failures:
            self.assertRegex(failure, r"^(suspend|resume): socket (is|\d+ is) closed", failures)
        resume_failures = sum(f.startswith("resume") for f in failures)
        self.assertEqual(flow["resumed"] + resume_failures, flow["suspended"], failures)
        self.assertEqual(flow["suspends"], flow["suspended"] + len(failures) - resume_failures)

    async def drain_loop_upload(self, recorder: bool) -> None:
        """16 MiB in 256 KiB chunks with the DRAIN loop, to a remote that reads slowly."""
        size, chunk, grant = 16 * MiB, 256 * KiB, 256 * KiB
        factory, remote_port = await listen_remote(self, SlowSink)
        page = await self.harness_page()
        await self.connected_manager(page)
        index = await self.open_socket(page, remote_port)
        await wait_until(lambda: len(factory.connections) == 1)
        (sink,) = factory.connections
        assert isinstance(sink, SlowSink)
        socket = self.daemon_socket()
        small_kernel_buffer(socket.transport, stdlib_socket.SO_SNDBUF)
        config = self.site.session_factory.config

        def unsent() -> int:
            return socket.queued_upstream + (transport_buffered(socket.transport) or 0)

        sampler = Sampler({"queued": lambda: socket.queued_upstream, "unsent": unsent})
        sends = {"count": 0}
        original_send = socket.send

        def send(data: bytes) -> bool:
            more: bool = original_send(data)
            sends["count"] += 1
            sampler.sample()
            return more

        socket.send = send

        def slow_reader() -> None:
            # The remote reads another slice only once the daemon is holding bytes for it.
            if sink.paused and unsent() > 0:
                sink.grant(grant)

        reader = task.LoopingCall(slow_reader)
        reader.start(SAMPLE_EVERY, now=False)
        self.addCleanup(lambda: reader.stop() if reader.running else None)
        sampler.start()
        self.addCleanup(sampler.stop)

        await self.js(page, DRAIN_LOOP, [index, size, chunk, recorder])
        await self.wait_js(page, "() => window.upload.result || window.upload.failure")
        upload = await self.js(page, "() => window.upload")
        self.assertIsNone(upload["failure"])
        result = upload["result"]
        reader.stop()
        sink.grant(1 << 62)  # the rest, at once
        await wait_until(lambda: sink.count >= size)
        await self.js(page, LATE_DRAIN, index)
        await self.js(page, ROUND_TRIP)  # a late extra DRAIN would be in by now
        sampler.stop()
        log = (await self.js(page, "() => window.upload"))["log"]
        stats = {
            "MiB/s": round(size / MiB / (result["ms"] / 1000), 1),
            "sends": sends["count"],
            "false": log.count("send:false"),
            "drains": log.count("drain:true"),
            "grants": sink.grants,
            "samples": sampler.samples,
            **{f"max_{k}": v for k, v in sampler.max.items()},
        }
        report("drain-upload" + ("-recorder" if recorder else ""), stats)
        self.assertEqual(upload["errors"], [])
        self.assertEqual(sink.count, size)
        self.assertEqual(sink.digest.hexdigest(), result["digest"])
        self.assertEqual(sends["count"], size // chunk)
        # send answered false at least once, and every false was followed by exactly one DRAIN
        # (true) before the next send; no DRAIN came without a false, nor after the last.
        self.assertGreater(log.count("send:false"), 0, stats)
        expected: list[str] = []
        for entry in log:
            if entry.startswith("send:"):
                expected.append(entry)
                if entry == "send:false":
                    expected.append("drain:true")
        self.assertEqual(log, expected)
        # The daemon's bounds: the hard cap, and with the DRAIN discipline no more than the
        # high-water mark plus one chunk waiting in the daemon.
        self.assertLessEqual(sampler.max["queued"], config.max_send_buffer, stats)
        self.assertLessEqual(sampler.max["unsent"], config.high_water_mark + chunk, stats)
        self.assertGreater(sink.grants, 1, stats)

    async def test_drain_loop_upload_to_a_slow_reader(self) -> None:
        await self.drain_loop_upload(recorder=True)

    async def test_drain_loop_with_a_listener_per_wait(self) -> None:
        # Exactly the docs' loop: DRAIN is enabled only while the page waits for it, so the
        # daemon keeps a DRAIN that comes before the EnableEvent and sends it then.
        await self.drain_loop_upload(recorder=False)

    async def test_busy_page_backs_up_the_session(self) -> None:
        size, block_ms = 24 * MiB, 400
        marks = [1 * MiB, 8 * MiB]
        payload = pattern(size, seed=43)
        page, index, source, socket = await self.receiving_page(payload)
        # Fixed kernel buffers between the source and the daemon: when the daemon stops
        # reading, the source stalls within kilobytes, not after megabytes that autotuned
        # buffers absorb at whatever pace a loaded machine lets the source write.
        small_kernel_buffer(source.transport, stdlib_socket.SO_SNDBUF)
        small_kernel_buffer(socket.transport, stdlib_socket.SO_RCVBUF)
        sampler, seen = self.watch_session(socket)
        await self.js(page, BUSY_READER, [index, marks, block_ms])
        await self.js(page, ROUND_TRIP)  # DATA is enabled on the daemon
        source.start()
        await self.wait_js(page, "() => window.flow.digest !== null")
        flow = await self.js(page, "() => window.flow")
        sampler.stop()
        seconds = (flow["last"] - flow["first"]) / 1000
        stats = {
            "MiB/s": round(size / MiB / seconds, 1),
            "events": flow["events"],
            "blocks_ms": flow["blocks"],
            "congested": seen["congested"],
            "congested_and_paused": seen["congested_and_paused"],
            "longest_congestion_ms": seen["longest_ms"],
            "source_pauses": source.pauses,
            "source_longest_stall_ms": round(source.longest_stall * 1000),
            "samples": sampler.samples,
            **{f"max_{k}": v for k, v in sampler.max.items()},
        }
        report("busy-page", stats)
        self.check_download(flow, payload, sampler, source)
        self.assertEqual(len(flow["blocks"]), len(marks))
        # The session's WebSocket backed up and the daemon stopped reading the remote for it.
        self.assertGreater(seen["congested_and_paused"], 0, stats)
        self.assertEqual(sampler.max["congested"], 1, stats)
        self.assertEqual(sampler.max["reading_paused"], 1, stats)
        # ...for about as long as the page was busy (episodes are short otherwise), and the
        # remote felt it: its writes stalled.
        self.assertGreaterEqual(seen["longest_ms"], block_ms // 4, stats)
        self.assertGreaterEqual(source.longest_stall * 1000, block_ms // 4, stats)
