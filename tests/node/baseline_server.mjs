// The baseline of benches/serve.rs: a status server the way hand-rolled Node stores serve a
// record (readFile + JSON.parse + JSON.stringify per request), over the same file.
// Prints `listening PORT` once it listens on 127.0.0.1. DIR is the file store's directory.

import http from "node:http";
import { readFile } from "node:fs/promises";

const dir = process.env.DIR;
const server = http.createServer(async (request, response) => {
  const id = request.url.startsWith("/syncs/") ? request.url.slice("/syncs/".length) : "";
  try {
    const record = JSON.parse(await readFile(`${dir}/${id}.json`, "utf8"));
    const body = JSON.stringify(record);
    response.writeHead(200, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
    });
    response.end(body);
  } catch {
    response.writeHead(404);
    response.end();
  }
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
