// N clients for the chaos test (tests/client/test_js.py): each is given every URL, joins the
// history room and logs what it gets. Prints {"ready": true} once all have joined; reads
// {"last": L} on stdin, then waits until every client got message L (or the deadline) and
// prints {"logs": [...], ...} and exits.
import WebSocket from "ws";
import { createInterface } from "node:readline";
import { RoomcastClient } from "../src/roomcast.js";

const [urlList, count = "10", room = "chaos"] = process.argv.slice(2);
const urls = urlList.split(",");
const clients = [];
const seens = [];

for (let i = 0; i < Number(count); i++) {
  const ordered = i % 2 === 0 ? urls : [...urls].reverse();
  const client = new RoomcastClient(ordered, {
    WebSocket, token: `js${i}`, rooms: [room], historyRooms: "chaos*", backoff: [50, 1000],
  });
  const seen = { log: [], reconnects: [], last: 0, droppedAt: null };
  client.on("n", (m) => { seen.log.push(["n", m.data.n]); seen.last = Math.max(seen.last, m.data.n); });
  client.on("gap", () => { seen.log.push(["gap", 0]); });
  client.on("disconnected", () => { seen.droppedAt = performance.now(); });
  client.on("connected", () => {
    if (seen.droppedAt !== null) seen.reconnects.push((performance.now() - seen.droppedAt) / 1000);
    seen.droppedAt = null;
  });
  clients.push(client);
  seens.push(seen);
}

const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");
await Promise.all(clients.map((c) => c.connect()));
await Promise.all(clients.map((c) => c.join(room)));
print({ ready: true });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const { last } = JSON.parse(line);
  const deadline = Date.now() + 90000;
  while (seens.some((s) => s.last < last) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  break;
}
await Promise.all(clients.map((c) => c.close()));
print({
  logs: seens.map((s) => s.log),
  reconnects: seens.map((s) => s.reconnects),
  replayed: clients.reduce((sum, c) => sum + c.replayed, 0),
  connections: clients.reduce((sum, c) => sum + c.connections, 0),
  perClient: clients.map((c) => c.connections),
});
process.exit(0);
