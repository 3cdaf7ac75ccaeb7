// The client against real `roomcast serve` processes (tools/server.js), over real sockets.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { RoomcastClient, ClientClosed, RequestError } from "../src/roomcast.js";
import { startServer, eventually } from "../tools/server.js";

const servers = [];
async function server(...args) {
  const s = await startServer(["--history-rooms", "h-*", "--presence-rooms", "p-*", ...args]);
  servers.push(s);
  return s;
}
const clients = [];
after(async () => {
  // A test that failed midway leaves clients that would reconnect forever.
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(servers.map((s) => s.stop()));
});

const client = (url, options = {}) => {
  const c = new RoomcastClient(url, { WebSocket, backoff: [20, 200], historyRooms: "h-*", ...options });
  clients.push(c);
  return c;
};

test("join answers history rooms, messages carry room and offset, a dropped connection is recovered", async () => {
  const { url } = await server();
  const reader = client(url, { token: "reader" });
  const writer = client(url, { token: "writer" });
  const got = [];
  const joined = [];
  reader.on("n", (m) => { got.push(m); });
  reader.on("joined", (j) => { joined.push(j); });
  const drops = [];
  reader.on("disconnected", (d) => { drops.push(d); });
  await reader.connect();
  await writer.connect();
  assert.equal(reader.state, "connected");
  assert.equal(reader.userId, "reader");
  const answer = await reader.join("h-1", "plain");
  assert.deepEqual(Object.keys(answer), ["h-1"]);
  assert.equal(answer["h-1"].recovered, false);
  for (let i = 1; i <= 3; i++) await writer.send("publish", { room: "h-1", event: "n", data: i });
  await eventually(() => got.length === 3, 10000, "three messages");
  assert.deepEqual(got.map((m) => [m.data, m.room, m.offset]), [[1, "h-1", 1], [2, "h-1", 2], [3, "h-1", 3]]);
  await reader.send("drop");
  await eventually(() => drops.length === 1, 10000, "dropped");
  assert.equal(drops[0].code, 1011);
  for (let i = 4; i <= 6; i++) await writer.send("publish", { room: "h-1", event: "n", data: i });
  await eventually(() => got.length === 6, 10000, "six messages");
  assert.deepEqual(got.map((m) => m.data), [1, 2, 3, 4, 5, 6]);
  assert.equal(reader.connections, 2);
  assert.equal(joined.at(-1).recovered, true);
  assert.deepEqual(joined.at(-1).previous?.epoch, joined[0].epoch);
  assert.deepEqual(reader.positions, { "h-1": { epoch: joined[0].epoch, offset: 6 } });
  await reader.close();
  assert.equal(reader.state, "closed");
  // Away for good: a new client resumes from the positions the old one kept.
  for (let i = 7; i <= 9; i++) await writer.send("publish", { room: "h-1", event: "n", data: i });
  const resumed = client(url, { token: "reader", rooms: ["h-1"], positions: reader.positions });
  const later = [];
  resumed.on("n", (m) => { later.push(m.data); });
  await resumed.connect();
  const again = await resumed.join("h-1");
  assert.equal(again["h-1"].recovered, true);
  await eventually(() => later.length === 3, 10000, "the replay");
  assert.deepEqual(later, [7, 8, 9]);
  assert.equal(resumed.replayed, 3);
  await resumed.close();
  await writer.close();
});

test("an expired token is replaced through getToken on reconnect", async () => {
  const { url } = await server();
  const tokens = ["expired-1", "fresh"];
  const seen = [];
  const c = client(url, { getToken: async () => { const t = tokens.shift() ?? "fresh"; seen.push(t); return t; } });
  const drops = [];
  c.on("disconnected", (d) => { drops.push(d); });
  await c.connect();
  assert.equal(c.userId, "fresh");
  await eventually(() => drops.length === 1, 5000, "the refusal reported");
  assert.equal(drops[0].code, 4003);
  assert.equal(drops[0].error, "Authentication failed");
  assert.equal(drops[0].reconnecting, true);
  assert.deepEqual(seen, ["expired-1", "fresh"]);
  await c.close();
});

test("4003 with no new token stops reconnecting", async () => {
  const { url } = await server();
  const c = client(url, { token: "expired" });
  await assert.rejects(c.connect(), (err) => err instanceof ClientClosed && err.code === 4003);
  assert.equal(c.state, "closed");
  assert.equal(c.connections, 0);
  assert.equal(c.closeCode, 4003);
  await c.close();
});

test("a server that requires encryption: the ECDH client works, a plain one is refused with 4004", async () => {
  const { url } = await server("--require-encryption");
  const secure = client(url, { token: "secure", encryption: true });
  const got = [];
  secure.on("n", (m) => { got.push(m); });
  await secure.connect();
  await secure.join("h-9");
  await secure.send("publish", { room: "h-9", event: "n", data: { text: "héllo ✓" } });
  await eventually(() => got.length === 1, 10000, "the sealed message");
  assert.deepEqual([got[0].data, got[0].room, got[0].offset], [{ text: "héllo ✓" }, "h-9", 1]);
  const plain = client(url, { token: "plain" });
  await assert.rejects(plain.connect(), (err) => err instanceof ClientClosed && err.code === 4004);
  await secure.close();
  await plain.close();
});

test("heartbeats keep an idle client past the server's heartbeat timeout; without them it is closed 4002", async () => {
  const { url } = await server("--heartbeat-timeout-ms", "600");
  const idle = client(url, { token: "idle", heartbeat: 600 });
  const silent = client(url, { token: "silent", heartbeat: 0, reconnect: false });
  const drops = [];
  idle.on("disconnected", (d) => { drops.push(d); });
  await idle.connect();
  await silent.connect().catch(() => {});
  await eventually(() => silent.state === "closed", 10000, "the silent client closed");
  assert.equal(silent.closeCode, 4002);
  const started = Date.now();
  await eventually(() => Date.now() - started > 2400, 10000, "four timeouts");
  assert.deepEqual(drops, []);
  assert.equal(idle.connections, 1);
  await idle.close();
});

test("presence lists the members; a room without presence is refused", async () => {
  const { url } = await server();
  const a = client(url, { token: "ann", rooms: ["p-1"] });
  const b = client(url, { token: "bob", rooms: ["p-1"] });
  await a.connect();
  await b.connect();
  await a.join("p-1");
  await b.join("p-1");
  const members = await a.presence("p-1");
  assert.deepEqual(members.map((m) => m.userId).sort(), ["ann", "bob"]);
  await assert.rejects(a.presence("plain"), (err) => err instanceof RequestError && err.message === "Presence not allowed");
  await a.close();
  await b.close();
});

test("a slow callback does not delay heartbeats or answers", async () => {
  const { url } = await server("--heartbeat-timeout-ms", "600");
  const c = client(url, { token: "slow", heartbeat: 600 });
  const w = client(url, { token: "w" });
  let release;
  const stuck = new Promise((resolve) => { release = resolve; });
  const got = [];
  c.on("n", async (m) => { got.push(m.data); if (m.data === 1) await stuck; });
  await c.connect();
  await w.connect();
  await c.join("h-s", "p-s");
  await w.send("publish", { room: "h-s", event: "n", data: 1 });
  await eventually(() => got.length === 1, 10000, "the first message");
  const started = Date.now();
  // The callback is stuck; the connection stays up and requests are answered.
  await eventually(() => Date.now() - started > 2000, 10000, "three timeouts");
  assert.equal((await c.presence("p-s")).length, 1);
  assert.equal(c.connections, 1);
  await w.send("publish", { room: "h-s", event: "n", data: 2 });
  release();
  await eventually(() => got.length === 2, 10000, "the second message");
  assert.deepEqual(got, [1, 2]);
  await c.close();
  await w.close();
});
