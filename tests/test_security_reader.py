"""A client that sends requests and never reads their replies, against a real daemon.

The daemon stops reading its requests while replies wait (TCP back-pressure
does the rest), so its memory stays bounded; once the client reads, every
request it got through is answered.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tcpsocket.messages import HasService, encode_request
from tests.session_helpers import (
    KiB,
    MiB,
    SessionClient,
    live_sessions,
    only,
    raw_client_small,
    session,
    shrink_send_buffer_of,
    transport_buffered,
)
from tests.support import start_daemon, wait_until

#: What the client tries to send.
ATTEMPT = 200 * MiB


async def pause(seconds: float) -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    await d


class NonReadingClientTests(TestCase):
    async def test_200_mib_of_requests_never_read(self) -> None:
        session_buffer = 16 * KiB
        site, port = await start_daemon(self, session_buffer=session_buffer)
        raw = await raw_client_small(self, port)
        client: SessionClient = await session(self, port, raw=raw)
        daemon_side = only(live_sessions(site)).transport
        shrink_send_buffer_of(daemon_side)
        raw.transport.pauseProducing()  # the client reads nothing from now on

        request = HasService("n" * 4000).encode()
        sent = 0
        request_id = 1001
        worst = 0
        stalled_for = 0.0
        while sent < ATTEMPT and stalled_for < 2.0:
            if transport_buffered(raw.transport) > 1 * MiB:
                # The kernel took nothing more: the daemon is not reading.
                before = transport_buffered(raw.transport)
                await pause(0.1)
                stalled_for = (
                    stalled_for + 0.1 if transport_buffered(raw.transport) >= before else 0
                )
                continue
            for _ in range(64):
                raw.send(encode_request(0, 0, request_id, request))
                request_id += 2
                sent += len(request)
            worst = max(worst, transport_buffered(daemon_side))
            await pause(0)
        worst = max(worst, transport_buffered(daemon_side))

        self.assertLess(sent, ATTEMPT, "the daemon kept reading a client that does not read")
        # Replies held for this client: its session buffer, plus what one read of
        # requests (64 KiB at most, here 16 requests) answers.
        self.assertLessEqual(worst, session_buffer + 64 * KiB, worst)

        # Once the client reads, every request it got through is answered.
        answered = sum(client.answers.values())
        raw.transport.resumeProducing()
        count = (request_id - 1001) // 2
        await wait_until(lambda: len(client.unexpected) + answered >= count, timeout=60)
        self.assertEqual(len(client.unexpected), count, "one response each")
