// The recovery rules without sockets (SPEC §10).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Streams, backoffDelay } from "../src/roomcast.js";

const msg = (offset, room = "h") => ({ event: "n", data: offset, room, offset });
const offsets = (messages) => messages.map((m) => m.offset);

test("a first join hands over what came before joined, then expects the next offset", () => {
  const s = new Streams();
  assert.equal(s.recoverFor(["h"]), null);
  assert.deepEqual(s.onMessage(msg(4)).ready, []);
  const { joined, ready } = s.onJoined("h", "E", 4, false);
  assert.deepEqual(offsets(ready), [4]);
  assert.equal(joined.gap, false);
  assert.deepEqual(offsets(s.onMessage(msg(5)).ready), [5]);
  assert.deepEqual(s.positions(), { h: { epoch: "E", offset: 5 } });
});

test("a recovery sends the position back and hands over replayed messages once, in order", () => {
  const s = new Streams();
  s.setPosition("h", { epoch: "E", offset: 3 });
  s.newConnection();
  assert.deepEqual(s.recoverFor(["h"]), { h: { epoch: "E", offset: 3 } });
  for (const o of [5, 4, 6, 5]) s.onMessage(msg(o));
  const { joined, ready } = s.onJoined("h", "E", 6, true);
  assert.deepEqual(offsets(ready), [4, 5, 6]);
  assert.equal(joined.recovered, true);
  assert.equal(joined.gap, false);
  assert.equal(s.replayed, 3);
});

test("a skip or a step back asks for a re-sync; an unrecovered answer is a gap and drops what was held", () => {
  const s = new Streams();
  s.recoverFor(["h"]);
  s.onJoined("h", "E", 0, false);
  assert.deepEqual(offsets(s.onMessage(msg(1)).ready), [1]);
  assert.deepEqual(s.onMessage(msg(3)), { ready: [], resync: "h" });
  assert.deepEqual(s.recoverFor(["h"]), { h: { epoch: "E", offset: 1 } });
  s.onMessage(msg(4));
  const { joined, ready } = s.onJoined("h", "F", 9, false);
  assert.equal(joined.gap, true);
  assert.deepEqual(joined.previous, { epoch: "E", offset: 1 });
  assert.deepEqual(ready, []);
  assert.deepEqual(offsets(s.onMessage(msg(10)).ready), [10]);
  assert.deepEqual(s.onMessage(msg(1)).resync, "h"); // a new epoch began
});

test("a joined the client did not ask for while it has a position asks for a re-sync", () => {
  const s = new Streams();
  s.setPosition("h", { epoch: "E", offset: 7 });
  s.newConnection();
  assert.deepEqual(s.onJoined("h", "E", 9, false), { joined: null, ready: [], resync: true });
});

test("a late second answer never moves the position back nor repeats a message", () => {
  const s = new Streams();
  s.setPosition("h", { epoch: "E", offset: 2 });
  s.newConnection();
  s.recoverFor(["h"]);
  s.onMessage(msg(3));
  assert.deepEqual(offsets(s.onJoined("h", "E", 3, true).ready), [3]);
  assert.deepEqual(offsets(s.onMessage(msg(4)).ready), [4]);
  assert.deepEqual(s.onJoined("h", "E", 1, true), { joined: null, ready: [], resync: false });
  assert.deepEqual(s.positions(), { h: { epoch: "E", offset: 4 } });
  assert.equal(s.onMessage(msg(6)).resync, "h");
  s.recoverFor(["h"]);
  for (const o of [3, 4, 5, 6]) s.onMessage(msg(o));
  assert.deepEqual(offsets(s.onJoined("h", "E", 2, true).ready), [5, 6]);
  assert.deepEqual(s.positions(), { h: { epoch: "E", offset: 6 } });
});

test("full jitter stays within [0, min(max, min * 2^n)]", () => {
  assert.equal(backoffDelay(0, 500, 20000, () => 0.999999) < 500, true);
  assert.equal(backoffDelay(3, 500, 20000, () => 1), 4000);
  assert.equal(backoffDelay(40, 500, 20000, () => 1), 20000);
  assert.equal(backoffDelay(5, 500, 20000, () => 0), 0);
});
