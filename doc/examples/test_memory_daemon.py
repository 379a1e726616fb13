from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from tcpsocket.client import DATA_EVENT, TcpSocketManager
from tcpsocket.testing import MemoryDaemon


async def read_greeting(session, host, port):
    """The application code under test: the first bytes a server sends."""
    manager = await TcpSocketManager.get(session)
    socket = await manager.open(host=host, port=port)
    greeting = Deferred()
    socket.add_event_listener(DATA_EVENT, greeting.callback)
    data = await greeting
    await socket.close()
    return data


class Greeter(Protocol):
    def connectionMade(self):
        self.transport.write(b"* OK IMAP4rev1 ready\r\n")


class GreetingTests(SynchronousTestCase):
    def test_greeting(self):
        daemon = MemoryDaemon(tokens=["memory-daemon-token"])
        daemon.add_remote("imap.example", 143, Factory.forProtocol(Greeter))

        async def scenario():
            session = await daemon.session("memory-daemon-token")
            return await read_greeting(session, "imap.example", 143)

        d = ensureDeferred(scenario())
        daemon.flush()
        self.assertEqual(self.successResultOf(d), b"* OK IMAP4rev1 ready\r\n")
