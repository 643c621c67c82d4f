// A Node client of `syncstatus serve`, as a Next.js app or a script would write it: global
// fetch, ETags, JSON Merge Patch, a streaming reader of the event stream across a restart of
// the server, and a CORS preflight from another origin.
//
// Run by cli/tests/serve.rs: node client.mjs, with SYNCSTATUS_BIN (the syncstatus binary)
// and SYNCSTATUS_TEST_DIR (an empty directory for the file store) in the environment.
// Prints one `ok - ...` line per check; exits 1 on the first failure.

import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import { createInterface } from "node:readline";

const BIN = process.env.SYNCSTATUS_BIN;
const DIR = process.env.SYNCSTATUS_TEST_DIR;
const KEY = "node-client-write-key";
const PAGE_ORIGIN = "http://localhost:3000";
const DEADLINE_MS = 10_000;
assert.ok(BIN && DIR, "SYNCSTATUS_BIN and SYNCSTATUS_TEST_DIR must be set");

let server = null;
process.on("exit", () => server?.kill("SIGKILL"));
const watchdog = setTimeout(() => {
  console.error("not ok - the client did not finish within 60 s");
  process.exit(1);
}, 60_000);

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), DEADLINE_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Starts `syncstatus serve` on `port` (0: any) and resolves with its base URL. */
function start(port) {
  const child = spawn(
    BIN,
    ["--store", `file:${DIR}`, "serve", "--listen", `127.0.0.1:${port}`, "--cors-origin", PAGE_ORIGIN],
    { env: { ...process.env, SYNCSTATUS_WRITE_KEY: KEY }, stdio: ["ignore", "pipe", "inherit"] },
  );
  server = child;
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const listening = new Promise((resolve, reject) => {
    lines.on("line", (line) => {
      const match = /^listening on (http:\/\/\S+)$/.exec(line);
      if (match) resolve(match[1]);
    });
    child.on("exit", (code) => reject(new Error(`syncstatus serve exited with ${code} before listening`)));
  });
  return within(listening, "syncstatus serve to listen").then((base) => ({ base, child, exited }));
}

async function stop(running) {
  running.child.kill("SIGTERM");
  const { code, signal } = await within(running.exited, "syncstatus serve to stop on SIGTERM");
  assert.equal(code, 0, `serve exited with ${code} (signal ${signal}) on SIGTERM`);
}

const ok = (what) => console.log(`ok - ${what}`);
const writeHeaders = (extra = {}) => ({
  authorization: `Bearer ${KEY}`,
  "content-type": "application/json",
  ...extra,
});

/** Reads server-sent events from a fetch body with a streaming reader. */
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: [], id: undefined };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.event = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
      if (event.data.length > 0) yield { ...event, data: JSON.parse(event.data.join("\n")) };
    }
  }
}

const id = "node-job-1";
let running = await start(0);
const port = new URL(running.base).port;
const url = () => `${running.base}/syncs/${id}`;

// Create only.
let response = await fetch(url(), {
  method: "PUT",
  headers: writeHeaders({ "if-none-match": "*" }),
  body: JSON.stringify({ state: "running", progress: { done: 1, total: 10 }, message: "page 1" }),
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.status, 201, await response.text());
const created = response.headers.get("etag");
assert.match(created, /^"\d+\.1"$/);
ok(`PUT with If-None-Match: * created the record, ETag ${created}`);

response = await fetch(url(), {
  method: "PUT",
  headers: writeHeaders({ "if-none-match": "*" }),
  body: "{}",
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.status, 412);
ok("a second create-only PUT is 412");

// Merge patch under If-Match.
response = await fetch(url(), {
  method: "PATCH",
  headers: writeHeaders({ "content-type": "application/merge-patch+json", "if-match": created }),
  body: JSON.stringify({ progress: { done: 2 }, message: null }),
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.status, 200, await response.clone().text());
const patched = response.headers.get("etag");
const record = await response.json();
assert.deepEqual(record.status, { state: "running", progress: { done: 2, total: 10 } });
assert.equal(record.version, 2);
ok("PATCH with If-Match merged the patch (null removed `message`)");

// The same patch on the stale tag.
response = await fetch(url(), {
  method: "PATCH",
  headers: writeHeaders({ "content-type": "application/merge-patch+json", "if-match": created }),
  body: JSON.stringify({ state: "failed" }),
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.status, 412);
assert.equal(response.headers.get("etag"), patched, "the 412 names the current write");
assert.equal((await response.json()).id, id);
ok("PATCH with a stale ETag is 412 and names the current ETag");

// Cheap polling.
response = await fetch(url(), { headers: { "if-none-match": patched }, signal: AbortSignal.timeout(DEADLINE_MS) });
assert.equal(response.status, 304);
assert.equal(await response.text(), "");
ok("GET with If-None-Match of the current ETag is 304 without a body");

// Without the key.
response = await fetch(url(), {
  method: "PATCH",
  headers: { "content-type": "application/json" },
  body: "{}",
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.status, 401);
ok("a write without the key is 401");

// CORS preflight from the Next.js app's origin, and from an origin not listed.
response = await fetch(url(), {
  method: "OPTIONS",
  headers: {
    origin: PAGE_ORIGIN,
    "access-control-request-method": "PATCH",
    "access-control-request-headers": "content-type, if-match, authorization",
  },
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.ok(response.ok, `preflight answered ${response.status}`);
assert.equal(response.headers.get("access-control-allow-origin"), PAGE_ORIGIN);
assert.match(response.headers.get("access-control-allow-methods"), /PATCH/);
assert.match(response.headers.get("access-control-allow-headers"), /if-match/);
response = await fetch(url(), {
  method: "OPTIONS",
  headers: { origin: "http://evil.example", "access-control-request-method": "PATCH" },
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.headers.get("access-control-allow-origin"), null);
ok("CORS preflight admits the listed origin and no other");

// The event stream, across a restart of the server.
const stream = await fetch(`${url()}/events`, {
  headers: { accept: "text/event-stream" },
  signal: AbortSignal.timeout(30_000),
});
assert.equal(stream.status, 200);
assert.match(stream.headers.get("content-type"), /^text\/event-stream/);
const first = events(stream.body);
let next = await within(first.next(), "the first event");
assert.equal(next.done, false);
let lastEventId = next.value.id;
const firstVersions = [next.value.data].flat().map((r) => r.version);
assert.deepEqual(firstVersions, [2], JSON.stringify(next.value));
ok(`the event stream started with \`${next.value.event}\` of version 2 (id ${lastEventId})`);

await stop(running);
// A graceful stop ends the stream: the reader sees its end instead of hanging.
for (;;) {
  next = await within(first.next(), "the stream to end on shutdown");
  if (next.done) break;
  lastEventId = next.value.id ?? lastEventId;
}
ok("SIGTERM: serve exited 0 and the event stream ended");

running = await start(port);
response = await fetch(url(), {
  method: "PATCH",
  headers: writeHeaders({ "content-type": "application/merge-patch+json", "if-match": patched }),
  body: JSON.stringify({ progress: { done: 3 } }),
  signal: AbortSignal.timeout(DEADLINE_MS),
});
assert.equal(response.status, 200, "the ETag survives the restart");
ok("after the restart the old ETag still names the record's write");

const resumed = await fetch(`${url()}/events`, {
  headers: { accept: "text/event-stream", "last-event-id": lastEventId },
  signal: AbortSignal.timeout(30_000),
});
const second = events(resumed.body);
next = await within(second.next(), "the missed write after reconnecting");
const missed = [next.value.data].flat();
assert.deepEqual(missed.map((r) => r.version), [3], JSON.stringify(next.value));
assert.equal(missed[0].status.progress.done, 3);
ok(`reconnecting with Last-Event-ID ${lastEventId} delivered the missed write (\`${next.value.event}\` v3)`);
await second.return();

await stop(running);
clearTimeout(watchdog);
ok("done");
