"""A service from outside the package (doc/examples/echo_service.py), over a real WebSocket."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tcpsocket.client import GetServiceError, Session
from tests.support import TOKEN, start_daemon

EXAMPLE = Path(__file__).parent.parent / "doc" / "examples" / "echo_service.py"


class ExtendingTests(TestCase):
    async def session(self, **overrides: Any) -> Session:
        _, port = await start_daemon(self, **overrides)
        session = await Session.connect(f"ws://127.0.0.1:{port}/ws", TOKEN)
        self.addCleanup(session.close)
        return session

    async def test_a_third_party_service(self) -> None:
        example = runpy.run_path(str(EXAMPLE))
        echo = example["Echo"]()
        session = await self.session(services=example["config"].services)
        self.assertTrue(await session.has_service("ExampleEcho"))
        self.assertTrue(await session.has_service("TcpSocketManager"))
        service_id = await session.get_service("ExampleEcho", echo.fingerprint)
        answer = await session.call(service_id, 0, b"hello, plug-in", bytes)
        self.assertEqual(answer, b"hello, plug-in")
        mismatch = session.get_service("ExampleEcho", "0" * 58)
        with self.assertRaises(GetServiceError):
            await mismatch

    async def test_not_offered_by_default(self) -> None:
        session = await self.session()
        self.assertFalse(await session.has_service("ExampleEcho"))
        unknown = session.get_service("ExampleEcho", "x")
        with self.assertRaises(GetServiceError):
            await unknown
