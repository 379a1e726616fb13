import os

from twisted.internet import defer, task

from tcpsocket.client import CLOSE_EVENT, DATA_EVENT, Session, TcpSocketManager

URL = os.environ.get("TCPSOCKET_URL", "ws://127.0.0.1:8081/ws")
TOKEN = os.environ.get("WS_RUNTIME_TOKEN", "change-this-secret-token")


async def main(reactor):
    session = await Session.connect(URL, TOKEN)
    manager = await TcpSocketManager.get(session)
    socket = await manager.open(host="imap.example.org", port=143)
    done = defer.Deferred()
    received = bytearray()

    def on_data(data):
        print(data.decode(errors="replace"), end="")
        received.extend(data)
        if b"\r\na1 " in b"\r\n" + received:  # the tagged reply ends the command
            done.callback(None)

    socket.add_event_listener(DATA_EVENT, on_data)
    socket.add_event_listener(CLOSE_EVENT, lambda _: done.called or done.callback(None))
    await socket.send(b"a1 CAPABILITY\r\n")
    await done
    await session.close()


task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
