"""SIGHUP reloads the tokens file and the destination rules of a running twistd daemon."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.messages import encode_handshake
from tcpsocket.policy import AllowList, Rule
from tcpsocket.reload import HangupReload, apply_reload
from tcpsocket.services.tcpsocket.messages import Event, Reply
from tcpsocket.tokens import Token, TokenStore
from tests.session_helpers import session
from tests.support import (
    Echo,
    ProcessOutput,
    listen_remote,
    raw_client_on,
    start_twistd,
    temp_dir,
    test_config,
    wait_until,
)


class TokenStoreReplaceTests(SynchronousTestCase):
    def test_replace_swaps_tokens_and_keeps_consumed_ones_consumed(self) -> None:
        store = TokenStore(
            [Token("old-token-0123456789"), Token("once-token-0123456789", single_use=True)]
        )
        self.assertIsNotNone(self.successResultOf(store.authenticate("once-token-0123456789")))
        store.replace(
            [Token("new-token-0123456789", "app"), Token("once-token-0123456789", single_use=True)]
        )
        self.assertIsNone(self.successResultOf(store.authenticate("old-token-0123456789")))
        self.assertEqual(
            self.successResultOf(store.authenticate("new-token-0123456789")).identity, "app"
        )  # type: ignore[union-attr]
        self.assertIsNone(
            self.successResultOf(store.authenticate("once-token-0123456789")),
            "a used single-use token stays used",
        )
        # The used one is still listed (the file lists it), and still refused.
        self.assertEqual(len(store), 2)

    def test_apply_reload_swaps_tokens_and_policy_in_the_live_store(self) -> None:
        live = test_config()
        store = live.tokens
        fresh = test_config(policy=AllowList([Rule.parse("127.0.0.1:7")]), close_timeout=5)
        fresh.tokens.replace([Token("fresh-token-0123456789")])  # type: ignore[attr-defined]
        reloaded = apply_reload(live, fresh)
        self.assertIs(reloaded.tokens, store)
        self.assertIs(reloaded.policy, fresh.policy)
        self.assertEqual(reloaded.close_timeout, live.close_timeout)  # needs a restart
        self.assertIsNotNone(self.successResultOf(store.authenticate("fresh-token-0123456789")))


def tokens_file(path: Path, *tokens: str) -> None:
    path.write_text(json.dumps([{"token": t, "identity": f"id-{t}"} for t in tokens]))


class HangupTests(TestCase):
    async def handshake(self, path: str, token: str) -> tuple[bytes | str, Any]:
        raw = await raw_client_on(self, UNIXClientEndpoint(reactor, path))
        raw.send(encode_handshake(token))
        return await raw.next(), raw

    async def hangup(self, collect: ProcessOutput, line: bytes) -> None:
        seen = collect.output.count(line)
        collect.process.signalProcess(signal.SIGHUP)
        await wait_until(lambda: collect.output.count(line) > seen, timeout=30)

    async def test_sighup_reloads_tokens_and_rules(self) -> None:
        _, echo_port = await listen_remote(self, Echo)
        _, other_port = await listen_remote(self, Echo)
        tokens = temp_dir(self) / "tokens.json"
        tokens_file(tokens, "alpha-token-0123456789")
        collect, path = await start_twistd(
            self,
            "--tokens-file",
            str(tokens),
            token=None,
            allow=f"127.0.0.1:{echo_port},{other_port}",
        )
        # A live session on the old token, with a socket.
        raw = await raw_client_on(self, UNIXClientEndpoint(reactor, path))
        client = await session(self, 0, token="alpha-token-0123456789", raw=raw)
        service = await client.get_service()
        live_id = await client.open_ok(service, echo_port, events=(Event.DATA,))

        tokens_file(tokens, "beta-token-0123456789")
        await self.hangup(collect, b"reloaded the tokens and destination rules")
        self.assertEqual((await self.handshake(path, "beta-token-0123456789"))[0], b"\x01")
        refused, _ = await self.handshake(path, "alpha-token-0123456789")
        self.assertEqual(refused, b"\x00")
        # The live session keeps working.
        await client.send(service, live_id, b"still here")
        stream = client.stream(service, live_id)
        await wait_until(lambda: bytes(stream.data) == b"still here")
        opened = await client.open(service, "127.0.0.1", other_port)
        self.assertIs(opened.reply, Reply.OPEN_SUCCESS)
        denied = await client.open(service, "127.0.0.1", 9)
        self.assertIs(denied.reply, Reply.OPEN_ERROR)

        # A broken file: the old configuration stays, and the log says why.
        tokens.write_text('[{"token": ')
        await self.hangup(collect, b"reload failed, the configuration in use is kept")
        self.assertIn(b"cannot read tokens file", collect.output)
        self.assertEqual((await self.handshake(path, "beta-token-0123456789"))[0], b"\x01")
        self.assertFalse(collect.ended.called)
        await client.send(service, live_id, b"!")
        await wait_until(lambda: bytes(stream.data) == b"still here!")
        client.assert_one_response_each()

    async def test_sighup_reloads_and_sigusr1_rotates_the_log(self) -> None:
        """twistd rotates its log file on SIGUSR1; SIGHUP is ours: both work."""
        directory = temp_dir(self)
        tokens, logfile = directory / "tokens.json", directory / "daemon.log"
        tokens_file(tokens, "alpha-token-0123456789")
        collect, path = await start_twistd(
            self, "--tokens-file", str(tokens), token=None, twistd=(f"--logfile={logfile}",)
        )
        await wait_until(lambda: logfile.exists())
        tokens_file(tokens, "beta-token-0123456789")
        collect.process.signalProcess(signal.SIGHUP)
        await wait_until(lambda: b"reloaded the tokens" in logfile.read_bytes(), timeout=30)
        collect.process.signalProcess(signal.SIGUSR1)
        rotated = directory / "daemon.log.1"
        await wait_until(rotated.exists, timeout=30)
        self.assertIn(b"reloaded the tokens", rotated.read_bytes())
        self.assertEqual((await self.handshake(path, "beta-token-0123456789"))[0], b"\x01")
        self.assertEqual((await self.handshake(path, "alpha-token-0123456789"))[0], b"\x00")
        self.assertFalse(collect.ended.called)


class HangupReloadServiceTests(SynchronousTestCase):
    def test_handler_installed_while_running_and_restored(self) -> None:
        applied: list[Any] = []
        fresh = test_config()
        calls: list[Any] = []

        class Clock:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(f)

        service = HangupReload(lambda: fresh, applied.append, Clock())
        previous = signal.getsignal(signal.SIGHUP)
        service.startService()
        try:
            self.assertNotEqual(signal.getsignal(signal.SIGHUP), previous)
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(calls, [service.reload])
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
        self.assertTrue(service.reload())
        self.assertEqual(applied, [fresh])

    def test_handler_installed_with_the_listeners(self) -> None:
        """Under twistd, listeners start in privilegedStartService, well before startService:
        a SIGHUP then must already reload (the default action would end the daemon)."""
        calls: list[Any] = []

        class Clock:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(f)

        service = HangupReload(test_config, lambda _: None, Clock())
        previous = signal.getsignal(signal.SIGHUP)
        service.privilegedStartService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(calls, [service.reload])
            service.startService()  # installs nothing twice
            os.kill(os.getpid(), signal.SIGHUP)
            self.assertEqual(calls, [service.reload, service.reload])
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_a_failed_parse_applies_nothing(self) -> None:
        applied: list[Any] = []

        def broken() -> Any:
            raise ValueError("cannot read tokens file x")

        service = HangupReload(broken, applied.append, object())
        self.assertFalse(service.reload())
        self.assertEqual(applied, [])
