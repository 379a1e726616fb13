import os

from twisted.internet import defer, task

from tcpsocket.client import CLOSE_EVENT, DATA_EVENT, Session, TcpSocketManager

URL = os.environ.get("TCPSOCKET_URL", "ws://127.0.0.1:8081/ws")
TOKEN = os.environ.get("WS_RUNTIME_TOKEN", "change-this-secret-token")


async def main(reactor):
    session = await Session.connect(URL, TOKEN)
    manager = await TcpSocketManager.get(session)
    socket = await manager.open({"host": "example.com", "port": 80})
    closed = defer.Deferred()
    socket.add_event_listener(DATA_EVENT, lambda data: print(data.decode(errors="replace")))
    socket.add_event_listener(CLOSE_EVENT, closed.callback)
    await socket.send(b"HEAD / HTTP/1.0\r\nHost: example.com\r\n\r\n")
    await closed  # an HTTP/1.0 server closes after its reply
    await session.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
