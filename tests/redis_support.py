"""Real redis-server processes for the tests: one server, a three-master cluster, and a TCP
proxy that can silently stop forwarding to subscribers (a half-dead pub/sub connection)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from roomcast import Broker, BrokerUnavailable, RedisHelper, WebSocketServerHelper
from roomcast.broker.redis import replies
from support import RECV_TIMEOUT, Node, token_auth

START_TIMEOUT = 10.0


def free_port(below: int = 65535) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < below:
            return port


def answers(port: int, timeout: float = 0.2, tls_ca: Path | None = None) -> bool:
    """True if something on 127.0.0.1:port answers PING with PONG (or asks for a password);
    over TLS when given the CA of its certificate."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if tls_ca is None:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
            context = ssl.create_default_context(cafile=str(tls_ca))
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"PING\r\n")
                return tls.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def tls_options(files: dict[str, Path], port: int) -> list[str]:
    """redis-server flags to serve TLS only, on `port`, with `files` from
    `serving_support.make_certificates` (clients need no certificate of their own)."""
    return [
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(files["cert"]),
        "--tls-key-file",
        str(files["key"]),
        "--tls-ca-cert-file",
        str(files["ca"]),
        "--tls-auth-clients",
        "no",
        "--tls-replication",
        "yes",
    ]


class RedisServer:
    """One redis-server on 127.0.0.1, no persistence; can be killed and started again."""

    def __init__(
        self, workdir: Path, port: int | None = None, *extra: str, tls_ca: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.tls_ca = tls_ca
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(self.port, tls_ca=self.tls_ca):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited: {self.proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cli(self, *args: str) -> str:
        tls = ("--tls", "--cacert", str(self.tls_ca)) if self.tls_ca else ()
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *tls, *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=True,
        ).stdout


class RedisCluster:
    """Three masters (no replicas), created with `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        # The cluster bus listens on port + 10000.
        ports: list[int] = []
        while len(ports) < masters:
            port = free_port(below=55000)
            if port not in ports and _free(port + 10000):
                ports.append(port)
        self.servers = [
            RedisServer(
                workdir / str(port),
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
            )
            for port in ports
        ]

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> RedisCluster:
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in s.cli("cluster", "info") for s in self.servers):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not become ready")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        for server in self.servers:
            server.kill()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- in-process nodes and raw Redis clients ----------------------------------------------------


@asynccontextmanager
async def node(redis_connection: Any, **kwargs: Any) -> AsyncIterator[Node]:
    """A configured helper on a Redis broker, listening on a free port."""
    kwargs.setdefault("authenticate_fn", token_auth)
    kwargs.setdefault("validate_room_fn", lambda client_id, user_id, rooms: rooms)
    helper = WebSocketServerHelper("test", redis_connection=redis_connection, **kwargs)
    server = None
    try:
        server = await helper.serve("127.0.0.1", 0)
        yield Node(helper, server)
    finally:
        if server is not None:
            await server.stop()
        await helper.shutdown()


@asynccontextmanager
async def raw_redis(port: int) -> AsyncIterator[Redis]:
    client = Redis(host="127.0.0.1", port=port)
    try:
        yield client
    finally:
        await client.aclose()


async def numsub(client: Redis, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(channel)
    return int(count)


async def wait_numsub(
    client: Redis, channel: str, count: int, timeout: float = RECV_TIMEOUT
) -> None:
    """Wait until exactly `count` connections are subscribed to `channel`."""
    async with asyncio.timeout(timeout):
        while await numsub(client, channel) != count:
            await asyncio.sleep(0.01)


def broker_of(helper: WebSocketServerHelper) -> Broker:
    """The helper's broker."""
    return helper.broker


async def settle(*nodes: Node, timeout: float = 15.0) -> None:
    """Wait until every node is connected and its subscription changes so far are in
    effect in Redis."""
    async with asyncio.timeout(timeout):
        for n in nodes:
            while True:
                try:
                    await n.helper.settle()
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.05)  # reconnecting


@pytest.fixture(params=["fast", "public"])
def redis_parser(request: pytest.FixtureRequest) -> Any:
    """Run a test on both ways of reading Redis replies: straight from hiredis (`fast`, where
    this redis-py allows it) and redis-py's public `read_response` (the fallback)."""
    previous = replies.use_public_parser(request.param == "public")
    try:
        yield request.param
    finally:
        replies.use_public_parser(previous)


# -- a proxy that can stop forwarding to subscribers -------------------------------------------


class FreezingProxy:
    """Forwards 127.0.0.1:port to a Redis port. `freeze_subscribers()` makes every current
    connection that has sent a SUBSCRIBE stop receiving anything, while staying open: the
    half-dead subscriber that pub/sub clients are known to end up with. `subscribe_delay`
    holds every (S)SUBSCRIBE that long on its way to Redis, like a slow link."""

    def __init__(self, target_port: int, subscribe_delay: float = 0.0) -> None:
        self.target_port = target_port
        self.subscribe_delay = subscribe_delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: list[_Pipe] = []

    async def start(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze_subscribers(self) -> int:
        frozen = 0
        for pipe in self._pipes:
            if pipe.subscriber and not pipe.closed:
                pipe.frozen = True
                frozen += 1
        return frozen

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in self._pipes:
            await pipe.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pipe = _Pipe(writer, up_writer, self.subscribe_delay)
        self._pipes.append(pipe)
        await asyncio.gather(
            pipe.pump(reader, up_writer, upstream=True),
            pipe.pump(up_reader, writer, upstream=False),
        )
        await pipe.close()


class _Pipe:
    def __init__(
        self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter, delay: float = 0.0
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.delay = delay
        self.subscriber = False
        self.frozen = False
        self.closed = False

    async def pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and b"SUBSCRIBE" in data.upper():
                    self.subscriber = True
                    if self.delay:
                        await asyncio.sleep(self.delay)
                if self.frozen:
                    continue  # swallowed: the connection looks alive but carries nothing
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            writer.close()
        for writer in (self.client, self.upstream):
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def redis_at(port: int) -> RedisHelper:
    return RedisHelper(host="127.0.0.1", port=port, unsubscribe_delay=0.2, ready_timeout=5)


class RedisSentinel:
    """A master, a replica of it and `sentinels` sentinels watching them (quorum: a
    majority), all on free ports, with short failure detection (`down_after_ms`) so a killed
    master is replaced within seconds. `password` protects the master and the replica,
    `sentinel_password` the sentinels. `url` is the `redis+sentinel://` URL of the service."""

    SERVICE = "mymaster"

    def __init__(
        self,
        workdir: Path,
        *,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: dict[str, Path] | None = None,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        self.sentinel_password = sentinel_password
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        ca = tls["ca"] if tls else None
        ports: list[int] = []  # the master's, the replica's, then the sentinels'
        while len(ports) < 2 + sentinels:
            port = free_port()
            if port not in ports:
                ports.append(port)
        master = [*auth, *(tls_options(tls, ports[0]) if tls else [])]
        self.master = RedisServer(workdir / "master", ports[0], *master, tls_ca=ca)
        replica = [*auth, *(tls_options(tls, ports[1]) if tls else [])]
        replica += ["--replicaof", "127.0.0.1", str(ports[0])]
        self.replica = RedisServer(workdir / "replica", ports[1], *replica, tls_ca=ca)
        self.sentinel_ports = ports[2:]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        if self.tls:
            return f"rediss+sentinel://{hosts}/{self.SERVICE}?ssl_ca_certs={self.tls['ca']}"
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def start(self) -> RedisSentinel:
        self.master.start()
        self.replica.start()
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            workdir = self.workdir / f"sentinel-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            config = workdir / "sentinel.conf"  # a sentinel rewrites its file: one each
            tls = self.tls
            listen = [f"port {port}"]
            if tls:
                listen = [
                    "port 0",
                    f"tls-port {port}",
                    f"tls-cert-file {tls['cert']}",
                    f"tls-key-file {tls['key']}",
                    f"tls-ca-cert-file {tls['ca']}",
                    "tls-auth-clients no",
                    "tls-replication yes",  # to the master and replica too
                ]
            lines = [
                *listen,
                "bind 127.0.0.1",
                f"dir {workdir}",
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} {quorum}",
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {self.SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.SERVICE} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {self.SERVICE} {self.password}")
            if self.sentinel_password:
                # Sentinels authenticate to each other with their own requirepass.
                lines.append(f"requirepass {self.sentinel_password}")
            config.write_text("\n".join(lines) + "\n")
            self.sentinels.append(
                subprocess.Popen(
                    [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # Ready once every sentinel sees the others and the replica, linked to the master:
        # only then can they agree that the master is down and promote the replica.
        deadline = time.monotonic() + 30
        while not all(self._ready(port) for port in self.sentinel_ports):
            for proc in self.sentinels:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis sentinel exited: {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis sentinels did not see each other and the replica")
            time.sleep(0.1)
        return self

    def sentinel_cli(self, port: int, *args: str) -> str:
        auth = ("--no-auth-warning", "-a", self.sentinel_password) if self.sentinel_password else ()
        tls = ("--tls", "--cacert", str(self.tls["ca"])) if self.tls else ()
        return subprocess.run(
            ["redis-cli", "-p", str(port), *auth, *tls, *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=True,
        ).stdout

    def _ready(self, port: int) -> bool:
        try:
            master = self.sentinel_cli(port, "sentinel", "master", self.SERVICE).split()
            replicas = self.sentinel_cli(port, "sentinel", "replicas", self.SERVICE).split()
        except (subprocess.SubprocessError, OSError):
            return False
        fields = dict(zip(master[::2], master[1::2], strict=False))
        return (
            fields.get("num-other-sentinels") == str(len(self.sentinel_ports) - 1)
            and fields.get("flags") == "master"
            and str(self.replica.port) in replicas
            and "master-link-status" in replicas
            and replicas[replicas.index("master-link-status") + 1] == "ok"
        )

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            try:
                reply = self.sentinel_cli(
                    port, "sentinel", "get-master-addr-by-name", self.SERVICE
                ).split()
            except (subprocess.SubprocessError, OSError):
                continue
            if len(reply) == 2:
                return int(reply[1])
        return None

    def kill(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait()
        self.sentinels.clear()
        self.master.kill()
        self.replica.kill()
