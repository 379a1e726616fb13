"""The Python client imports without the server (no twisted.web, no Autobahn server)."""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

SERVER_MODULES = ("twisted.web", "twisted.web.server", "tcpsocket.session", "tcpsocket.site")


class ClientImportTests(SynchronousTestCase):
    def test_client_imports_without_the_server(self) -> None:
        code = (
            "import json, sys, tcpsocket.client, tcpsocket.client.endpoint\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        modules = set(json.loads(out))
        self.assertIn("tcpsocket.client", modules)
        for name in SERVER_MODULES:
            self.assertNotIn(name, modules)
        server_side = sorted(m for m in modules if m.startswith("autobahn") and "server" in m)
        self.assertEqual(server_side, [])
        self.assertNotIn("autobahn.twisted.resource", modules)
