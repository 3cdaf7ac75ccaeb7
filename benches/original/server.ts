// The original Ignis WebSocketServerHelper on Bun, wired as its WebSocketComponent wires it,
// for side-by-side measurement only. Run from a directory where `bun`,
// `@venizia/ignis-helpers@0.0.7` and `@hono/zod-openapi` are installed (see benches/README.md):
//   bun server.ts PORT REDIS_PORT [HEARTBEAT_TIMEOUT_MS] [deflate]
// ("deflate": serverOptions.perMessageDeflate, which the original hands to Bun's websocket.)
// It answers the bench protocol: a custom `publish` event is delivered as `bench` to its
// `room` (or to everyone), like benches/server.py does for roomcast.
import { RedisHelper, WebSocketServerHelper } from "@venizia/ignis-helpers";

const port = Number(process.argv[2]);
const redisPort = Number(process.argv[3]);
const heartbeatTimeout = Number(process.argv[4] ?? 90000);
const perMessageDeflate = process.argv[5] === "deflate";

const redis = new RedisHelper({ name: "bench", host: "127.0.0.1", port: redisPort });

let helper: WebSocketServerHelper;

function fetchHandler(req: Request, server: any): Response | undefined {
  const url = new URL(req.url);
  if (url.pathname === "/ws" && req.headers.get("upgrade")?.toLowerCase() === "websocket") {
    if (server.upgrade(req, { data: { clientId: crypto.randomUUID() } })) {
      return undefined;
    }
    return new Response("WebSocket upgrade failed", { status: 500 });
  }
  return new Response("404 Not Found", { status: 404 });
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch: fetchHandler,
  websocket: { message() {} },
});

helper = new WebSocketServerHelper({
  identifier: "bench",
  path: "/ws",
  server,
  redisConnection: redis,
  heartbeatTimeout,
  authenticateFn: async (data: any) => ({ userId: String(data.token) }),
  validateRoomFn: ({ rooms }: any) => rooms,
  messageHandler: ({ message }: any) => {
    if (message.event !== "publish") return;
    const data = message.data;
    if (data && data.room) {
      helper.sendToRoom({ room: data.room, event: "bench", data });
    } else {
      helper.broadcast({ event: "bench", data });
    }
  },
} as any);
await helper.configure();
server.reload({
  fetch: fetchHandler,
  websocket: { ...helper.getBunWebSocketHandler(), perMessageDeflate },
} as any);
console.log("ready");
