"""Every code example in README.md and doc/ is a file of doc/examples/ (or deploy/) that runs.

The examples name real-looking hosts (imap.example.org); the daemon they talk to here sends
each such name to a loopback server of the test, so nothing leaves the machine.
"""

from __future__ import annotations

import os
import re
import runpy
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from tcpsocket.tap import Options
from tcpsocket.tokens import load_tokens_file
from tests.support import (
    ROOT,
    TOKEN,
    TWISTD,
    LineEcho,
    RemoteFactory,
    spawn_process,
    start_daemon,
    temp_dir,
    to_loopback,
    unix_listening,
    wait_until,
)
from tests.test_web import read_body

EXAMPLES = ROOT / "doc" / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "doc").glob("*.md"))]
#: Fenced blocks in these languages must be files; others (text, log lines, tables) need not.
CODE_LANGUAGES = {"python", "py", "sh", "bash", "shell", "html", "js", "javascript", "toml", "json"}
#: Docs whose examples other work owns and that are not files yet (say why).
NOT_YET = {
    "performance.md": "benchmark commands, run by bench/ itself",
}
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of ``path``."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def example_files() -> dict[str, Path]:
    files = {}
    for directory in (EXAMPLES, ROOT / "deploy"):
        for path in directory.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.read_text(encoding="utf-8")] = path
    return files


class DocsPrintFilesTests(SynchronousTestCase):
    def test_every_code_block_is_a_file_a_test_runs(self) -> None:
        files = example_files()
        tests = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
        checked = 0
        for doc in DOCS:
            if doc.name in NOT_YET:
                continue
            for language, text in code_blocks(doc):
                if language not in CODE_LANGUAGES:
                    continue
                checked += 1
                path = files.get(text)
                self.assertIsNotNone(
                    path,
                    f"{doc.name}: a {language} block is not a file of doc/examples/ or deploy/",
                )
                assert path is not None
                self.assertIn(path.name, tests, f"no test names {path}")
        self.assertGreaterEqual(checked, 12)

    def test_ci_runs_the_readme_test_command(self) -> None:
        command = (EXAMPLES / "run_tests.sh").read_text().strip()
        self.assertEqual(command, "bash scripts/test")
        self.assertIn(f"exec {command}\n", (ROOT / ".ci" / "run").read_text())

    def test_scripts_share_the_venv(self) -> None:
        command = (EXAMPLES / "quickstart.sh").read_text().strip()
        self.assertEqual(command, "WS_RUNTIME_TOKEN=change-this-secret-token bash scripts/serve")
        serve = (ROOT / "scripts" / "serve").read_text()
        test = (ROOT / "scripts" / "test").read_text()
        self.assertIn(". scripts/venv\nvenv_install .\n", serve)
        self.assertIn('exec .venv/bin/twistd -n tcpsocket "$@"\n', serve)
        self.assertIn(". scripts/venv\n", test)
        self.assertIn("venv_install '.[test]'\n", test)


POLL_HEALTH = """
import sys, time, urllib.request
for _ in range(300):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:8081/healthz", timeout=1).read().decode())
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the daemon did not answer on 127.0.0.1:8081")
"""


class QuickstartTests(TestCase):
    timeout = 900

    async def test_serve_installs_and_runs(self) -> None:
        """README's first command, in a copy of this checkout, with its own fresh .venv; the
        one addition is a --listen on a UNIX socket, as tests cannot count on port 8081."""
        copy = temp_dir(self) / "checkout"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        path = str(copy / "t.sock")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = ":".join(p for p in env["PATH"].split(":") if "/.venv/" not in p)
        command = (EXAMPLES / "quickstart.sh").read_text().strip()
        daemon = spawn_process(
            self, ["/bin/bash", "-c", f"{command} --listen unix:{path}"], copy, env
        )
        await wait_until(lambda: unix_listening(path) or daemon.ended.called, timeout=600)
        self.assertFalse(daemon.ended.called, daemon.output.decode())
        agent = Agent.usingEndpointFactory(reactor, _Unix(path))
        response = await agent.request(b"GET", b"http://localhost/healthz")
        self.assertEqual((response.code, await read_body(response)), (200, b"ok\n"))
        self.assertTrue((copy / ".venv" / "bin" / "twistd").exists())
        self.assertFalse((copy / "twistd.pid").exists())

    async def test_daemon_serves_on_8081(self) -> None:
        """The command scripts/serve ends with, as written, in a network namespace of its own
        (so port 8081 is free), with this checkout's twistd."""
        serve = (ROOT / "scripts" / "serve").read_text().strip().splitlines()[-1]
        twistd, *args = serve.split()[1:]
        self.assertEqual(twistd, ".venv/bin/twistd")
        args = [a for a in args if a != '"$@"']
        twistd_cmd = " ".join(shlex.quote(a) for a in TWISTD)
        daemon = f"WS_RUNTIME_TOKEN=change-this-secret-token {twistd_cmd} {' '.join(args)}"
        script = (
            "ip link set lo up && "
            f"{{ {daemon} > daemon.log 2>&1 & }} && "
            f"{shlex.quote(sys.executable)} -c {shlex.quote(POLL_HEALTH)}; status=$?; "
            "kill %1; wait; cat daemon.log; ls; exit $status"
        )
        cwd = temp_dir(self)
        out, err, code = await getProcessOutputAndValue(
            "/usr/bin/unshare",
            # A PID namespace too: when its first process (this bash) exits, the kernel ends
            # every process left in it, such as the twistd that `kill %1` does not reach.
            ["-n", "-p", "-f", "/bin/bash", "-c", script],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            path=str(cwd),
        )
        output = (out + err).decode()
        self.assertEqual(code, 0, output)
        self.assertTrue(output.startswith("ok\n"), output)
        self.assertIn("TcpSocketSite starting on 8081", output)
        self.assertNotIn("twistd.pid", output)


class CommandExampleTests(TestCase):
    """The docs' shell commands that start the daemon, run as printed, each in network and
    PID namespaces of its own (so that port 8081 is free, and nothing outlives the test),
    with this checkout's twistd."""

    timeout = 120

    async def serve_once(self, name: str, **env: str) -> str:
        script = (
            "ip link set lo up && "
            f"{{ bash {shlex.quote(str(EXAMPLES / name))} > daemon.log 2>&1 & }} && "
            f"{shlex.quote(sys.executable)} -c {shlex.quote(POLL_HEALTH)}; status=$?; "
            "kill %1; wait; cat daemon.log; exit $status"
        )
        bin_dir = os.path.dirname(sys.executable)
        environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
        environment["PATH"] = f"{bin_dir}:{environment['PATH']}"
        out, err, code = await getProcessOutputAndValue(
            "/usr/bin/unshare",
            # A PID namespace too: when its first process (this bash) exits, the kernel ends
            # every process left in it, such as the twistd that `kill %1` does not reach.
            ["-n", "-p", "-f", "/bin/bash", "-c", script],
            env=environment,
            path=str(temp_dir(self)),
        )
        output = (out + err).decode()
        self.assertEqual(code, 0, output)
        self.assertTrue(output.startswith("ok\n"), output)
        self.assertIn("TcpSocketSite starting on 8081", output)
        return output

    async def test_allow_rules(self) -> None:
        await self.serve_once("allow_rules.sh", WS_RUNTIME_TOKEN="allow-rules-example-token")

    async def test_desktop(self) -> None:
        await self.serve_once("desktop.sh")


class FuzzCommandTests(TestCase):
    timeout = 300

    async def test_fuzz_longer(self) -> None:
        """The command that fuzzes longer, with a small count so that the suite stays short."""
        environment = dict(os.environ, TCPSOCKET_FUZZ_EXAMPLES="3", PYTHONPATH=str(ROOT))
        environment["PATH"] = f"{os.path.dirname(sys.executable)}:{environment['PATH']}"
        out, err, code = await getProcessOutputAndValue(
            "/bin/bash", [str(EXAMPLES / "fuzz_longer.sh")], env=environment, path=str(ROOT)
        )
        output = (out + err).decode()
        self.assertEqual(code, 0, output)
        self.assertIn("passed", output)
        self.assertIn("hypothesis", output.lower())


_NOT_COPIED = (".venv", ".git", "__pycache__", "*.egg-info", "build", ".mypy_cache", ".ruff_cache")


class _Unix:
    def __init__(self, path: str) -> None:
        self.path = path

    def endpointForURI(self, uri: Any) -> Any:
        return UNIXClientEndpoint(reactor, self.path)


class FakeImap(LineReceiver):
    def connectionMade(self) -> None:
        self.sendLine(b"* OK IMAP4rev1 ready")

    def lineReceived(self, line: bytes) -> None:
        tag = line.split(b" ", 1)[0]
        self.sendLine(b"* CAPABILITY IMAP4rev1 IDLE")
        self.sendLine(tag + b" OK CAPABILITY completed")


class FakeSmtp(LineReceiver):
    def connectionMade(self) -> None:
        self.sendLine(b"220 smtp.example.org ESMTP")

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"221 bye")
        self.transport.loseConnection()


class Page(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class RunExamplesTests(TestCase):
    async def listen(self, factory: Any) -> int:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def run_example(self, name: str, remotes: dict[tuple[str, int], Any]) -> str:
        ports = {address: await self.listen(factory) for address, factory in remotes.items()}
        _, port = await start_daemon(self, **to_loopback(ports))
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            TCPSOCKET_URL=f"ws://127.0.0.1:{port}/ws",
            WS_RUNTIME_TOKEN=TOKEN,
        )
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [str(EXAMPLES / name)], env=env, path=str(ROOT)
        )
        self.assertEqual(code, 0, (out + err).decode())
        return out.decode()

    async def test_readme_client(self) -> None:
        imap = Factory.forProtocol(FakeImap)
        output = await self.run_example("readme_client.py", {("imap.example.org", 143): imap})
        self.assertIn("* OK IMAP4rev1 ready", output)
        self.assertIn("* CAPABILITY IMAP4rev1 IDLE", output)
        self.assertIn("a1 OK CAPABILITY completed", output)

    async def test_python_http_head(self) -> None:
        output = await self.run_example("python_http_head.py", {("example.com", 80): Site(Page())})
        self.assertIn("HTTP/1.0 200 OK", output)
        self.assertIn("Content-Length: 5", output)

    async def test_python_events(self) -> None:
        smtp = Factory.forProtocol(FakeSmtp)
        output = await self.run_example("python_events.py", {("smtp.example.org", 25): smtp})
        self.assertIn("got b'220 smtp.example.org ESMTP\\r\\n'", output)
        self.assertIn("221 bye", output)

    async def test_python_endpoint(self) -> None:
        echo = RemoteFactory(LineEcho)  # type: ignore[arg-type]
        output = await self.run_example("python_endpoint.py", {("chat.example.org", 7000): echo})
        self.assertIn("server said b'HELLO'", output)

    async def test_memory_daemon_example_passes(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                str(EXAMPLES / "test_memory_daemon.py"),
            ],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            path=str(ROOT),
        )
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn(b"1 passed", out)


class DataExamplesTests(SynchronousTestCase):
    def test_policy_mail_only(self) -> None:
        config = runpy.run_path(str(EXAMPLES / "policy_mail_only.py"))["config"]
        self.assertIsNone(config.policy.check("app", "imap.example.org", 993))
        self.assertEqual(config.policy.check("app", "smtp.example.org", 25), "only mail ports")

    def test_tokens_json(self) -> None:
        tokens = load_tokens_file(EXAMPLES / "tokens.json")
        self.assertEqual([t.identity for t in tokens], ["mail.example.org", "installer", "viewer"])
        self.assertEqual(tokens[0].origins, {"https://mail.example.org"})
        self.assertTrue(tokens[1].single_use)
        self.assertEqual(tokens[2].permissions, frozenset())

    def test_tcpsocket_toml(self) -> None:
        options = Options()
        argv = ["--token", "t" * 16, "--config", str(EXAMPLES / "tcpsocket.toml")]
        with mock_tokens_file():
            options.parseOptions(argv)
        self.assertEqual(options["listen"][0], "tcp:8081:interface=127.0.0.1")
        config = options["config"]
        self.assertEqual((config.max_sessions, config.connect_timeout), (256, 5.0))
        self.assertIsNone(config.policy.check("", "imap.example.org", 993))
        self.assertTrue(options["json-logs"])


def mock_tokens_file() -> Any:
    """The example's tokens file is /etc/tcpsocket/tokens.json: read doc/examples/tokens.json."""
    from unittest import mock

    from tcpsocket import tap

    real = tap.load_tokens_file
    return mock.patch.object(
        tap, "load_tokens_file", lambda path: real(EXAMPLES / "tokens.json") if path else []
    )
