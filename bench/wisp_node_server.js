"use strict";
// wisp-server-node's Wisp endpoint on 127.0.0.1:PORT, for the benchmark.
//
//     NODE_PATH=DIR/node_modules node bench/wisp_node_server.js PORT
//
// The package's own createServer.js listens on every interface and logs every packet
// (log level DEBUG); this one listens on loopback only and logs warnings and errors.
// Plain HTTP requests get 404; WebSocket upgrades go to the package's routeRequest.

const http = require("node:http");
const { routeRequest } = require("wisp-server-node");

const WARN = 2; // LOG_LEVEL.WARN of wisp-server-node's Types.js
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node wisp_node_server.js PORT");
  process.exit(2);
}

const server = http.createServer((request, response) => {
  response.writeHead(404);
  response.end();
});
server.on("upgrade", (request, socket, head) => {
  routeRequest(request, socket, head, { logLevel: WARN, pingInterval: 30 });
});
server.listen(port, "127.0.0.1");

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
