// roomcast's JavaScript client (SPEC §14): an ES module with no dependencies, for browsers
// and Node. It authenticates, heartbeats, reconnects with jittered back-off over one or
// several URLs, rejoins its rooms with the recovery positions of every history room (so a
// reconnecting client sees each message exactly once, in order, and is told per room whether
// it was recovered), speaks the built-in ECDH scheme with WebCrypto, and does not reconnect
// after 4003/4004 unless getToken() gives a new token.
//
// WebSocket: the global one (browsers, Node >= 22), or pass `WebSocket` in the options
// (Node 20: `import WebSocket from "ws"`).

const HKDF_INFO = new TextEncoder().encode("ignis-ecdh-p256-aes-256-gcm-v1");
const CURVE = { name: "ECDH", namedCurve: "P-256" };
const RESERVED = new Set([
  "authenticate", "connected", "disconnect", "join", "leave", "error", "heartbeat", "encrypted",
]);
const ALREADY_AUTHENTICATED = "Already authenticated";
const PRESENCE_NOT_ALLOWED = "Presence not allowed";
const REFUSED = new Set([4003, 4004]);
// Messages held for a room not yet synced on a connection; past this the oldest go and the
// room's next `joined` is a gap.
const MAX_HELD = 100000;

/** Thrown by requests whose connection ended before the server answered. */
export class ConnectionLost extends Error {
  constructor(message = "the connection ended") { super(message); this.name = "ConnectionLost"; }
}

/** Thrown when the client is closed (close(), or a refusal it cannot get past). */
export class ClientClosed extends Error {
  constructor(message = "the client is closed", code = null, reason = null, error = null) {
    super(message);
    this.name = "ClientClosed";
    this.code = code;
    this.reason = reason;
    this.error = error;
  }
}

/** An error event that answers a request ("Presence not allowed"). */
export class RequestError extends Error {
  constructor(message) { super(message); this.name = "RequestError"; }
}

// -- base64 and the ECDH scheme (SPEC §5) -----------------------------------------------

function toBase64(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** One connection's key pair; `session()` derives the AES-GCM key from `connected`. */
class Handshake {
  static async create() {
    const handshake = new Handshake();
    handshake.keys = await crypto.subtle.generateKey(CURVE, false, ["deriveBits"]);
    handshake.publicKey = toBase64(await crypto.subtle.exportKey("raw", handshake.keys.publicKey));
    return handshake;
  }

  async session(serverPublicKey, salt) {
    if (typeof serverPublicKey !== "string" || typeof salt !== "string") {
      throw new Error("the server did not encrypt this session");
    }
    const peer = await crypto.subtle.importKey("raw", fromBase64(serverPublicKey), CURVE, false, []);
    const shared = await crypto.subtle.deriveBits({ name: "ECDH", public: peer }, this.keys.privateKey, 256);
    const hkdf = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveKey"]);
    const key = await crypto.subtle.deriveKey(
      { name: "HKDF", hash: "SHA-256", salt: fromBase64(salt), info: HKDF_INFO },
      hkdf, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
    return new Session(key);
  }
}

class Session {
  constructor(key) { this.key = key; }

  async seal(message) {
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const plaintext = new TextEncoder().encode(JSON.stringify(message));
    const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, tagLength: 128 }, this.key, plaintext);
    return JSON.stringify({ event: "encrypted", data: { iv: toBase64(iv), ct: toBase64(ct) } });
  }

  async open(data) {
    if (!data || typeof data.iv !== "string" || typeof data.ct !== "string") {
      throw new Error("malformed encrypted message");
    }
    const plaintext = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: fromBase64(data.iv), tagLength: 128 }, this.key, fromBase64(data.ct));
    return JSON.parse(new TextDecoder().decode(plaintext));
  }
}

// -- recovery positions (the rules of SPEC §10, as in roomcast.client.streams) -----------

/**
 * History rooms' positions and per-connection sync state; pure, no I/O.
 * A room is synced on a connection once its `joined` arrived; until then its messages are
 * held. On `recovered: true` the held ones after the position sent back are handed over in
 * offset order, once each; on `recovered: false` for a first join they are handed over as
 * they came; on `recovered: false` after a position (a gap) they are dropped: the
 * application reloads the room's state as of that answer. A synced room expects offset
 * last + 1: anything else (a skip, or an offset going back because a new epoch began) makes
 * the connection leave and re-join the room with its position.
 */
export class Streams {
  constructor(recover = true, maxHeld = MAX_HELD) {
    this.recover = recover;
    this.maxHeld = maxHeld;
    this.rooms = new Map();
    this.replayed = 0;
  }

  _state(room) {
    let state = this.rooms.get(room);
    if (!state) {
      state = { position: null, synced: false, asked: null, requested: false, held: [], overflowed: false };
      this.rooms.set(room, state);
    }
    return state;
  }

  positions() {
    const out = {};
    for (const [room, state] of this.rooms) if (state.position) out[room] = { ...state.position };
    return out;
  }

  setPosition(room, position) { this._state(room).position = { epoch: position.epoch, offset: position.offset }; }

  known(room) { return this.rooms.has(room); }

  forget(room) { this.rooms.delete(room); }

  newConnection() {
    for (const state of this.rooms.values()) {
      state.synced = false;
      state.asked = null;
      state.requested = false;
      state.held = [];
      state.overflowed = false;
    }
  }

  recoverFor(rooms) {
    const wanted = {};
    let any = false;
    for (const room of rooms) {
      const state = this.rooms.get(room);
      if (!state || state.synced) continue;
      state.requested = true;
      if (this.recover && state.position) {
        state.asked = state.position;
        wanted[room] = { epoch: state.position.epoch, offset: state.position.offset };
        any = true;
      }
    }
    return any ? wanted : null;
  }

  /** @returns {{ready: object[], resync: string|null}} */
  onMessage(message, canResync = true) {
    const state = this._state(message.room);
    if (!state.synced) {
      this._hold(state, message);
      return { ready: [], resync: null };
    }
    const position = state.position;
    if (message.offset === position.offset + 1) {
      state.position = { epoch: position.epoch, offset: message.offset };
      return { ready: [message], resync: null };
    }
    if (!canResync) {
      const epoch = message.offset > position.offset ? position.epoch : "";
      state.position = { epoch, offset: message.offset };
      return { ready: [message], resync: null };
    }
    state.synced = false;
    state.requested = false;
    state.held = [message];
    return { ready: [], resync: message.room };
  }

  /**
   * @returns {{joined: object|null, ready: object[], resync: boolean}} joined null: nothing
   * to tell; resync: re-join the room with its position now.
   */
  onJoined(room, epoch, offset, recovered, adopt = false) {
    const state = this._state(room);
    const current = state.position;
    if (!adopt && !state.requested && current) {
      // A second answer for a room in sync (a join overtaken by a leave and a new join):
      // nothing in it is newer than what the client has.
      if (state.synced && epoch === current.epoch) return { joined: null, ready: [], resync: false };
      // Joined by the server without the client's position, or the stream changed.
      if (this.recover && (state.synced || !recovered)) {
        state.synced = false;
        return { joined: null, ready: [], resync: true };
      }
    }
    let previous = state.asked;
    if (!previous && state.requested && state.position) previous = state.position;
    const held = state.held;
    const overflowed = state.overflowed;
    state.held = [];
    state.overflowed = false;
    let ready;
    let gap;
    if (recovered && previous && !overflowed) {
      ready = [];
      let last = previous.offset;
      if (current && current.epoch === previous.epoch) last = Math.max(last, current.offset);
      for (const message of [...held].sort((a, b) => a.offset - b.offset)) {
        if (message.offset > last) {
          ready.push(message);
          last = message.offset;
        }
      }
      this.replayed += ready.length;
      gap = false;
      if (epoch === previous.epoch) offset = Math.max(offset, last);
    } else {
      gap = Boolean(previous) || overflowed;
      ready = gap ? [] : held;
    }
    // A late answer never moves the position back.
    if (current && current.epoch === epoch && current.offset > offset) offset = current.offset;
    state.position = { epoch, offset };
    state.synced = true;
    state.asked = null;
    state.requested = false;
    return { joined: { room, epoch, offset, recovered, gap, previous: previous ? { ...previous } : null }, ready, resync: false };
  }

  _hold(state, message) {
    if (state.held.length >= this.maxHeld) {
      state.held.shift();
      state.overflowed = true;
    }
    state.held.push(message);
  }
}

// -- reconnect delays ---------------------------------------------------------------------

/** Full jitter: uniform in [0, min(max, min * 2^n)] after the n-th failure in a row. */
export function backoffDelay(failures, minMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(failures, 62));
  return random() * ceiling;
}

function globMatch(pattern, name) {
  // fnmatch-style: * any run, ? one character, [...] a class.
  let re = "^";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      const end = pattern.indexOf("]", i + 1);
      if (end === -1) { re += "\\["; continue; }
      let body = pattern.slice(i + 1, end);
      if (body.startsWith("!")) body = "^" + body.slice(1);
      re += "[" + body.replace(/\\/g, "\\\\") + "]";
      i = end;
    } else re += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
  }
  return new RegExp(re + "$", "s").test(name);
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  promise.catch(() => {});
  return { promise, resolve, reject, done: false };
}

function withTimeout(promise, ms, what) {
  if (ms == null || ms === Infinity) return promise;
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function validRoom(room) {
  if (typeof room !== "string" || room === "") throw new TypeError(`room must be a non-empty string: ${room}`);
  return room;
}

function decodeFrame(data) {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}

/** One connection: its socket, session key and the requests waiting for an answer. */
class Link {
  constructor(ws, url) {
    this.ws = ws;
    this.url = url;
    this.session = null;
    this.pings = [];
    this.presence = null; // {room, wait}
    this.presenceChain = Promise.resolve();
    this.sent = new Set();
    this.joined = new Map();
    this.waiting = new Map();
    this.lastSend = Date.now();
    this.lastError = null;
    this.alive = true;
    this.outbound = Promise.resolve();
    this.inbound = Promise.resolve();
  }

  fail() {
    this.alive = false;
    const lost = new ConnectionLost();
    for (const wait of this.pings) wait.reject(lost);
    if (this.presence) this.presence.wait.reject(lost);
    for (const waits of this.waiting.values()) for (const wait of waits) wait.reject(lost);
    this.pings = [];
    this.presence = null;
    this.waiting.clear();
  }
}

/**
 * A roomcast client. `urls`: one URL or several, tried in turn. Options: `token`, or
 * `getToken()` (sync or async, called for every connection); `rooms` joined on every
 * connection; `recover` (default true); `encryption` (the ECDH scheme); `heartbeat`: the
 * server's heartbeat timeout in ms (default 90000; a heartbeat goes after a third of it
 * without sending; 0: none); `reconnect` (default true); `backoff: [minMs, maxMs]` (default
 * [500, 20000], full jitter); `historyRooms`: globs of the server's history rooms (join()
 * waits for their `joined`); `positions` to resume from; `WebSocket` constructor;
 * `connectTimeout`, `requestTimeout` (ms).
 */
export class RoomcastClient {
  constructor(urls, options = {}) {
    this.urls = Array.isArray(urls) ? [...urls] : [urls];
    if (this.urls.length === 0) throw new TypeError("at least one url is needed");
    const o = options;
    this.token = o.token ?? null;
    this.getToken = o.getToken ?? null;
    this.recover = o.recover ?? true;
    this.encryption = Boolean(o.encryption);
    this.heartbeat = o.heartbeat ?? 90000;
    this.reconnect = o.reconnect ?? true;
    const [minDelay, maxDelay] = o.backoff ?? [500, 20000];
    if (!(minDelay >= 0 && maxDelay >= minDelay)) throw new RangeError(`backoff must be [minMs, maxMs]: ${o.backoff}`);
    this.backoff = [minDelay, maxDelay];
    this.connectTimeout = o.connectTimeout ?? 10000;
    this.requestTimeout = o.requestTimeout ?? 10000;
    const history = o.historyRooms ?? [];
    this._history = typeof history === "string" ? [history] : [...history];
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass one in the options (Node < 22: import WebSocket from \"ws\")");
    }
    this._rooms = new Set((o.rooms ?? []).map(validRoom));
    this._streams = new Streams(this.recover);
    for (const [room, position] of Object.entries(o.positions ?? {})) this._streams.setPosition(room, position);
    this._handlers = new Map();
    this._state = "disconnected";
    this.id = null;
    this.userId = null;
    this.closeCode = null;
    this.closeReason = null;
    this.connections = 0;
    this._link = null;
    this._linkWaiters = [];
    this._first = null;
    this._error = null;
    this._closing = false;
    this._running = null;
    this._calls = Promise.resolve();
    this._sleepTimer = null;
    this._wakeSleep = null;
  }

  /** "connecting" | "connected" | "disconnected" | "closed" */
  get state() { return this._state; }

  /** The last position of each history room: {room: {epoch, offset}}. */
  get positions() { return this._streams.positions(); }

  /** Messages handed over from recoveries so far. */
  get replayed() { return this._streams.replayed; }

  get rooms() { return [...this._rooms]; }

  /**
   * Call `callback` for each message of `event` ("*": every message), or for a life-cycle
   * event: "connected", "disconnected" ({code, reason, url, reconnecting, error}), "joined"
   * (every history room answer: {room, epoch, offset, recovered, gap, previous}) and "gap"
   * (messages may be missing: reload the room's state). Callbacks run one at a time in
   * arrival order (an async one is awaited before the next), never on the reader.
   * Returns a function that removes the callback.
   */
  on(event, callback) {
    if (!this._handlers.has(event)) this._handlers.set(event, []);
    this._handlers.get(event).push(callback);
    return () => {
      const list = this._handlers.get(event) ?? [];
      const i = list.indexOf(callback);
      if (i >= 0) list.splice(i, 1);
    };
  }

  /** Start; resolves once the first connection is authenticated. */
  connect() {
    if (this._state === "closed") return Promise.reject(this._error ?? new ClientClosed());
    if (!this._running) {
      this._first = deferred();
      this._running = this._run();
    }
    return this._first.promise;
  }

  /** Close (1000) and stop. */
  async close() {
    if (this._closing && !this._running) return;
    this._closing = true;
    const link = this._link;
    if (link) {
      try { link.ws.close(1000, "client closed"); } catch { /* already closing */ }
    }
    if (this._wakeSleep) this._wakeSleep();
    this._finish(new ClientClosed());
    const running = this._running;
    if (running) await withTimeout(running, 5000, "close").catch(() => {});
    this._running = null;
  }

  /**
   * Join rooms now and on every later connection. Resolves once the server handled the
   * join, with {room: joined} for the history rooms among them (matching historyRooms, or
   * known as history rooms); rooms without history get no answer of their own.
   */
  async join(...rooms) {
    const names = rooms.map(validRoom);
    for (const room of names) this._rooms.add(room);
    const deadline = Date.now() + this.requestTimeout;
    for (;;) {
      const link = await this._waitLink(deadline);
      try {
        return await this._joinOn(link, names, deadline);
      } catch (err) {
        if (!(err instanceof ConnectionLost)) throw err;
      }
    }
  }

  /** Leave rooms (and forget their positions). */
  async leave(...rooms) {
    const names = rooms.map(validRoom);
    for (const room of names) {
      this._rooms.delete(room);
      this._streams.forget(room);
    }
    const link = this._link;
    if (!link || !link.alive) return;
    for (const room of names) { link.sent.delete(room); link.joined.delete(room); }
    try {
      await this._send(link, { event: "leave", data: { rooms: names } });
      await this._ping(link, Date.now() + this.requestTimeout);
    } catch (err) {
      if (!(err instanceof ConnectionLost)) throw err;
    }
  }

  /** Send a custom event (at most once). Waits for a connection up to requestTimeout. */
  async send(event, data) {
    if (typeof event !== "string" || event === "") throw new TypeError(`event must be a non-empty string: ${event}`);
    if (RESERVED.has(event)) throw new TypeError(`reserved event: ${event}`);
    const link = await this._waitLink(Date.now() + this.requestTimeout);
    await this._send(link, data === undefined ? { event } : { event, data });
  }

  /** The members of a presence room: [{clientId, userId?}]. */
  async presence(room) {
    validRoom(room);
    const deadline = Date.now() + this.requestTimeout;
    for (;;) {
      const link = await this._waitLink(deadline);
      const turn = link.presenceChain;
      const mine = deferred();
      link.presenceChain = mine.promise.catch(() => {});
      try {
        await turn;
        if (!link.alive) continue;
        const wait = deferred();
        link.presence = { room, wait };
        await this._send(link, { event: "presence", data: { room } });
        return await withTimeout(wait.promise, deadline - Date.now(), `presence of ${room}`);
      } catch (err) {
        if (!(err instanceof ConnectionLost)) throw err;
      } finally {
        if (link.presence && link.presence.room === room) link.presence = null;
        mine.resolve();
      }
    }
  }

  // -- internals: requests ---------------------------------------------------------------

  async _waitLink(deadline) {
    for (;;) {
      if (this._state === "closed" || this._closing) throw this._error ?? new ClientClosed();
      const link = this._link;
      if (link && link.alive) return link;
      if (!this._running) throw new ClientClosed("the client is not started: call connect() first");
      const wait = deferred();
      this._linkWaiters.push(wait);
      await withTimeout(wait.promise, deadline - Date.now(), "no connection");
    }
  }

  _linkChanged() {
    const waiters = this._linkWaiters;
    this._linkWaiters = [];
    for (const wait of waiters) wait.resolve();
  }

  async _joinOn(link, rooms, deadline) {
    const fresh = rooms.filter((room) => !link.sent.has(room));
    const expected = rooms.filter((room) => this._isHistory(room));
    const waits = new Map();
    for (const room of expected) {
      if (link.joined.has(room)) continue;
      const wait = deferred();
      if (!link.waiting.has(room)) link.waiting.set(room, []);
      link.waiting.get(room).push(wait);
      waits.set(room, wait);
    }
    if (fresh.length) {
      for (const room of fresh) link.sent.add(room);
      await this._send(link, this._joinMessage(fresh));
    }
    await this._ping(link, deadline);
    const result = {};
    for (const room of expected) if (link.joined.has(room)) result[room] = link.joined.get(room);
    for (const [room, wait] of waits) {
      try {
        result[room] = await withTimeout(wait.promise, deadline - Date.now(), `joined of ${room}`);
      } catch (err) {
        if (err instanceof ConnectionLost) throw err;
        throw new Error(`no joined answer for room ${room} (refused, or not a history room)`);
      }
    }
    return result;
  }

  _joinMessage(rooms) {
    const data = { rooms };
    const recover = this._streams.recoverFor(rooms);
    if (recover) data.recover = recover;
    return { event: "join", data };
  }

  async _ping(link, deadline) {
    const wait = deferred();
    link.pings.push(wait);
    await this._send(link, { event: "authenticate" });
    await withTimeout(wait.promise, deadline - Date.now(), "server answer");
  }

  _isHistory(room) {
    return this._streams.known(room) || this._history.some((pattern) => globMatch(pattern, room));
  }

  _send(link, message) {
    if (!link.alive) return Promise.reject(new ConnectionLost());
    link.lastSend = Date.now();
    // Sealing is asynchronous: one chain per connection keeps the sending order.
    const step = link.outbound.then(async () => {
      if (!link.alive) throw new ConnectionLost();
      const frame = link.session ? await link.session.seal(message) : JSON.stringify(message);
      try { link.ws.send(frame); } catch (err) { throw new ConnectionLost(String(err)); }
    });
    link.outbound = step.catch(() => {});
    return step;
  }

  // -- internals: the connection loop ----------------------------------------------------

  async _run() {
    let failures = 0;
    let index = 0;
    let nextToken = null;
    try {
      while (!this._closing) {
        const url = this.urls[index];
        this._state = "connecting";
        let token;
        let outcome;
        try {
          token = nextToken ?? (await this._token());
          nextToken = null;
          outcome = await this._session(url, token);
        } catch (err) {
          outcome = outcomeOf(1006, String(err && err.message ? err.message : err), url, false, null);
        }
        if (outcome.established) failures = 0;
        if (this._closing) {
          this._emit("disconnected", { ...outcome.info(false) });
          return;
        }
        if (REFUSED.has(outcome.code)) {
          const fresh = await this._freshToken(token);
          if (fresh == null) {
            this._emit("disconnected", outcome.info(false));
            this.closeCode = outcome.code;
            this.closeReason = outcome.reason;
            this._finish(new ClientClosed(
              `connection refused: ${outcome.code} ${outcome.reason}${outcome.error ? ` (${outcome.error})` : ""}`,
              outcome.code, outcome.reason, outcome.error));
            return;
          }
          nextToken = fresh;
        }
        this._state = "disconnected";
        this._emit("disconnected", outcome.info(this.reconnect));
        if (!this.reconnect) {
          this.closeCode = outcome.code;
          this.closeReason = outcome.reason;
          this._finish(new ClientClosed(`connection ended: ${outcome.code} ${outcome.reason}`, outcome.code, outcome.reason, outcome.error));
          return;
        }
        index = (index + 1) % this.urls.length;
        const delay = backoffDelay(failures, this.backoff[0], this.backoff[1]);
        failures += 1;
        await new Promise((resolve) => {
          this._wakeSleep = resolve;
          this._sleepTimer = setTimeout(resolve, delay);
        });
        clearTimeout(this._sleepTimer);
        this._wakeSleep = null;
      }
    } finally {
      if (this._closing || this._error) this._state = "closed";
    }
  }

  async _token() {
    if (!this.getToken) return this.token;
    this.token = await this.getToken();
    return this.token;
  }

  async _freshToken(used) {
    if (!this.getToken) return null;
    try {
      const token = await this._token();
      return token != null && token !== used ? token : null;
    } catch {
      return null;
    }
  }

  /** One connection from open to close. */
  _session(url, token) {
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new this._WebSocket(url);
      } catch (err) {
        resolve(outcomeOf(1006, String(err.message ?? err), url, false, null));
        return;
      }
      ws.binaryType = "arraybuffer";
      const link = new Link(ws, url);
      let established = false;
      let handshake = null;
      let heartbeat = null;
      const openTimer = setTimeout(() => {
        if (!established) { try { ws.close(1000, "no connected answer"); } catch { /* closing */ } }
      }, this.connectTimeout);
      const finish = (code, reason) => {
        clearTimeout(openTimer);
        if (heartbeat) clearInterval(heartbeat);
        link.fail();
        if (this._link === link) {
          this._link = null;
          this._linkChanged();
        }
        resolve(outcomeOf(code, reason, url, established, link.lastError));
      };
      ws.onopen = async () => {
        try {
          const auth = { type: "Bearer", token };
          if (this.encryption) {
            handshake = await Handshake.create();
            auth.publicKey = handshake.publicKey;
          }
          ws.send(JSON.stringify({ event: "authenticate", data: auth }));
        } catch (err) {
          link.lastError = String(err);
          try { ws.close(1000, "client error"); } catch { /* closing */ }
        }
      };
      ws.onerror = () => {};
      ws.onclose = (event) => {
        // Messages already queued are handled first.
        link.inbound.then(() => finish(event.code || 1006, event.reason || ""));
      };
      ws.onmessage = (event) => {
        const raw = decodeFrame(event.data);
        link.inbound = link.inbound.then(async () => {
          let message;
          try { message = JSON.parse(raw); } catch { return; }
          if (!message || typeof message !== "object" || Array.isArray(message)) return;
          if (!established) {
            if (message.event === "error") link.lastError = message.data?.message ?? null;
            if (message.event !== "connected") return;
            const data = message.data && typeof message.data === "object" ? message.data : {};
            if (handshake) {
              try {
                link.session = await handshake.session(data.serverPublicKey, data.salt);
              } catch (err) {
                this._finish(new ClientClosed(`encryption refused by ${url}: ${err.message}`));
                this._closing = true;
                try { ws.close(1000, "no encrypted session"); } catch { /* closing */ }
                return;
              }
            }
            established = true;
            clearTimeout(openTimer);
            this.connections += 1;
            this.id = typeof data.id === "string" ? data.id : null;
            this.userId = typeof data.userId === "string" ? data.userId : null;
            this._streams.newConnection();
            this._link = link;
            this._state = "connected";
            this._emit("connected", {
              id: this.id, userId: this.userId, time: data.time ?? null, url,
              encrypted: Boolean(link.session), reconnect: this.connections > 1,
            });
            if (this._rooms.size) {
              const rooms = [...this._rooms];
              for (const room of rooms) link.sent.add(room);
              this._send(link, this._joinMessage(rooms)).catch(() => {});
            }
            if (this.heartbeat > 0) {
              const interval = this.heartbeat / 3;
              heartbeat = setInterval(() => {
                if (Date.now() - link.lastSend >= interval * 0.9) {
                  this._send(link, { event: "heartbeat" }).catch(() => {});
                }
              }, Math.max(10, interval / 4));
            }
            this._linkChanged();
            if (this._first && !this._first.done) { this._first.done = true; this._first.resolve(); }
            return;
          }
          await this._onMessage(link, message);
        }).catch((err) => { link.lastError = String(err); });
      };
    });
  }

  // -- internals: what the server sends --------------------------------------------------

  async _onMessage(link, message) {
    if (message.event === "encrypted" && link.session) {
      try {
        message = await link.session.open(message.data);
      } catch {
        return; // undecryptable: nothing to hand over
      }
      if (!message || typeof message !== "object") return;
    }
    const { event, data } = message;
    if (typeof event !== "string") return;
    if (event === "error") {
      const text = data?.message;
      if (text === ALREADY_AUTHENTICATED && link.pings.length) {
        link.pings.shift().resolve();
        return;
      }
      link.lastError = text ?? null;
      if (text === PRESENCE_NOT_ALLOWED && link.presence) {
        link.presence.wait.reject(new RequestError(text));
        return;
      }
    } else if (event === "joined" && data && typeof data === "object") {
      this._onJoined(link, data);
      return;
    } else if (event === "presence" && link.presence && data && data.room === link.presence.room && Array.isArray(data.clients)) {
      link.presence.wait.resolve(data.clients);
      return;
    }
    const item = { event, data, room: null, offset: null };
    if (typeof message.room === "string" && Number.isInteger(message.offset)) {
      item.room = message.room;
      item.offset = message.offset;
      const { ready, resync } = this._streams.onMessage(item, this._rooms.has(item.room));
      for (const one of ready) this._deliver(one);
      if (resync) this._resync(link, resync);
      return;
    }
    if (!("data" in message)) delete item.data;
    this._deliver(item);
  }

  _onJoined(link, data) {
    const { room, epoch, offset } = data;
    if (typeof room !== "string" || typeof epoch !== "string" || !Number.isInteger(offset)) return;
    const recovered = data.recovered === true;
    let { joined, ready, resync } = this._streams.onJoined(room, epoch, offset, recovered);
    if (resync) {
      if (this._rooms.has(room)) {
        this._resync(link, room);
        return;
      }
      ({ joined, ready } = this._streams.onJoined(room, epoch, offset, recovered, true));
    }
    if (!joined) return;
    link.joined.set(room, joined);
    for (const wait of link.waiting.get(room) ?? []) wait.resolve(joined);
    link.waiting.delete(room);
    this._emit("joined", joined);
    if (joined.gap) this._emit("gap", joined);
    for (const one of ready) this._deliver(one);
  }

  _resync(link, room) {
    this._send(link, { event: "leave", data: { rooms: [room] } }).catch(() => {});
    this._send(link, this._joinMessage([room])).catch(() => {});
  }

  // -- internals: handing over -----------------------------------------------------------

  _deliver(message) {
    const handlers = [...(this._handlers.get(message.event) ?? []), ...(this._handlers.get("*") ?? [])];
    if (handlers.length) this._call(handlers, message);
  }

  _emit(event, payload) {
    const handlers = this._handlers.get(event);
    if (handlers && handlers.length) this._call([...handlers], payload);
  }

  _call(handlers, payload) {
    this._calls = this._calls.then(async () => {
      for (const handler of handlers) {
        try {
          await handler(payload);
        } catch (err) {
          if (typeof console !== "undefined") console.error("roomcast: callback raised", err);
        }
      }
    });
  }

  _finish(error) {
    if (!this._error) this._error = error;
    this._state = "closed";
    this._closing = true;
    if (this._first && !this._first.done) { this._first.done = true; this._first.reject(error); }
    this._linkChanged();
  }
}

function outcomeOf(code, reason, url, established, error) {
  return {
    code, reason, established, error,
    info(reconnecting) { return { code, reason, url, reconnecting, error }; },
  };
}

export default RoomcastClient;
