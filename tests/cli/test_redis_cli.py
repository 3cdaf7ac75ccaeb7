"""Real server processes on one Redis (`roomcast serve --redis-url`), `roomcast emit`, and the
Redis URL forms."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from process_support import STARTUP_TIMEOUT, emit, stop, wait_listening
from redis_support import free_port, raw_redis, wait_numsub
from roomcast import RedisClusterHelper, RedisHelper, connection_from_url
from roomcast.broker.redis import PATTERN
from support import authed, nothing_more, recv, run, send

RELAY_APP = """
class App:
    def setup(self, helper):
        self.helper = helper

    def authenticate_fn(self, data):
        return {"user_id": data.get("token")}

    def validate_room_fn(self, client_id, user_id, rooms):
        return rooms

    def message_handler(self, client_id, user_id, message):
        data = message.get("data") or {}
        self.helper.send(data.get("to"), {"topic": "said", "data": {"from": user_id}})

app = App()
"""


def roomcast(*args: str, cwd=None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roomcast", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def test_separate_server_processes_deliver_to_each_other_and_take_roomcast_emit(
    redis_server, tmp_path
):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    url = redis_server.url
    procs = [
        roomcast("serve", "--port", "0", "--redis-url", url, "--app", "relay_app:app", cwd=tmp_path)
        for _ in range(2)
    ]
    try:
        ports = [wait_listening(proc)[0] for proc in procs]

        async def body():
            async with raw_redis(redis_server.port) as r:
                ann, da = await authed(f"ws://127.0.0.1:{ports[0]}/ws", "ann")
                bob, db = await authed(f"ws://127.0.0.1:{ports[1]}/ws", "bob")
                for ws in (ann, bob):
                    await send(ws, {"event": "join", "data": {"rooms": ["lobby"]}})
                await wait_numsub(r, "ws:room:lobby", 2)  # both nodes, by interest
                await wait_numsub(r, f"ws:room:{da['id']}", 1)

                await send(ann, {"event": "say", "data": {"to": "lobby"}})
                assert await recv(ann) == {"event": "said", "data": {"from": "ann"}}
                assert await recv(bob) == {"event": "said", "data": {"from": "ann"}}
                # A client id that lives on the other node.
                await send(bob, {"event": "say", "data": {"to": da["id"]}})
                assert await recv(ann) == {"event": "said", "data": {"from": "bob"}}

                done = emit("--redis-url", url, "--user", "bob", "--event", "n", "--data", "[1]")
                assert done.returncode == 0, done.stderr
                assert "1 redis subscriptions" in done.stdout
                assert await recv(bob) == {"event": "n", "data": [1]}
                done = emit(
                    "--redis-url", url, "--room", "lobby", "--event", "r", "--exclude", db["id"]
                )
                assert done.returncode == 0, done.stderr
                assert await recv(ann) == {"event": "r"}
                done = emit("--redis-url", url, "--broadcast", "--event", "b", "--data", "null")
                assert done.returncode == 0, done.stderr
                assert await recv(ann) == {"event": "b", "data": None}
                assert await recv(bob) == {"event": "b", "data": None}
                await nothing_more(ann)
                await nothing_more(bob)
                await ann.close()
                await bob.close()

        run(body())
        assert [stop(proc) for proc in procs] == [0, 0]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def test_emit_rejects_bad_json_before_connecting():
    done = emit("--redis-url", "redis://127.0.0.1:1", "--room", "r", "--event", "e", "--data", "{x")
    assert done.returncode == 2
    assert done.stderr.startswith("roomcast: error: --data is not valid JSON: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_emit_and_serve_give_a_clear_error_when_redis_is_unreachable():
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    started = time.monotonic()
    done = emit("--redis-url", url, "--broadcast", "--event", "e", "--redis-timeout-ms", "300")
    assert time.monotonic() - started < STARTUP_TIMEOUT
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"roomcast: error: cannot reach redis at 127.0.0.1:{port} within 0.3 s")

    proc = roomcast("serve", "--port", "0", "--redis-url", url, "--redis-timeout-ms", "300")
    _, err = proc.communicate(timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 1
    [line] = err.strip().splitlines()
    assert line.startswith(f"roomcast: error: cannot reach redis at 127.0.0.1:{port} within 0.3 s")


def test_emit_needs_one_target_and_a_redis_url():
    done = emit("--redis-url", "redis://h", "--event", "e")
    assert done.returncode == 2 and "one of the arguments" in done.stderr
    done = emit("--redis-url", "memory://", "--broadcast", "--event", "e")
    assert done.returncode == 2 and "unsupported url 'memory://'" in done.stderr


# -- URL forms ---------------------------------------------------------------------------------


def test_redis_urls_give_the_address_credentials_and_options():
    helper = connection_from_url("redis://user:s%40cret@example.org:6390/3?subscribe=pattern")
    assert isinstance(helper, RedisHelper)
    assert helper.address == "example.org:6390"
    kwargs = helper.target.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "s@cret", 3)
    assert helper.options["subscribe"] == PATTERN

    tls = connection_from_url("rediss://:pw@secure:6380")
    assert tls.target.connection_class.__name__ == "SSLConnection"
    assert tls.target.connection_kwargs["password"] == "pw"

    cluster = connection_from_url("redis+cluster://:pw@a:7000,b:7001,[::1]:7002?sharded=yes")
    assert isinstance(cluster, RedisClusterHelper)
    assert cluster.target.nodes == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert cluster.target.connection_kwargs == {"password": "pw"}
    assert cluster.options["sharded"] is True


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h", "unsupported redis url"),
        ("unix:///tmp/redis.sock", "unsupported redis url"),
        ("redis://h?subscribe=everything", "unknown subscribe mode"),
        ("redis://h?sharded=yes", r"needs redis\+cluster://"),
        ("redis+cluster://a:1?sharded=maybe", "sharded must be yes or no"),
        ("redis+cluster://a:1/0", "no database path"),
        ("redis+cluster://a:x", "not a host:port"),
        ("redis+cluster://a:1?subscribe=pattern&sharded=yes", "cannot subscribe to patterns"),
    ],
)
def test_bad_redis_urls_are_refused_with_the_reason(url, message):
    with pytest.raises(ValueError, match=message):
        connection_from_url(url)
