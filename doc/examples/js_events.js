// An IMAP server speaks first; its banner waits in the daemon until DATA is enabled.
const session = new lib_session.Session();
session.open("websocket", "localhost", "change-this-secret-token", {
  async onsessionconnected() {
    const manager = await lib_tcpsocket.TcpSocketManager.get(session);
    const socket = await manager.open({ host: "imap.example.org", port: 143 });
    const decoder = new TextDecoder();
    let received = "";
    const onData = (bytes) => { // a Uint8Array
      received += decoder.decode(bytes, { stream: true });
      if (/^a1 .*\r\n/m.test(received)) {
        socket.removeEventListener(socket.DATA_EVENT, onData); // the last one: DATA is disabled
        socket.close();
      }
    };
    socket.addEventListener(socket.DATA_EVENT, onData); // the first one: DATA is enabled
    socket.addEventListener(socket.ERROR_EVENT, (message) => console.log(`error: ${message}`));
    socket.addEventListener(socket.CLOSE_EVENT, () => console.log(`closed after:\n${received}`));
    await socket.send("a1 CAPABILITY\r\n");
  },
});
