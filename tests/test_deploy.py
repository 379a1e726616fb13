"""The deployment examples of deploy/: systemd socket activation, HAProxy with TLS, Dockerfile."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import socket
import subprocess
from typing import Any

from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpsocket.client import DATA_EVENT, Session, TcpSocketManager
from tests import support
from tests.support import (
    ROOT,
    TWISTD,
    Echo,
    listen_remote,
    spawn_process,
    start_daemon,
    temp_dir,
    wait_until,
)

DEPLOY = ROOT / "deploy"
TOKEN = "deploy-test-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / name)
    return parser


async def echo_round_trip(test: Any, session: Session) -> None:
    """Open a loopback echo through ``session`` and get one message back."""
    _, echo_port = await listen_remote(test, Echo)
    manager = await TcpSocketManager.get(session)
    sock = await manager.open(host="127.0.0.1", port=echo_port)
    received = bytearray()
    sock.add_event_listener(DATA_EVENT, received.extend)
    await sock.send(b"through the front door")
    await wait_until(lambda: bytes(received) == b"through the front door")
    await session.close()


class SystemdTests(TestCase):
    async def test_socket_activation(self) -> None:
        socket_unit, service_unit = unit("tcpsocket.socket"), unit("tcpsocket.service")
        self.assertEqual(socket_unit["Socket"]["ListenStream"], "127.0.0.1:8081")
        self.assertEqual(service_unit["Unit"]["Requires"], "tcpsocket.socket")
        command = shlex.split(service_unit["Service"]["ExecStart"])
        self.assertTrue(command[0].endswith("/twistd"))
        name = socket_unit["Socket"]["FileDescriptorName"]
        self.assertIn(f"systemd:domain=INET:name={name}", command)
        self.assertIn("--nodaemon", command)

        # The unit's command, with this interpreter's twistd, a test tokens file, and the
        # loopback rule tests need; the socket is the unit's, on a free port.
        directory = temp_dir(self)
        tokens = directory / "tokens.json"
        tokens.write_text(f'[{{"token": "{TOKEN}", "identity": "systemd"}}]')
        args = [str(tokens) if a == "/etc/tcpsocket/tokens.json" else a for a in command[1:]]
        args += ["--allow", "127.0.0.1:*"]
        port = free_port()
        activator = shutil.which("systemd-socket-activate")
        self.assertIsNotNone(activator, "scripts/test installs Debian's systemd package")
        assert activator is not None
        listen = socket_unit["Socket"]["ListenStream"].replace(":8081", f":{port}")
        activate = [activator, "-l", listen, f"--fdname={name}", "-E", "PYTHONPATH"]
        daemon = spawn_process(self, [*activate, *TWISTD, *args], directory)
        session = await connect_when_up(f"ws://127.0.0.1:{port}/ws", daemon)
        await echo_round_trip(self, session)
        await wait_until(lambda: b"closed by" in daemon.output, timeout=30)
        records = [
            json.loads(line) for line in daemon.output.decode().splitlines() if line.startswith("{")
        ]  # --json-logs, for the journal
        opened = [r for r in records if r["namespace"] == "tcpsocket.service"]
        closed = [r for r in records if r["namespace"] == "tcpsocket.remote"]
        self.assertEqual(opened[0]["identity"], "systemd")
        self.assertEqual(opened[0]["session"], 1)
        self.assertEqual(opened[0]["remote"], closed[0]["remote"])
        self.assertTrue(closed[0]["remote"].startswith("127.0.0.1:"))
        self.assertEqual((closed[0]["sent"], closed[0]["received"]), (22, 22))
        self.assertIsNone(closed[0]["reason"])


async def connect_when_up(
    url: str, daemon: Any, endpoint: Any = None, token: str = TOKEN
) -> Session:
    """A session, retried until the daemon (or the proxy) answers."""
    last: Exception | None = None
    for _ in range(300):
        if daemon.ended.called:
            raise AssertionError(daemon.output.decode())
        try:
            return await Session.connect(url, token, endpoint=endpoint)
        except Exception as e:
            last = e
            await _sleep(0.1)
    raise AssertionError(f"no session: {last}\n{daemon.output.decode()}")


async def _sleep(seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


class HaproxyTests(TestCase):
    async def test_tls_front_end(self) -> None:
        haproxy = shutil.which("haproxy")
        self.assertIsNotNone(haproxy, "scripts/test installs Debian's haproxy")
        assert haproxy is not None
        directory = temp_dir(self)
        key, cert = directory / "key.pem", directory / "cert.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                "-keyout", str(key), "-out", str(cert),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        pem = directory / "tcpsocket.pem"
        pem.write_bytes(cert.read_bytes() + key.read_bytes())

        _, daemon_port = await start_daemon(self)
        front = free_port()
        config = (DEPLOY / "haproxy.cfg").read_text()
        self.assertIn("bind 127.0.0.1:8443 ssl crt /etc/haproxy/tcpsocket.pem", config)
        config = (
            config.replace("127.0.0.1:8443", f"127.0.0.1:{front}")
            .replace("/etc/haproxy/tcpsocket.pem", str(pem))
            .replace("127.0.0.1:8081", f"127.0.0.1:{daemon_port}")
        )
        (directory / "haproxy.cfg").write_text(config)
        proxy = spawn_process(
            self, [haproxy, "-db", "-f", str(directory / "haproxy.cfg")], directory
        )

        trust = ssl.Certificate.loadPEM(cert.read_bytes())
        tls = ssl.optionsForClientTLS("localhost", trustRoot=trust)

        def endpoint() -> Any:
            return wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", front))

        url = f"wss://localhost:{front}/ws"
        session = await connect_when_up(url, proxy, endpoint(), token=support.TOKEN)
        await echo_round_trip(self, session)

        # The proxy does not forward /metrics (the daemon would see a loopback client).
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        from tests.test_web import read_body

        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
        response = await agent.request(b"GET", f"https://localhost:{front}/metrics".encode())
        await read_body(response)
        self.assertEqual(response.code, 403)
        response = await agent.request(
            b"GET", f"https://localhost:{front}/api/v1/shared/core.js".encode()
        )
        self.assertEqual(response.code, 200)
        await read_body(response)


class DockerfileTests(SynchronousTestCase):
    def instructions(self) -> list[tuple[str, str]]:
        text = (DEPLOY / "Dockerfile").read_text()
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]

    def test_runs_as_a_non_root_user(self) -> None:
        steps = self.instructions()
        kinds = [kind for kind, _ in steps]
        self.assertEqual(kinds[0], "FROM")
        users = [(i, arg) for i, (kind, arg) in enumerate(steps) if kind == "USER"]
        self.assertEqual(len(users), 1)
        index, user = users[0]
        self.assertNotIn(user.strip(), ("root", "0", "0:0"))
        created = [arg for kind, arg in steps if kind == "RUN" and "useradd" in arg]
        self.assertTrue(created and re.search(rf"\b{user.strip()}$", created[0]))
        self.assertTrue(
            all(kind != "RUN" for kind, _ in steps[index:]), "no RUN as root after USER"
        )
        self.assertLess(index, kinds.index("CMD"))

    def test_copies_what_exists_and_runs_the_daemon(self) -> None:
        for kind, arg in self.instructions():
            if kind == "COPY":
                *sources, _ = arg.split()
                for source in sources:
                    self.assertTrue((ROOT / source).exists(), source)
        cmd = dict(self.instructions())["CMD"]
        import json

        argv = json.loads(cmd)
        self.assertEqual(argv[:4], ["twistd", "--nodaemon", "--pidfile=", "tcpsocket"])
        self.assertIn("--listen", argv)
