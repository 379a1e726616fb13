"""Secure sockets from Chromium: the JS library's ``open({..., useSecureTransport})`` and
``upgradeToSecure()``, against loopback TLS servers of a CA the tests generate."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory

from tcpsocket.policy import DestinationPolicy
from tests.support import Echo, temp_dir
from tests.test_browser import BrowserTestCase
from tests.test_secure_sockets import BLOCK, CA, TOTAL, Bulk, expected_digest
from tests.tls_support import (
    TLS_NAMES,
    TLS_RULES,
    ResetOnHello,
    TestAuthority,
    listen_starttls,
    listen_tls,
)

OPEN = """([options, events]) => T.manager.open(options).then((socket) => {
  const index = T.record(socket);
  for (const e of events) T.listen(index, e);
  return { ok: index, tls: socket.tls, remote: [socket.remoteAddress, socket.remotePort],
           local: socket.localAddress };
}, (error) => ({ error }))"""


class BrowserTLSTests(BrowserTestCase):
    timeout = 300

    async def start_daemon(self, **overrides: Any) -> tuple[Any, int]:
        path = temp_dir(self) / "ca.pem"
        path.write_bytes(CA.pem())
        return await super().start_daemon(
            tls_ca_file=str(path),
            resolver=TLS_NAMES,
            policy=DestinationPolicy(TLS_RULES),
            **overrides,
        )

    async def page(self) -> Any:
        page = await self.harness_page()
        await self.connected_manager(page)
        return page

    async def test_tls_from_the_start(self) -> None:
        options = CA.issue("imap.test").server_options(acceptableProtocols=[b"imap"])
        port = await listen_tls(self, options, Echo)
        page = await self.page()
        options_js = {
            "host": "imap.test",
            "port": port,
            "useSecureTransport": True,
            "alpnProtocols": ["imap"],
        }
        opened = await self.js(page, OPEN, [options_js, [1]])
        self.assertIn("ok", opened, opened)
        self.assertEqual(opened["tls"]["peerSubject"], "CN=imap.test")
        self.assertEqual(opened["tls"]["alpn"], "imap")
        self.assertTrue(opened["tls"]["secure"])
        self.assertEqual(opened["remote"], ["127.0.0.1", port])
        index = opened["ok"]
        await self.js(page, "(i) => T.call(i, 'send', 'a1 NOOP\\r\\n')", index)
        await self.wait_js(page, "(i) => T.text(i) === 'a1 NOOP\\r\\n'", index)
        # The plain service is still what a plain open uses.
        plain = await self.js(page, OPEN, [{"host": "127.0.0.1", "port": port}, []])
        self.assertIsNone(plain["tls"])

    async def test_starttls(self) -> None:
        port = await listen_starttls(self, CA.issue("smtp.test").server_options())
        page = await self.page()
        options_js = {"host": "smtp.test", "port": port, "useSecureTransport": False}
        opened = await self.js(page, OPEN, [options_js, [1]])
        self.assertFalse(opened["tls"]["secure"])
        index = opened["ok"]
        await self.js(page, "(i) => T.call(i, 'send', 'NOOP\\r\\nSTARTTLS\\r\\n')", index)
        await self.wait_js(page, "(i) => T.text(i).includes('220 go ahead')", index)
        upgraded = await self.js(page, "(i) => T.call(i, 'upgradeToSecure')", index)
        self.assertEqual(upgraded["ok"]["peerSubject"], "CN=smtp.test")
        await self.js(page, "(i) => T.call(i, 'send', 'EHLO me\\r\\n')", index)
        await self.wait_js(page, "(i) => T.text(i).includes('secure: EHLO me')", index)
        self.assertEqual(
            await self.js(page, "(i) => T.text(i)", index),
            "220 smtp.test ready\r\n250 clear: NOOP\r\n220 go ahead\r\nsecure: EHLO me\r\n",
        )

    async def test_failures_reject_with_a_reason(self) -> None:
        cases = [
            ("imap.test", CA.issue("other.test").server_options(), "certificate name mismatch"),
            (
                "imap.test",
                TestAuthority("nobody's CA").issue("imap.test").server_options(),
                "unknown authority",
            ),
            (
                "expired.test",
                CA.issue("expired.test", expired=True).server_options(),
                "certificate expired",
            ),
        ]
        page = await self.page()
        for host, options, reason in cases:
            port = await listen_tls(self, options, Echo)
            opened = await self.js(
                page, OPEN, [{"host": host, "port": port, "useSecureTransport": True}, []]
            )
            self.assertIn(reason, opened["error"]["message"])
        server = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(ResetOnHello)
        )
        self.addCleanup(server.stopListening)
        options_js = {
            "host": "imap.test",
            "port": server.getHost().port,
            "useSecureTransport": True,
        }
        opened = await self.js(page, OPEN, [options_js, []])
        self.assertIn("during the TLS handshake", opened["error"]["message"])

    async def test_64_mib_each_way(self) -> None:
        """Byte-exact both ways through TLS from the page, with DRAIN, suspend and resume."""
        factory = Factory.forProtocol(Bulk)
        factory.received = defer.Deferred()  # type: ignore[attr-defined]
        server = await SSL4ServerEndpoint(
            reactor, 0, CA.issue("imap.test").server_options(), interface="127.0.0.1"
        ).listen(factory)
        self.addCleanup(server.stopListening)
        page = await self.page()
        result = await self.js(
            page,
            """async ([port, pattern, total]) => {
              const block = new Uint8Array(256 * 1024);
              for (let i = 0; i < block.length; i++) block[i] = pattern[i % pattern.length];
              const options = { host: "imap.test", port, useSecureTransport: true };
              const socket = await T.manager.open(options);
              let got = 0, bad = 0, suspended = false, resumed = false, drainWaiter = null;
              let heldAt = 0, whileSuspended = -1;
              const allIn = new Promise((resolve) => {
                socket.addEventListener(socket.DATA_EVENT, (data) => {
                  for (let i = 0; i < data.length; i++) {
                    if (data[i] !== pattern[(got + i) % pattern.length]) bad++;
                  }
                  got += data.length;
                  if (got >= 16 * 1024 * 1024 && !suspended) {
                    suspended = true;
                    socket.suspend();
                    heldAt = got;
                    // What was on its way arrives; then nothing until resume.
                    setTimeout(() => { heldAt = got; }, 500);
                    setTimeout(() => {
                      whileSuspended = got - heldAt;
                      resumed = true;
                      socket.resume();
                    }, 1000);
                  }
                  if (got === total) resolve();
                });
              });
              socket.addEventListener(socket.DRAIN_EVENT, () => {
                if (drainWaiter) { const w = drainWaiter; drainWaiter = null; w(); }
              });
              for (let sent = 0; sent < total; sent += block.length) {
                if (!(await socket.send(block))) await new Promise((r) => { drainWaiter = r; });
              }
              await allIn;
              return { got, bad, resumed, whileSuspended };
            }""",
            [server.getHost().port, list(BLOCK[:32]), TOTAL],
        )
        self.assertEqual(result["got"], TOTAL)
        self.assertEqual(result["bad"], 0)
        self.assertTrue(result["resumed"])
        self.assertEqual(result["whileSuspended"], 0)
        self.assertEqual(await factory.received, expected_digest())  # type: ignore[attr-defined]
