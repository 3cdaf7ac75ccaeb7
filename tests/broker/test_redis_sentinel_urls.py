"""Sentinel and Valkey URLs: how each form is read (pure parsing), and the parts that talk to
a real server: passwords for the master and the sentinels, the ROLE check that refuses a
replica, a node that follows the sentinels to a new master while the old one still answers,
and `valkey://` URLs on a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from process_support import SECRET, emit, one_line_error
from redis.asyncio.connection import Connection, SSLConnection
from redis_support import RedisSentinel, RedisServer, node, numsub, raw_redis, settle
from roomcast import (
    BrokerUnavailable,
    RedisClusterHelper,
    RedisHelper,
    RedisSentinelHelper,
    WebSocketEmitter,
    connection_from_url,
)
from roomcast.broker import REDIS_SCHEMES
from roomcast.broker.redis.sentinel import check_master
from roomcast.cli.flags import build_parser
from serving_support import make_certificates
from support import authed, eventually, recv, run

pytestmark = pytest.mark.timeout(90)

S1, S2 = "10.0.0.1:26379", "10.0.0.2:26380"


def sentinel_of(url: str, **options: object) -> RedisSentinelHelper:
    helper = connection_from_url(url, **options)
    assert isinstance(helper, RedisSentinelHelper)
    return helper


def test_sentinel_url_forms():
    helper = sentinel_of(f"redis+sentinel://{S1},{S2}/mymaster")
    service, target = helper.service, helper.target
    assert (service.name, service.sentinels) == (
        "mymaster",
        (("10.0.0.1", 26379), ("10.0.0.2", 26380)),
    )
    assert service.kwargs == {}
    assert target.connection_class is Connection and dict(target.connection_kwargs) == {}
    assert helper.address == f"mymaster via sentinel {S1},{S2}"

    # The master's password (and user, db) in the URL; the sentinels' as options.
    helper = sentinel_of(
        f"redis+sentinel://app:p%40ss@{S1},{S2}/mymaster/2"
        "?sentinel_password=s3cret&sentinel_username=watch&socket_keepalive=true"
    )
    assert dict(helper.target.connection_kwargs) == {
        "username": "app",
        "password": "p@ss",
        "db": 2,
        "socket_keepalive": True,
    }
    assert helper.service.kwargs == {"password": "s3cret", "username": "watch"}

    # A sentinel without a port is on 26379; a password alone (no user).
    helper = sentinel_of("redis+sentinel://:pw@h1,h2:1234,[::1]/svc?subscribe=pattern")
    assert helper.service.sentinels == (("h1", 26379), ("h2", 1234), ("::1", 26379))
    assert dict(helper.target.connection_kwargs) == {"password": "pw"}
    assert helper.options["subscribe"] == "pattern"

    # TLS to the master and to the sentinels, with the same CA.
    helper = sentinel_of(f"rediss+sentinel://{S1}/mymaster?ssl_ca_certs=/etc/ca.pem")
    assert helper.target.connection_class is SSLConnection
    assert helper.target.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert helper.service.kwargs == {"ssl": True, "ssl_ca_certs": "/etc/ca.pem"}

    # Keywords instead of a URL.
    helper = RedisSentinelHelper(
        sentinels=["h1:26379", ("h2", 26380), {"host": "h3"}],
        service_name="cache",
        password="pw",
        sentinel_password="spw",
        db=1,
    )
    assert helper.service.sentinels == (("h1", 26379), ("h2", 26380), ("h3", 26379))
    assert dict(helper.target.connection_kwargs) == {"password": "pw", "db": 1}
    assert helper.service.kwargs == {"password": "spw"}


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (f"redis+sentinel://{S1}", "needs the service (master) name"),
        (f"redis+sentinel://{S1}/", "needs the service (master) name"),
        ("redis+sentinel:///mymaster", "at least one sentinel"),
        (f"redis+sentinel://{S1}/mymaster/0/x", "a sentinel url is .../service[/db]"),
        (f"redis+sentinel://{S1}/mymaster?sharded=yes", "sharded pub/sub needs redis+cluster://"),
        (f"redis+sentinel://{S1}/mymaster?subscribe=all", "unknown subscribe mode: all"),
        ("redis+sentinel://h:port/mymaster", "not a host:port: 'h:port'"),
        (f"redis+sentinel://{S1}/mymaster/one", "the database of a sentinel url is a number"),
    ],
)
def test_bad_sentinel_urls_are_refused_with_the_reason(url, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        connection_from_url(url)


def test_valkey_spells_redis_in_every_scheme():
    for url, kind in [
        ("valkey://10.0.0.5:6379/0", RedisHelper),
        ("valkeys://10.0.0.5:6379", RedisHelper),
        ("VALKEY://10.0.0.5:6379", RedisHelper),
        ("valkey+cluster://10.0.0.7:7000,10.0.0.8:7000", RedisClusterHelper),
        ("valkeys+cluster://10.0.0.7:7000", RedisClusterHelper),
        (f"valkey+sentinel://{S1}/mymaster", RedisSentinelHelper),
        (f"valkeys+sentinel://{S1}/mymaster", RedisSentinelHelper),
    ]:
        helper = connection_from_url(url)
        assert type(helper) is kind, url
        tls = url.lower().startswith("valkeys")
        assert (helper.target.connection_class is SSLConnection) is tls, url
    assert RedisHelper("valkey://10.0.0.5:6380").address == "10.0.0.5:6380"
    for url in ("valkey://h", f"redis+sentinel://{S1}/m", f"valkeys+sentinel://{S1}/m"):
        assert url.startswith(REDIS_SCHEMES)
        for command in (["serve"], ["emit", "--room", "r", "--event", "e"]):
            assert build_parser().parse_args([*command, "--redis-url", url]).redis_url == url
    with pytest.raises(ValueError, match="unsupported redis url: valkey-cluster://h"):
        connection_from_url("valkey-cluster://h")


def test_serve_and_emit_fail_in_one_line_when_no_sentinel_answers():
    for command in (
        ["emit", "--broadcast", "--event", "e"],
        ["serve", "--port", "0", "--jwt-secret", SECRET],
    ):
        code, line = one_line_error(
            *command,
            "--redis-url",
            "valkey+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",
            "--redis-timeout-ms",
            "300",
        )
        assert code == 1, line
        assert line.startswith(
            "roomcast: error: cannot reach redis at mymaster via sentinel "
            "127.0.0.1:1,127.0.0.1:2 within 0.3 s: no sentinel gave a master of mymaster: "
            "127.0.0.1:1: "
        ), line
        assert "; 127.0.0.1:2: " in line and "refused" in line, line


def test_passwords_for_the_master_and_for_the_sentinels(tmp_path):
    setup = RedisSentinel(
        tmp_path / "sentinel", sentinels=1, password="data-pw", sentinel_password="sentinel-pw"
    ).start()
    (port,) = setup.sentinel_ports
    good = f"redis+sentinel://:data-pw@127.0.0.1:{port}/mymaster?sentinel_password=sentinel-pw"

    async def body():
        helper = sentinel_of(good, unsubscribe_delay=0.2, ready_timeout=10)
        await helper.configure()
        assert await helper.master_address() == ("127.0.0.1", setup.master.port)
        client = helper.get_client()
        assert await client.set("k", "v") and await client.get("k") == b"v"
        emitter = WebSocketEmitter(sentinel_of(good))
        await emitter.configure()
        async with node(helper) as a:
            ws, data = await authed(a.url, "user:ann")
            await settle(a)
            assert await emitter.to_client(data["id"], "hi", 1) == 1
            assert await recv(ws) == {"event": "hi", "data": 1}
            await ws.close()
        await emitter.shutdown()
        await helper.close()

        # A wrong or missing password fails start-up at once, saying who refused and why.
        sentinel = f"redis at mymaster via sentinel 127.0.0.1:{port} refused us: "
        for url, why in [
            (good.replace("sentinel-pw", "nope"), f"sentinel 127.0.0.1:{port}: "),
            (good.partition("?")[0], "(the sentinels want sentinel_password)"),
            (good.replace("data-pw", "nope"), ""),
        ]:
            wrong = WebSocketEmitter(sentinel_of(url, ready_timeout=20))
            with pytest.raises(BrokerUnavailable) as caught:
                await asyncio.wait_for(wrong.configure(), 10)
            assert str(caught.value).startswith(sentinel) and why in str(caught.value), caught
            await wrong.shutdown()
        wrong_helper = sentinel_of(good.partition("?")[0], ready_timeout=0.5)
        with pytest.raises(BrokerUnavailable, match=re.escape("want sentinel_password")):
            await wrong_helper.configure()
        await wrong_helper.close()

    try:
        run(body(), timeout=60)
        done = emit("--redis-url", good, "--broadcast", "--event", "e")
        assert done.returncode == 0 and "(0 redis subscriptions got it)" in done.stdout, done
    finally:
        setup.kill()


def test_tls_to_the_sentinels_and_the_master_through_a_failover(tmp_path):
    files = make_certificates(tmp_path)
    setup = RedisSentinel(tmp_path / "sentinel", sentinels=1, tls=files).start()
    assert setup.url.startswith("rediss+sentinel://")

    async def body():
        helper = sentinel_of(setup.url, unsubscribe_delay=0.2, ready_timeout=10)
        assert helper.target.connection_class is SSLConnection
        await helper.configure()
        client = helper.get_client()
        assert await client.set("k", "v")
        emitter = WebSocketEmitter(sentinel_of(setup.url, watchdog_interval=0.2))
        await emitter.configure()
        async with node(helper) as a:
            ws, data = await authed(a.url, "user:ann")
            await settle(a)
            assert await emitter.to_client(data["id"], "hi", 1) == 1
            assert await recv(ws) == {"event": "hi", "data": 1}

            setup.master.kill()
            await eventually(
                lambda: setup.master_port() == setup.replica.port, 30, "the replica promoted"
            )
            await eventually(lambda: a.helper.stats()["broker_reconnects"] == 1, 30)
            await settle(a)

            async def delivered() -> bool:
                try:
                    return await emitter.to_client(data["id"], "hi", 2) == 1
                except BrokerUnavailable:
                    return False  # the emitter is still reconnecting

            await eventually(delivered, 30, "the emitter on the new master")
            assert await recv(ws) == {"event": "hi", "data": 2}
            assert await client.get("k") == b"v"  # replicated, read on the new master
            await ws.close()
        await emitter.shutdown()
        await helper.close()

    try:
        run(body(), timeout=80)
    finally:
        setup.kill()


def test_a_sentinel_that_never_answers_is_skipped_and_then_asked_last(tmp_path):
    setup = RedisSentinel(tmp_path / "sentinel", sentinels=1).start()
    (port,) = setup.sentinel_ports

    async def body():
        accepted: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # takes the connection, never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        mute = server.sockets[0].getsockname()[1]
        helper = RedisSentinelHelper(
            sentinels=[f"127.0.0.1:{mute}", f"127.0.0.1:{port}"],
            service_name="mymaster",
            command_timeout=0.5,
        )
        try:
            master = ("127.0.0.1", setup.master.port)
            assert await helper.master_address() == master
            assert (len(accepted), helper.service.first) == (1, [1])
            emitter = WebSocketEmitter(helper)
            await emitter.configure()
            assert await emitter.broadcast("e") == 0
            assert await helper.master_address() == master
            await emitter.shutdown()
            assert len(accepted) == 1  # asked once, then the one that answers comes first
        finally:
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()
            await helper.close()

    try:
        run(body(), timeout=30)
    finally:
        setup.kill()


def test_a_server_that_is_a_replica_is_not_taken_for_the_master(tmp_path):
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(
        tmp_path / "replica", None, "--replicaof", "127.0.0.1", str(master.port)
    ).start()
    helper = RedisSentinelHelper(sentinels=["127.0.0.1:1"], service_name="mymaster")

    async def body():
        conn = await helper.target.connect("127.0.0.1", master.port, 5)
        await check_master(conn, helper.service, 5)
        await conn.disconnect()
        conn = await helper.target.connect("127.0.0.1", replica.port, 5)
        with pytest.raises(
            ConnectionError,
            match=f"127.0.0.1:{replica.port}, given by the sentinels as the master of "
            "mymaster, is a slave",
        ):
            await check_master(conn, helper.service, 5)
        await conn.disconnect()

    try:
        run(body())
    finally:
        replica.kill()
        master.kill()


def test_a_node_follows_the_sentinels_to_a_new_master_while_the_old_one_still_answers(
    tmp_path, caplog
):
    setup = RedisSentinel(tmp_path / "sentinel", sentinels=1).start()
    (port,) = setup.sentinel_ports
    old, new = setup.master.port, setup.replica.port

    async def body():
        helper = sentinel_of(setup.url, watchdog_interval=0.2, unsubscribe_delay=0.2)
        async with node(helper) as a, raw_redis(old) as on_old, raw_redis(new) as on_new:
            ws, data = await authed(a.url, "user:ann")
            channel = f"ws:client:{data['id']}"
            await settle(a)
            assert (await numsub(on_old, channel), await numsub(on_new, channel)) == (1, 0)

            # A partition as the node does not see it: the replica is made a master and the
            # sentinel names it, while the old master keeps answering the node.
            setup.replica.cli("replicaof", "no", "one")
            setup.sentinel_cli(port, "sentinel", "remove", "mymaster")
            setup.sentinel_cli(port, "sentinel", "monitor", "mymaster", "127.0.0.1", str(new), "1")
            await eventually(lambda: numsub(on_new, channel), 10, "the node on the new master")
            assert await numsub(on_old, channel) == 0
            await settle(a)
            emitter = WebSocketEmitter(RedisHelper(host="127.0.0.1", port=new))
            await emitter.configure()
            assert await emitter.to_client(data["id"], "hi", 3) == 1
            assert await recv(ws) == {"event": "hi", "data": 3}
            await emitter.shutdown()
            await ws.close()
        await helper.close()

    try:
        with caplog.at_level(logging.INFO, logger="roomcast.redis"):
            run(body(), timeout=60)
    finally:
        setup.kill()
    lines = [r.getMessage() for r in caplog.records if r.name == "roomcast.redis"]
    assert any(f"the sentinels name 127.0.0.1:{new} as the master of mymaster" in m for m in lines)


def test_valkey_urls_on_a_real_server(redis_server):
    url = f"valkey://127.0.0.1:{redis_server.port}"

    async def body():
        emitter = WebSocketEmitter(url)
        await emitter.configure()
        async with node(connection_from_url(url, unsubscribe_delay=0.2)) as a:
            ws, _ = await authed(a.url, "user:ann")
            await settle(a)
            await eventually(lambda: a.helper.stats()["broker_connected"])
            assert await emitter.to_user("ann", "hi", 2) == 1
            assert await recv(ws) == {"event": "hi", "data": 2}
            await ws.close()
        await emitter.shutdown()

    run(body())
    done = emit("--redis-url", url, "--broadcast", "--event", "e")
    assert done.returncode == 0, done.stderr
