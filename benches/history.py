"""History rooms (SPEC §10): what numbering, ordering and recovery cost.

- `historyfanout`: server CPU per delivery to a history room against a plain room, in the same
  server process and the same run: 1,000 clients, each in one plain room and one history room
  (10 of each, 100 members per room), the server alone on CPU 0, the compiled load generator
  (and Redis) on CPU 1, idle CPU subtracted, rounds alternating plain and history. On
  `memory://` a client publishes (`publish` events, delivered with `send_to_room`); on
  `redis://` the load generator writes what an emitter writes (plain: a room envelope
  PUBLISHed on `ws:room:R`; history: the same envelope through the history script, which
  numbers, keeps and publishes it), so the server's side is receive, decode, deliver; and a
  third mode, `numbered`: history envelopes PUBLISHed already numbered (as the script would),
  so they reach the server as fast as plain ones (the script's own pace into Redis spreads a
  burst out, which changes how many messages each socket write carries). Two regimes: steady
  (200 messages/s, one at a time) and bursts (2,000 messages back to back).
- `recovery`: 1,000 clients that each joined a history room, disconnected, and missed 100
  messages reconnect at once, each asking to recover: the time from the burst until every
  one has its `joined` with `recovered: true` after exactly the 100 missed messages, in
  order (checked per client by the Go load generator's recover mode), and the same burst
  with nothing missed (recovered, no replay) as the same-run baseline; memory and Redis.
- `historymem`: Redis memory of the history keys: 1,000 retained messages of 100 bytes in one
  room (`MEMORY USAGE` of its stream and meta keys, and the `INFO used_memory` delta), and
  per room at the default `history_size` (100) over 1,000 rooms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from .compiled import (
    LOADGEN_CPU,
    SERVER_CPU,
    _pin_redis,
    compiled_loadgen,
    counts,
    fast_clients,
    pinnable,
    wait_count,
)
from .harness import (
    LoadGen,
    Row,
    cpu_seconds,
    emit,
    http_json,
    redis_server,
    server,
    wait_subscribed,
)
from .registry import Context, scenario

ROOMS = 10
PAYLOAD = 100
# The load generators send no heartbeats: longer than any scenario here.
HEARTBEAT_TIMEOUT = 3600.0


def _script_sha(url: str) -> str:
    import redis
    from roomcast.broker.redis.history import APPEND

    client = redis.Redis.from_url(url)
    try:
        return str(client.script_load(APPEND))
    finally:
        client.close()


def _round(
    port: int, pid: int, gens: list[LoadGen], command: str, deliveries: int, per_client: int
) -> dict[str, float]:
    """One measured round: `command` to the first load generator; server CPU per delivery
    with the idle CPU of the second before subtracted; every client must get `per_client`
    more messages, each once and in order. Also how many frames the hub wrote per socket
    write (what coalescing saved)."""
    base = counts(gens)
    stats0 = http_json(port, "/stats")
    idle0 = cpu_seconds(pid)
    time.sleep(1.0)
    idle = cpu_seconds(pid) - idle0
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    reply = gens[0].ask(command)
    if reply.get("error"):
        raise RuntimeError(f"{command}: {reply['error']}")
    got = wait_count(gens, base["received"] + deliveries, 120.0)
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds(pid) - cpu0
    time.sleep(0.2)
    final = counts(gens)
    if (
        got["received"] != base["received"] + deliveries
        or final["received"] != got["received"]
        or final["bad"]
        or final["min"] != base["min"] + per_client
        or final["max"] != base["max"] + per_client
    ):
        raise RuntimeError(f"{command}: expected {deliveries} more after {base}, got {final}")
    stats = http_json(port, "/stats")
    frames = stats["frames_out"] - stats0["frames_out"]
    writes = max(1, stats["direct_writes"] - stats0["direct_writes"])
    return {
        "busy": (cpu - idle * wall) / deliveries,
        "cpu": cpu / deliveries,
        "util": cpu / wall,
        "frames_per_write": frames / writes,
    }


def history_fanout(broker: str, rounds: int, quick: bool) -> list[dict[str, Any]]:
    binary = compiled_loadgen()
    count = 1000 if not quick else 50
    plain = [f"plain-{i}" for i in range(ROOMS)]
    hist = [f"hist-{i}" for i in range(ROOMS)]
    regimes = {"steady": (200.0, 4.0), "burst": (0.0, 2000)} if not quick else {}
    if quick:
        regimes = {"steady": (200.0, 0.2), "burst": (0.0, 40)}
    cpus = SERVER_CPU if pinnable() else None
    rows = []
    with ExitStack() as stack:
        url = sha = None
        if broker == "redis":
            url = stack.enter_context(redis_server())
            _pin_redis(url)
            sha = _script_sha(url)
        extra = ("--history-rooms", "hist-*")
        port, pid = stack.enter_context(
            server("roomcast", HEARTBEAT_TIMEOUT, *extra, redis_url=url, cpus=cpus)
        )
        gens = stack.enter_context(fast_clients(port, count, binary))
        for rooms in (plain, hist):
            for gen in gens:
                gen.ask("join " + ",".join(rooms))
        # Each client's `joined` for its history room (counted as a received frame).
        if wait_count(gens, count, 30.0)["received"] != count:
            raise RuntimeError("not every client got its joined")
        if url is not None:
            wait_subscribed(url, {f"ws:room:{r}": 1 for r in plain + hist})
            redis_addr = url.removeprefix("redis://")
        for regime, (rate, amount) in regimes.items():
            messages = int(rate * amount) if rate else int(amount)
            messages -= messages % ROOMS
            modes = ["plain", "history"] + (["numbered"] if url is not None else [])
            samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
            for index in range(rounds):
                order = modes if index % 2 == 0 else modes[::-1]
                for mode in order:
                    rooms = ",".join(plain if mode == "plain" else hist)
                    if url is None:
                        command = f"publish {messages} {rate} {PAYLOAD} {rooms}"
                    else:
                        script = {"plain": "-", "history": sha, "numbered": "="}[mode]
                        command = f"rroom {redis_addr} {rooms} {messages} {rate} {PAYLOAD} {script}"
                    deliveries = messages * (count // ROOMS)
                    per_client = messages // ROOMS
                    samples[mode].append(_round(port, pid, gens, command, deliveries, per_client))

            def med(mode: str, key: str, taken: dict[str, list[Any]] = samples) -> float:
                return statistics.median(s[key] for s in taken[mode])

            plain_ns, hist_ns = med("plain", "busy") * 1e9, med("history", "busy") * 1e9
            numbered: dict[str, Any] = {}
            if "numbered" in samples:
                # History envelopes PUBLISHed already numbered: the server's work for a
                # history message, with the arrival pattern of plain ones.
                numbered_ns = med("numbered", "busy") * 1e9
                numbered = {
                    "numbered_ns_per_delivery": numbered_ns,
                    "numbered_ratio": numbered_ns / plain_ns,
                    "numbered_rounds": [round(s["busy"] * 1e9) for s in samples["numbered"]],
                    "numbered_frames_per_write": med("numbered", "frames_per_write"),
                }
            rows.append(
                emit(
                    {
                        "scenario": "historyfanout",
                        "broker": broker,
                        "regime": regime,
                        "clients": count,
                        "messages": messages,
                        "rate": rate,
                        "rounds": rounds,
                        "plain_ns_per_delivery": plain_ns,
                        "history_ns_per_delivery": hist_ns,
                        "ratio": hist_ns / plain_ns,
                        "plain_rounds": [round(s["busy"] * 1e9) for s in samples["plain"]],
                        "history_rounds": [round(s["busy"] * 1e9) for s in samples["history"]],
                        "server_util": max(med("plain", "util"), med("history", "util")),
                        # Frames per socket write (the HTTP /stats polls add a few writes).
                        "plain_frames_per_write": med("plain", "frames_per_write"),
                        "history_frames_per_write": med("history", "frames_per_write"),
                        **numbered,
                        "loadgen": "compiled" if binary is not None else "python",
                        "pinned": cpus is not None,
                        "lost": 0,
                    }
                )
            )
    return rows


@contextmanager
def _recoverer(port: int, count: int, room: str) -> Iterator[LoadGen]:
    binary = compiled_loadgen()
    if binary is None:
        raise RuntimeError("recovery needs the compiled load generator (go)")
    url = f"ws://127.0.0.1:{port}/ws"
    cpus = LOADGEN_CPU if pinnable() else None
    gen = LoadGen(url, count, "-recover", room, binary=binary, cpus=cpus)
    try:
        gen.ready()
        yield gen
    finally:
        gen.stop()


def _wait_published(port: int, url: str | None, room: str, offset: int) -> None:
    deadline = time.monotonic() + 60
    while http_json(port, "/stats")["bench_publishing"]:
        if time.monotonic() > deadline:
            raise RuntimeError("publishing did not end")
        time.sleep(0.01)
    if url is None:
        return  # memory: numbered and kept as it was sent
    import redis

    client = redis.Redis.from_url(url)
    try:
        meta = f"ws:history:{{r:{room}}}:m"
        while int(client.hget(meta, "offset") or 0) < offset:
            if time.monotonic() > deadline:
                raise RuntimeError(f"room {room} did not reach offset {offset}")
            time.sleep(0.01)
    finally:
        client.close()


def recovery(broker: str, rounds: int, quick: bool) -> dict[str, Any]:
    count = 1000 if not quick else 20
    missed = 100
    room = "hist-0"
    cpus = SERVER_CPU if pinnable() else None
    samples = []
    with ExitStack() as stack:
        url = None
        if broker == "redis":
            url = stack.enter_context(redis_server())
            _pin_redis(url)
        extra = ("--history-rooms", "hist-*", "--history-size", str(missed))
        port, pid = stack.enter_context(
            server("roomcast", HEARTBEAT_TIMEOUT, *extra, redis_url=url, cpus=cpus)
        )
        gen = stack.enter_context(_recoverer(port, count, room))

        def burst(epoch: str, offset: int, expect: int) -> dict[str, Any]:
            cpu0 = cpu_seconds(pid)
            report = gen.ask(f"round {epoch} {offset} {expect}")
            report["server_cpu"] = cpu_seconds(pid) - cpu0
            if report["ok"] != count:
                raise RuntimeError(f"{broker} round {epoch} {offset} {expect}: {report}")
            return report

        for _ in range(rounds):
            first = burst("-", 0, 0)  # join, remember the position, disconnect
            epoch, offset = first["epoch"], first["offset"]
            if not epoch:
                raise RuntimeError(f"{broker}: the history was unreadable on join: {first}")
            http_json(port, f"/publish?room={room}&count={missed}&size={PAYLOAD}")
            _wait_published(port, url, room, offset + missed)
            time.sleep(0.5)  # the disconnects of the first burst are done
            recovered = burst(epoch, offset, missed)
            time.sleep(0.5)
            nothing = burst(epoch, offset + missed, 0)
            time.sleep(0.5)
            samples.append((recovered, nothing))

    def med(which: int, key: str) -> float:
        return statistics.median(s[which][key] for s in samples)

    return emit(
        {
            "scenario": "recovery",
            "broker": broker,
            "clients": count,
            "missed": missed,
            "rounds": rounds,
            "seconds": med(0, "seconds"),
            "seconds_rounds": [round(s[0]["seconds"], 3) for s in samples],
            "after_connect_p50": med(0, "after_connect_p50"),
            "after_connect_max": med(0, "after_connect_max"),
            "server_cpu_s": med(0, "server_cpu"),
            "baseline_seconds": med(1, "seconds"),
            "baseline_after_connect_max": med(1, "after_connect_max"),
            "baseline_server_cpu_s": med(1, "server_cpu"),
            "ratio": med(0, "seconds") / med(1, "seconds"),
            "exact": True,  # every client's offsets checked (ok == clients), else it raised
            "pinned": cpus is not None,
        }
    )


def history_memory(rounds: int, quick: bool) -> list[dict[str, Any]]:
    import redis
    from roomcast.broker.redis.history import APPEND, keys_of
    from roomcast.protocol import encode_envelope

    retained = 1000 if not quick else 50
    rooms = 1000 if not quick else 10
    default_size = 100
    one: list[dict[str, int]] = []
    many: list[dict[str, int]] = []
    envelope_len = 0
    version = "?"
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        sha = str(client.script_load(APPEND))
        version = str(client.info("server")["redis_version"])

        def fill(room: str, n: int, maxlen: int, pipe: Any) -> None:
            envelope = encode_envelope("emitter", "room", "bench", "x" * PAYLOAD, room)
            stream, meta = keys_of(room)
            channel = f"ws:room:{room}"
            for _ in range(n):
                args = (maxlen, 300_000, "0badcafe", channel, envelope[:-1])
                pipe.evalsha(sha, 2, stream, meta, *args)

        try:
            for _ in range(rounds):
                client.flushall()
                used0 = int(client.info("memory")["used_memory"])
                for first in range(0, retained, 100):
                    pipe = client.pipeline(transaction=False)
                    fill("hist-one", min(100, retained - first), retained, pipe)
                    pipe.execute()
                used = int(client.info("memory")["used_memory"]) - used0
                stream, meta = keys_of("hist-one")
                entry = client.xrange(stream, count=1)[0][1]
                envelope_len = len(entry[b"m"])
                one.append(
                    {
                        "stream": int(client.memory_usage(stream, samples=0) or 0),
                        "meta": int(client.memory_usage(meta, samples=0) or 0),
                        "used_memory": used,
                    }
                )
                client.flushall()
                used0 = int(client.info("memory")["used_memory"])
                for r in range(rooms):
                    pipe = client.pipeline(transaction=False)
                    fill(f"hist-{r}", default_size + default_size // 2, default_size, pipe)
                    pipe.execute()
                used = int(client.info("memory")["used_memory"]) - used0
                stream, meta = keys_of("hist-0")
                many.append(
                    {
                        "stream": int(client.memory_usage(stream, samples=0) or 0),
                        "meta": int(client.memory_usage(meta, samples=0) or 0),
                        "used_memory_per_room": used // rooms,
                    }
                )
        finally:
            client.close()

    def med(samples: list[dict[str, int]], key: str) -> float:
        return statistics.median(s[key] for s in samples)

    return [
        emit(
            {
                "scenario": "historymem",
                "what": f"{retained} messages retained in one room",
                "payload_bytes": PAYLOAD,
                "envelope_bytes": envelope_len,
                "rounds": rounds,
                "stream_bytes": med(one, "stream"),
                "meta_bytes": med(one, "meta"),
                "per_1000_messages_memory_usage": (med(one, "stream") + med(one, "meta"))
                * 1000
                / retained,
                "per_1000_messages_used_memory": med(one, "used_memory") * 1000 / retained,
                "redis": version,
            }
        ),
        emit(
            {
                "scenario": "historymem",
                "what": f"per room at history_size {default_size} ({rooms} rooms)",
                "payload_bytes": PAYLOAD,
                "envelope_bytes": envelope_len,
                "rounds": rounds,
                "stream_bytes": med(many, "stream"),
                "meta_bytes": med(many, "meta"),
                "per_room_memory_usage": med(many, "stream") + med(many, "meta"),
                "per_room_used_memory": med(many, "used_memory_per_room"),
            }
        ),
    ]


# -- registrations -------------------------------------------------------------------------


def summary(row: Row) -> str | None:
    if row["scenario"] == "historyfanout":
        return (
            f"historyfanout {row['broker']:>6} {row['regime']:>6}: plain "
            f"{row['plain_ns_per_delivery']:,.0f} ns, history "
            f"{row['history_ns_per_delivery']:,.0f} ns per delivery: "
            f"x{row['ratio']:.2f} (medians of {row['rounds']}); frames per write "
            f"{row['plain_frames_per_write']:.1f} / {row['history_frames_per_write']:.1f}"
            + (
                f"; numbered without the script {row['numbered_ns_per_delivery']:,.0f} ns: "
                f"x{row['numbered_ratio']:.2f}, {row['numbered_frames_per_write']:.1f} "
                "frames per write"
                if "numbered_ratio" in row
                else ""
            )
        )
    if row["scenario"] == "recovery":
        return (
            f"recovery {row['broker']:>6}: {row['clients']} clients x {row['missed']} "
            f"missed: {row['seconds'] * 1000:,.0f} ms until all recovered (nothing missed: "
            f"{row['baseline_seconds'] * 1000:,.0f} ms, x{row['ratio']:.2f}); server CPU "
            f"{row['server_cpu_s'] * 1000:,.0f} ms vs "
            f"{row['baseline_server_cpu_s'] * 1000:,.0f} ms"
        )
    if row["scenario"] == "historymem":
        return f"historymem {row['what']}: {row}"
    return None


@scenario(
    "historyfanout",
    about="history room vs plain room, memory and Redis, steady and bursts: CPU per delivery",
    summary=summary,
)
def run_history_fanout(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    return [
        row
        for broker in ("memory", "redis")
        for row in history_fanout(broker, opts.rounds, opts.quick)
    ]


@scenario(
    "recovery",
    about="1,000 clients reconnecting at once, 100 missed each: time until all recovered",
    summary=summary,
)
def run_recovery(ctx: Context, _: None) -> list[Row]:
    opts = ctx.options
    return [recovery(broker, opts.rounds, opts.quick) for broker in ("memory", "redis")]


@scenario(
    "historymem",
    about="Redis memory of kept messages: one room of 1,000, and 1,000 rooms of 100",
    summary=summary,
)
def run_history_memory(ctx: Context, _: None) -> list[Row]:
    return history_memory(ctx.options.rounds, ctx.options.quick)
