"""Run the JavaScript unit tests (tests/js, Node's test runner) as part of the trial suite."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

REPO = Path(__file__).resolve().parent.parent


class NodeUnitTests(unittest.TestCase):
    """``node --test tests/js/``: codec vectors of protocol.md D, session and service logic."""

    timeout = 300

    async def test_node_test_runner(self) -> None:
        node = shutil.which("node")
        if node is None:
            self.fail("node is required for the JavaScript tests but is not on PATH")
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": pythonpath}
        out, err, code = await getProcessOutputAndValue(
            node, ["--test", "tests/js/"], env=env, path=str(REPO)
        )
        text = out.decode("utf-8", "replace")
        summary = [line for line in text.splitlines() if line.startswith("# ")][-8:]
        if code != 0:
            failures = [line for line in text.splitlines() if "not ok" in line or "error:" in line]
            self.fail(
                f"node --test exited {code}\n"
                + "\n".join(failures[-40:] + summary)
                + "\n"
                + err.decode("utf-8", "replace")[-4000:]
            )
        self.assertIn("# fail 0", text)
        self.assertNotIn("# pass 0", text)
