// Type declarations for roomcast-client (src/roomcast.js).

/** Where a client is in a history room's stream. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A message from the server; `room` and `offset` are set for history rooms' messages. */
export interface Message<T = unknown> {
  event: string;
  /** Absent when the server sent no `data` key. */
  data?: T;
  room: string | null;
  offset: number | null;
}

/** The server's `joined` answer for a history room, as the client saw it. */
export interface Joined {
  room: string;
  epoch: string;
  offset: number;
  /** Every message after the position sent back was given again, in order. */
  recovered: boolean;
  /** The client had a position and it could not be recovered: reload the room's state. */
  gap: boolean;
  previous: Position | null;
}

export interface ConnectedInfo {
  id: string | null;
  userId: string | null;
  time: string | null;
  url: string;
  encrypted: boolean;
  /** False for the client's first connection. */
  reconnect: boolean;
}

export interface DisconnectedInfo {
  /** The close code (1006 when the connection broke without a close frame). */
  code: number;
  reason: string;
  url: string;
  /** Whether the client will try again. */
  reconnecting: boolean;
  /** The last error event before the close. */
  error: string | null;
}

export interface PresenceMember {
  clientId: string;
  userId?: string;
}

/** What `new WebSocket(url)` returns, as far as the client uses it. */
export interface WebSocketLike {
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface RoomcastClientOptions {
  /** Sent in `authenticate`. */
  token?: string | null;
  /** Called for every connection instead of `token` (an expired token is replaced). */
  getToken?: () => string | null | Promise<string | null>;
  /** Joined on every connection. */
  rooms?: string[];
  /** Send each history room's position back on every rejoin (default true). */
  recover?: boolean;
  /** The built-in ECDH P-256 / HKDF-SHA256 / AES-256-GCM scheme, with WebCrypto. */
  encryption?: boolean;
  /** The server's heartbeat timeout in ms (default 90000); a heartbeat goes after a third
   * of it without sending; 0: none. */
  heartbeat?: number;
  /** Reconnect after a connection ends (default true). */
  reconnect?: boolean;
  /** [minMs, maxMs] reconnect delay, full jitter (default [500, 20000]). */
  backoff?: [number, number];
  /** Globs of the server's history rooms: join() waits for their `joined`. */
  historyRooms?: string | string[];
  /** Positions to resume from (e.g. kept from `client.positions`). */
  positions?: Record<string, Position>;
  /** The WebSocket constructor (default: the global one; Node 20: the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  /** ms to wait for `connected` after opening (default 10000). */
  connectTimeout?: number;
  /** ms a request waits for its answer or for a connection (default 10000). */
  requestTimeout?: number;
}

export type ClientState = "connecting" | "connected" | "disconnected" | "closed";

export declare class ConnectionLost extends Error {}

export declare class ClientClosed extends Error {
  code: number | null;
  reason: string | null;
  error: string | null;
}

export declare class RequestError extends Error {}

export declare class RoomcastClient {
  constructor(urls: string | string[], options?: RoomcastClientOptions);
  readonly urls: string[];
  readonly state: ClientState;
  readonly id: string | null;
  readonly userId: string | null;
  readonly closeCode: number | null;
  readonly closeReason: string | null;
  /** Connections established so far. */
  readonly connections: number;
  readonly positions: Record<string, Position>;
  /** Messages handed over from recoveries so far. */
  readonly replayed: number;
  readonly rooms: string[];

  /** Resolves once the first connection is authenticated. */
  connect(): Promise<void>;
  close(): Promise<void>;
  /** Resolves once the server handled the join, with the history rooms' answers. */
  join(...rooms: string[]): Promise<Record<string, Joined>>;
  leave(...rooms: string[]): Promise<void>;
  send(event: string, data?: unknown): Promise<void>;
  presence(room: string): Promise<PresenceMember[]>;

  on(event: "connected", callback: (info: ConnectedInfo) => unknown): () => void;
  on(event: "disconnected", callback: (info: DisconnectedInfo) => unknown): () => void;
  on(event: "joined" | "gap", callback: (joined: Joined) => unknown): () => void;
  on<T = unknown>(event: string, callback: (message: Message<T>) => unknown): () => void;
}

/** History rooms' positions and per-connection sync state (the pure part of the client). */
export declare class Streams {
  constructor(recover?: boolean, maxHeld?: number);
  replayed: number;
  positions(): Record<string, Position>;
  setPosition(room: string, position: Position): void;
  known(room: string): boolean;
  forget(room: string): void;
  newConnection(): void;
  recoverFor(rooms: string[]): Record<string, Position> | null;
  onMessage(message: Message, canResync?: boolean): { ready: Message[]; resync: string | null };
  onJoined(
    room: string,
    epoch: string,
    offset: number,
    recovered: boolean,
    adopt?: boolean,
  ): { joined: Joined | null; ready: Message[]; resync: boolean };
}

/** Full jitter: uniform in [0, min(maxMs, minMs * 2^failures)]. */
export declare function backoffDelay(
  failures: number,
  minMs: number,
  maxMs: number,
  random?: () => number,
): number;

export default RoomcastClient;
