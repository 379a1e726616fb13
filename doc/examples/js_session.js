// After the three classic scripts (with modules: import { Session } from ".../shared/session.js").
const session = new lib_session.Session();
const token = "change-this-secret-token";
const lazyReconnect = true; // reconnect, with backoff, whenever the daemon goes away
const sessionstate = {
  onsessionconnected() {
    console.log(`connected: ${session.is_connected()}`);
  },
  onsessiondisconnected(info) {
    console.log(`disconnected (code ${info.code}); a new session follows`);
  },
  onsessionconnectionerror(info) {
    console.log(`connection error: ${info.reason}`);
  },
};
const result = session.open("websocket", "localhost", token, sessionstate, lazyReconnect);
console.log(`open: ${JSON.stringify(result)}`); // open: {"success":true,"cause":"success"}
