"""`roomcast serve --workers N`: real worker processes on one port and one real Redis."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from redis_support import raw_redis, wait_numsub
from roomcast import RedisHelper, WebSocketEmitter
from serving_support import (
    RELAY_APP,
    SECRET,
    STARTUP_TIMEOUT,
    WAIT,
    Member,
    Served,
    connect_many,
    http_get,
    scrape,
    serve_workers,
    value,
    whoami,
)
from support import authed, eventually, run, send

pytestmark = pytest.mark.timeout(180)


def test_three_workers_spread_300_clients_deliver_every_type_exactly_once_and_close_all_on_sigterm(
    redis_server, tmp_path
):
    served = serve_workers(tmp_path, redis_server.url, 3)
    try:
        port = served.listening_port()
        url = f"ws://127.0.0.1:{port}/ws"

        async def body() -> None:
            members = await connect_many(url, [f"u{i % 100}" for i in range(300)])
            await whoami(members)
            pids = {m.pid for m in members}
            assert len(pids) > 1, pids  # the kernel spread them over the workers
            # The metrics say so too: one series per live worker, summing to 300.
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            per_worker: dict[str, float] = {}

            def spread_seen() -> bool:
                samples = scrape(metrics_url)
                per_worker.clear()
                for (name, labels), v in samples.items():
                    if name == "roomcast_worker_connections":
                        per_worker[dict(labels)["pid"]] = v
                return sum(per_worker.values()) == 300

            await eventually(spread_seen, WAIT, "worker connection gauges summing to 300")
            assert {int(p) for p, n in per_worker.items() if n > 0} == pids

            rooms = {f"r{k}": [m for i, m in enumerate(members) if i % 3 == k] for k in range(3)}
            for room, in_room in rooms.items():
                for m in in_room:
                    await send(m.ws, {"event": "join", "data": {"rooms": [room]}})
            async with raw_redis(redis_server.port) as r:
                for room, in_room in rooms.items():
                    await wait_numsub(r, f"ws:room:{room}", len({m.pid for m in in_room}), WAIT)

            expected: dict[str, list[Any]] = {m.id: [] for m in members}
            emitter = WebSocketEmitter(RedisHelper(port=redis_server.port))
            await emitter.configure()

            async def step(tag: str, recipients: list[Member], action: Any) -> None:
                await action
                for m in recipients:
                    expected[m.id].append(tag)
                await eventually(
                    lambda: all(tag in m.tags() for m in recipients),
                    WAIT,
                    f"{tag} at every recipient",
                )

            sender = members[0]
            far = next(m for m in reversed(members) if m.pid != sender.pid)
            r2_excluded = [m.id for m in rooms["r2"][:10]]
            try:
                # From a worker (helper.send: local delivery plus an envelope to the others).
                await step(
                    "broadcast",
                    members,
                    send(sender.ws, {"event": "relay", "data": {"to": None, "tag": "broadcast"}}),
                )
                await step(
                    "room",
                    rooms["r1"],
                    send(sender.ws, {"event": "relay", "data": {"to": "r1", "tag": "room"}}),
                )
                await step(
                    "client",
                    [far],
                    send(sender.ws, {"event": "relay", "data": {"to": far.id, "tag": "client"}}),
                )
                # From the emitter (no server of its own).
                await step(
                    "user",
                    [m for m in members if m.token == "u7"],
                    emitter.to_user("u7", "got", "user"),
                )
                await step(
                    "exclude-room",
                    [m for m in rooms["r2"] if m.id not in r2_excluded],
                    emitter.to_room("r2", "got", "exclude-room", r2_excluded),
                )
                await step(
                    "exclude-all",
                    members[50:],
                    emitter.broadcast("got", "exclude-all", [m.id for m in members[:50]]),
                )
                await step(
                    "emitter-client",
                    [members[5]],
                    emitter.to_client(members[5].id, "got", "emitter-client"),
                )
                await step("end", members, emitter.broadcast("got", "end"))
            finally:
                await emitter.shutdown()
            for m in members:
                assert m.tags() == expected[m.id], (m.id, m.pid)

            served.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*(m.reader for m in members)), WAIT)
            assert {m.close for m in members} == {(1001, "Server shutting down")}

        run(body(), timeout=150)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
        for index in range(3):
            served.wait_line(rf"^roomcast: worker {index} \(pid \d+\) stopped \(0\)")
    finally:
        served.close()


def test_a_worker_killed_with_sigkill_is_replaced_and_its_clients_reconnect(redis_server, tmp_path):
    served = serve_workers(tmp_path, redis_server.url, 3)
    try:
        port = served.listening_port()
        url = f"ws://127.0.0.1:{port}/ws"
        started = {
            int(served.wait_line(rf"^roomcast: worker {i} started \(pid (\d+)\)").group(1)): i
            for i in range(3)
        }

        async def body() -> None:
            members = await connect_many(url, [f"k{i}" for i in range(30)])
            await whoami(members)
            victim = members[0].pid
            assert victim in started
            index = started[victim]
            mark = len(served.lines)
            os.kill(victim, signal.SIGKILL)
            dropped = [m for m in members if m.pid == victim]
            await asyncio.wait_for(asyncio.gather(*(m.reader for m in dropped)), WAIT)
            assert all(m.close[0] == 1006 for m in dropped)  # no close frame from a killed process

            replacement = int(
                served.wait_line(rf"^roomcast: worker {index} started \(pid (\d+)\)", mark).group(1)
            )
            served.wait_line(rf"^\[worker {index}\] roomcast: listening on", mark)
            assert replacement != victim
            assert f"worker {index} (pid {victim}) exited with -9: restarting in" in (
                served.stderr_text()
            )
            # The dropped clients come back (to whichever worker the kernel picks).
            back = await connect_many(url, [m.token for m in dropped])
            await whoami(back)
            assert all(m.pid != victim for m in back)
            # The new worker takes connections: within a few, the kernel hands it some.
            extra: list[Member] = []
            while not any(m.pid == replacement for m in extra):
                assert len(extra) < 200, "the replacement worker got no connection"
                batch = await connect_many(url, [f"x{len(extra) + i}" for i in range(10)])
                await whoami(batch)
                extra += batch
            # Metrics: the dead worker's gauge series is gone, the replacement has one.
            metrics = f"http://127.0.0.1:{port}/metrics"

            def gauges_moved() -> bool:
                pids = {
                    dict(labels)["pid"]
                    for (name, labels) in scrape(metrics)
                    if name == "roomcast_worker_connections"
                }
                return str(victim) not in pids and str(replacement) in pids

            await eventually(gauges_moved, WAIT, "worker gauges to follow the restart")
            for m in members + back + extra:
                await m.ws.close()

        run(body(), timeout=150)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


def test_ctrl_c_to_the_process_group_stops_every_worker_gracefully(redis_server, tmp_path):
    (tmp_path / "relay_app.py").write_text(RELAY_APP)
    served = Served(
        [
            "--port",
            "0",
            "--workers",
            "2",
            "--redis-url",
            redis_server.url,
            "--app",
            "relay_app:app",
        ],
        tmp_path,
        tmp_path / "stderr.log",
        new_session=True,
    )
    try:
        port = served.listening_port()

        async def body() -> None:
            members = await connect_many(f"ws://127.0.0.1:{port}/ws", [f"c{i}" for i in range(20)])
            # SIGINT to the supervisor and every worker at once, as a terminal's Ctrl-C.
            os.killpg(served.proc.pid, signal.SIGINT)
            await asyncio.wait_for(asyncio.gather(*(m.reader for m in members)), WAIT)
            assert {m.close for m in members} == {(1001, "Server shutting down")}

        run(body())
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
        for index in range(2):
            served.wait_line(rf"^roomcast: worker {index} \(pid \d+\) stopped \(0\)")
    finally:
        served.close()


def test_metrics_port_of_the_supervisor_sums_the_workers(redis_server, tmp_path):
    from redis_support import free_port

    metrics_port = free_port()
    served = serve_workers(tmp_path, redis_server.url, 2, "--metrics-port", str(metrics_port))
    try:
        port = served.listening_port()

        async def body() -> None:
            members = await connect_many(f"ws://127.0.0.1:{port}/ws", [f"m{i}" for i in range(20)])
            await whoami(members)
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"
            await eventually(
                lambda: value(scrape(metrics), "roomcast_connects_total") == 20,
                WAIT,
                "20 connects on the metrics port",
            )
            # Off the main port, which still answers /health.
            assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 404
            assert http_get(f"http://127.0.0.1:{port}/health") == (200, b'{"status":"ok"}')
            for m in members:
                await m.ws.close()

        run(body(), timeout=60)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


def test_workers_with_the_memory_broker_are_refused_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--workers", "3"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("roomcast: error: --workers 3 needs a shared broker: give --redis-url")


def test_workers_zero_means_one_per_usable_cpu(redis_server, tmp_path):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus < 2:
        pytest.skip("one cpu: --workers 0 is a single process")
    served = serve_workers(tmp_path, redis_server.url, 0)
    try:
        served.wait_line(rf"^roomcast: listening on ws://127\.0\.0\.1:\d+/ws \({cpus} workers, ")
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_error(tmp_path):
    from redis_support import free_port

    dead = f"redis://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "roomcast",
            "serve",
            "--port",
            "0",
            "--workers",
            "2",
            "--redis-url",
            dead,
            "--redis-timeout-ms",
            "300",
            "--jwt-secret",
            SECRET,
        ],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )
    assert proc.returncode == 1
    assert "roomcast: error: cannot reach redis at" in proc.stderr


SLOW_SHUTDOWN_APP = """
import time

class App:
    def authenticate_fn(self, data):
        return {"user_id": data.get("token")}

    def client_disconnected_fn(self, client_id, user_id):
        time.sleep(60)  # a worker that does not finish its graceful shutdown

app = App()
"""


def test_a_second_signal_kills_workers_that_do_not_finish_shutting_down(redis_server, tmp_path):
    (tmp_path / "slow_app.py").write_text(SLOW_SHUTDOWN_APP)
    served = Served(
        ["--port", "0", "--workers", "2", "--redis-url", redis_server.url, "--app", "slow_app:app"],
        tmp_path,
        tmp_path / "stderr.log",
    )
    try:
        port = served.listening_port()
        pids = [
            int(served.wait_line(rf"^roomcast: worker {i} started \(pid (\d+)\)").group(1))
            for i in range(2)
        ]

        async def body() -> None:
            ws, _ = await authed(f"ws://127.0.0.1:{port}/ws", "ann", close_timeout=1)
            mark = len(served.lines)
            served.proc.send_signal(signal.SIGTERM)
            served.wait_line(r"^roomcast: SIGTERM: stopping 2 workers", mark)
            # The worker without clients stops; the other is stuck in client_disconnected_fn
            # (after sending 1001), and the supervisor waits for it...
            served.wait_line(r"^roomcast: worker \d \(pid \d+\) stopped \(0\)", mark)
            stopped = [line for line in served.lines[mark:] if ") stopped (" in line]
            assert len(stopped) == 1 and served.proc.poll() is None
            served.proc.send_signal(signal.SIGTERM)  # ...until told again
            ws.transport.abort()

        run(body())
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 1
        served.wait_line(r"^roomcast: killing workers")
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        served.close()


def test_restarts_back_off_after_quick_deaths_up_to_a_cap():
    from roomcast.serving.workers import RESTART_MAX_DELAY, restart_delay

    assert [restart_delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert restart_delay(10_000) == RESTART_MAX_DELAY


# An app whose setup writes one stdout line of 200,000 bytes, and starts a process that
# inherits the worker's stdout (recording its pid), which says so there once the worker is
# gone and then lives on.
NOISY_APP = """
import os
import subprocess
import sys
from pathlib import Path

LONG = 200_000
GRANDCHILD = '''
import os, sys, time
parent = int(sys.argv[1])
while os.getppid() == parent:
    time.sleep(0.05)
print(f"grandchild {os.getpid()}: its worker is gone", flush=True)
time.sleep(120)
'''

class App:
    def setup(self, helper):
        if os.environ.get("NOISY_LONG_LINE"):
            print("L" * LONG, flush=True)
        if os.environ.get("NOISY_GRANDCHILD"):
            child = subprocess.Popen([sys.executable, "-c", GRANDCHILD, str(os.getpid())])
            with open("grandchildren.txt", "a") as pids:
                print(child.pid, file=pids)

    def authenticate_fn(self, data):
        return {"user_id": data.get("token")}

app = App()
"""


def serve_noisy(tmp_path: Path, redis_url: str, env: dict[str, str]) -> Served:
    (tmp_path / "noisy_app.py").write_text(NOISY_APP)
    args = ["--port", "0", "--workers", "2", "--redis-url", redis_url, "--app", "noisy_app:app"]
    return Served(args, tmp_path, tmp_path / "stderr.log", env=env)


def kill_and_see_restart(served: Served, index: int) -> int:
    """SIGKILL worker `index`; waits for its replacement to listen; returns the dead pid."""
    started = re.compile(rf"^roomcast: worker {index} started \(pid (\d+)\)")
    victim = int(next(m for line in served.lines if (m := started.match(line))).group(1))
    mark = len(served.lines)
    os.kill(victim, signal.SIGKILL)
    replacement = int(served.wait_line(started.pattern, mark, timeout=WAIT).group(1))
    assert replacement != victim
    served.wait_line(rf"^\[worker {index}\] roomcast: listening on", mark, timeout=WAIT)
    assert f"worker {index} (pid {victim}) exited with -9: restarting in" in served.stderr_text()
    return victim


def test_stdout_lines_and_pieces_do_not_depend_on_how_the_pipe_splits_the_bytes():
    from roomcast.serving.workers import LINE_LIMIT, _WorkerPipe

    data = b"a\n" + b"L" * 200_000 + b"\nshort\r\n" + b"M" * LINE_LIMIT + b"\n\ntail"
    expected = ["a", *["L" * LINE_LIMIT] * 3, "L" * (200_000 - 3 * LINE_LIMIT), "short",
                "M" * LINE_LIMIT, "", "tail"]  # fmt: skip

    async def body() -> None:
        for size in (7, 1000, LINE_LIMIT - 1, LINE_LIMIT, LINE_LIMIT + 1, 70_000, len(data)):
            lines: list[str] = []
            pipe = _WorkerPipe(lines.append)
            for start in range(0, len(data), size):
                pipe.pipe_data_received(1, data[start : start + size])
            pipe.pipe_connection_lost(1, None)
            assert lines == expected, size
            assert pipe.closed.done() and not pipe.exited.done()

    run(body())


def test_a_stdout_line_over_64_kib_is_relayed_in_pieces_and_the_worker_still_restarts(
    redis_server, tmp_path
):
    from roomcast.serving.workers import LINE_LIMIT

    served = serve_noisy(tmp_path, redis_server.url, {"NOISY_LONG_LINE": "1"})
    try:
        served.listening_port()
        for index in range(2):
            served.wait_line(rf"^\[worker {index}\] roomcast: listening on")
            prefix = f"[worker {index}] "
            pieces = [line.removeprefix(prefix) for line in list(served.lines)
                      if line.startswith(prefix + "L")]  # fmt: skip
            assert [len(p) for p in pieces] == [LINE_LIMIT] * 3 + [200_000 - 3 * LINE_LIMIT]
            assert set("".join(pieces)) == {"L"}
        kill_and_see_restart(served, 0)
        # The replacement's long line came through too, then a clean stop.
        assert sum(line.startswith("[worker 0] L") for line in served.lines) == 8
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


def test_a_worker_whose_child_keeps_its_stdout_is_still_restarted_and_the_child_relayed(
    redis_server, tmp_path
):
    served = serve_noisy(tmp_path, redis_server.url, {"NOISY_GRANDCHILD": "1"})
    grandchildren = tmp_path / "grandchildren.txt"
    try:
        served.listening_port()
        victim = kill_and_see_restart(served, 0)
        # The dead worker's child still holds the pipe, and what it writes there is relayed.
        said = served.wait_line(r"^\[worker 0\] grandchild (\d+): its worker is gone")
        assert int(said.group(1)) in {int(pid) for pid in grandchildren.read_text().split()}
        assert victim != int(said.group(1))
        # Stopping does not wait for the children (three alive: one per worker started).
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
        pids = [int(pid) for pid in grandchildren.read_text().split()]
        assert len(pids) == 3
        for pid in pids:
            os.kill(pid, 0)  # alive
    finally:
        served.close()
        if grandchildren.exists():
            for pid in grandchildren.read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


# No authenticate_fn: the built-in JWT authenticator, from the --jwt-* flags.
WHOAMI_APP = """
import os

class App:
    def setup(self, helper):
        self.helper = helper

    def message_handler(self, client_id, user_id, message):
        if message["event"] == "whoami":
            self.helper.send_to_client(client_id, "me", {"pid": os.getpid()})

app = App()
"""


@pytest.mark.parametrize("given", ["flag", "file"])
def test_workers_get_the_jwt_secret_by_environment_or_file_never_on_their_command_line(
    redis_server, tmp_path, given
):
    import jwt

    (tmp_path / "whoami_app.py").write_text(WHOAMI_APP)
    (tmp_path / "secret").write_text(SECRET + "\n")
    args = ["--port", "0", "--workers", "2", "--redis-url", redis_server.url,
            "--app", "whoami_app:app", "--log-level", "warning"]  # fmt: skip
    env = {}
    if given == "flag":
        args += ["--jwt-secret", SECRET]
    else:
        env["ROOMCAST_JWT_SECRET_FILE"] = str(tmp_path / "secret")
    served = Served(args, tmp_path, tmp_path / "stderr.log", env=env)
    try:
        port = served.listening_port()
        pids = {
            int(served.wait_line(rf"^roomcast: worker {i} started \(pid (\d+)\)").group(1))
            for i in range(2)
        }
        for pid in pids:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"roomcast" in command_line and SECRET.encode() not in command_line
        token = jwt.encode({"sub": "ann"}, SECRET, algorithm="HS256")

        async def body() -> None:
            # Until both workers have taken a login with the token.
            members: list[Member] = []
            while {m.pid for m in members} != pids:
                assert len(members) < 200, "one worker took no connection"
                batch = await connect_many(f"ws://127.0.0.1:{port}/ws", [token] * 10)
                await whoami(batch)
                members += batch
            for m in members:
                await m.ws.close()

        run(body(), timeout=60)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()
