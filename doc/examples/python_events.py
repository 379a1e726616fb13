import os

from twisted.internet import defer, task

from tcpsocket.client import CLOSE_EVENT, DATA_EVENT, ERROR_EVENT, Session, TcpSocketManager

URL = os.environ.get("TCPSOCKET_URL", "ws://127.0.0.1:8081/ws")
TOKEN = os.environ.get("WS_RUNTIME_TOKEN", "change-this-secret-token")


async def banner(manager, host, port):
    socket = await manager.open(host=host, port=port)
    done = defer.Deferred()
    socket.add_event_listener(DATA_EVENT, lambda data: print("got", data))
    socket.add_event_listener(ERROR_EVENT, lambda reason: print("error:", reason))
    socket.add_event_listener(CLOSE_EVENT, done.callback)
    await socket.send(b"QUIT\r\n")
    await done


async def main(reactor):
    session = await Session.connect(URL, TOKEN)
    manager = await TcpSocketManager.get(session)
    await banner(manager, "smtp.example.org", 25)
    await session.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
