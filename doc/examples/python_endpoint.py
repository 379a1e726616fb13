import os

from twisted.internet import defer, task
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from tcpsocket.client import Session, TcpSocketClientEndpoint

URL = os.environ.get("TCPSOCKET_URL", "ws://127.0.0.1:8081/ws")
TOKEN = os.environ.get("WS_RUNTIME_TOKEN", "change-this-secret-token")


class Chat(LineReceiver):
    def connectionMade(self):
        self.done = defer.Deferred()
        self.sendLine(b"hello")

    def lineReceived(self, line):
        print("server said", line)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(None)


async def main(reactor):
    session = await Session.connect(URL, TOKEN)
    endpoint = TcpSocketClientEndpoint(session, "chat.example.org", 7000)
    chat = await endpoint.connect(Factory.forProtocol(Chat))
    await chat.done
    await session.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
