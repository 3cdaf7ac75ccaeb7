"""`roomcast serve` run as a user runs it: a subprocess, flags, environment, signals."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from process_support import (
    SECRET,
    STARTUP_TIMEOUT,
    one_line_error,
    roomcast,
    sign,
    stop,
    wait_listening,
)
from support import authed, closed_with, eventually, recv, run, send


def test_serve_without_a_secret_prints_a_working_demo_token_and_stops_on_sigterm():
    proc = roomcast("serve", "--port", "0", "--allow-rooms", "chat-*")
    try:
        port, lines = wait_listening(proc)
        [token] = [line.rsplit(" ", 1)[1] for line in lines if "demo token" in line]

        async def body():
            url = f"ws://127.0.0.1:{port}/ws"
            ws, data = await authed(url, token)
            assert data["userId"] == "demo"
            await send(ws, {"event": "join", "data": {"rooms": ["chat-1", "secret"]}})
            await send(ws, {"event": "heartbeat"})
            proc.send_signal(signal.SIGTERM)
            code, reason, _ = await closed_with(ws, timeout=STARTUP_TIMEOUT)
            assert (code, reason) == (1001, "Server shutting down")

        run(body())
        assert proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_serve_shuts_down_gracefully_on_a_sigterm_right_after_it_is_listening():
    proc = roomcast("serve", "--port", "0")
    try:
        wait_listening(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_serve_reads_flags_from_roomcast_environment_variables():
    env = {
        "ROOMCAST_JWT_SECRET": "env-" + SECRET,
        "ROOMCAST_PATH": "/live",
        "ROOMCAST_DEFAULT_ROOMS": "lobby,news",
        "ROOMCAST_AUTH_TIMEOUT_MS": "300",
    }
    proc = roomcast("serve", "--port", "0", env=env)
    try:
        port, lines = wait_listening(proc)
        assert not any("demo token" in line for line in lines)

        async def body():
            url = f"ws://127.0.0.1:{port}/live"
            ws, data = await authed(url, sign({"sub": "u7"}, "env-" + SECRET))
            assert data["userId"] == "u7"
            await ws.close()
            from websockets.asyncio.client import connect

            idle = await connect(url)
            code, _, _ = await closed_with(idle)
            assert code == 4001  # 300 ms auth timeout from the environment

        run(body())
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_app_supplies_callbacks_and_setup_gets_the_helper(tmp_path):
    (tmp_path / "echo_app.py").write_text(
        "class App:\n"
        "    def setup(self, helper):\n"
        "        self.helper = helper\n"
        "    def authenticate_fn(self, data):\n"
        "        return {'user_id': data.get('token')}\n"
        "    def message_handler(self, client_id, user_id, message):\n"
        "        self.helper.send_to_client(client_id, 'echo', message.get('data'))\n"
        "app = App()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--app", "echo_app:app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        port, _ = wait_listening(proc)

        async def body():
            ws, data = await authed(f"ws://127.0.0.1:{port}/ws", "zoe")
            assert data["userId"] == "zoe"
            await send(ws, {"event": "say", "data": {"x": 1}})
            assert await recv(ws) == {"event": "echo", "data": {"x": 1}}
            await ws.close()

        run(body())
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_bad_flags_give_one_line_errors():
    code, line = one_line_error("serve", "--port", "http")
    assert code == 2 and line == "roomcast: error: argument --port: not a port number: 'http'"
    code, line = one_line_error("serve", "--redis-url", "mysql://x")
    assert code == 2 and "unsupported url 'mysql://x'" in line
    code, line = one_line_error("serve", "--bogus")
    assert code == 2 and line.startswith("roomcast: error: unrecognized arguments: --bogus")
    code, line = one_line_error("serve", env={"ROOMCAST_PORT": "99999"})
    assert code == 2 and line == "roomcast: error: ROOMCAST_PORT: port out of range 0-65535: 99999"


def test_unimportable_app_gives_a_one_line_error():
    code, line = one_line_error("serve", "--app", "no_such_module_xyz:app")
    assert code == 2
    assert line == (
        "roomcast: error: cannot import app 'no_such_module_xyz:app': "
        "No module named 'no_such_module_xyz'"
    )


def test_port_in_use_gives_a_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, line = one_line_error("serve", "--port", str(port), "--jwt-secret", SECRET)
    assert code == 1
    assert line == f"roomcast: error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_sigint_also_shuts_down_gracefully():
    proc = roomcast("serve", "--port", "0", "--jwt-secret", SECRET)
    try:
        port, _ = wait_listening(proc)

        async def body():
            ws, _ = await authed(f"ws://127.0.0.1:{port}/ws", sign({"sub": "a"}))
            proc.send_signal(signal.SIGINT)
            code, _, _ = await closed_with(ws, timeout=STARTUP_TIMEOUT)
            assert code == 1001
            await eventually(lambda: proc.poll() is not None, timeout=STARTUP_TIMEOUT)

        run(body())
        assert proc.returncode == 0
    finally:
        proc.kill()
        proc.communicate()


def test_flags_map_onto_the_config_with_milliseconds_as_seconds():
    from roomcast.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["serve", "--heartbeat-timeout-ms", "1500", "--default-rooms", "", "--require-encryption"]
    )
    config = config_from_args(args, {"ROOMCAST_HEARTBEAT_TIMEOUT_MS": "9", "ROOMCAST_PORT": "81"})
    assert config.heartbeat_timeout == 1.5  # the flag wins over the environment
    assert config.port == 81
    assert config.default_rooms == []
    assert config.require_encryption is True


def test_require_encryption_without_an_app_scheme_binds_the_built_in_one():
    from roomcast.cli import ServeConfig, build_helper
    from roomcast.crypto import EcdhScheme

    lines = []
    helper = build_helper(ServeConfig(require_encryption=True, jwt_secret=SECRET), out=lines.append)
    assert isinstance(helper.encryption, EcdhScheme)
    assert helper.handshake_fn == helper.encryption.handshake_fn
    assert any("built-in ECDH" in line for line in lines)
    plain = build_helper(ServeConfig(jwt_secret=SECRET), out=lines.append)
    assert plain.encryption is None and plain.handshake_fn is None
