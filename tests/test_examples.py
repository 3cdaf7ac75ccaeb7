"""Every example runs until Ctrl-C and then exits cleanly: its clients get 1001, no traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from roomcast.crypto import EcdhClient
from support import authed, closed_with, open_client, recv, run, send

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 20


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=EXAMPLES,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(proc: subprocess.Popen[str], pattern: str) -> tuple[re.Match[str], list[str]]:
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"exited {proc.wait()}: {''.join(lines)}")
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match, lines


def interrupted_cleanly(proc: subprocess.Popen[str]) -> None:
    """After SIGINT (Ctrl-C): exit status 0 and no traceback."""
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out


def test_encrypted_chat_example_stops_on_ctrl_c_with_1001():
    proc = start(["encrypted_chat.py", "0"])
    try:
        match, _ = wait_for(proc, r"http://127\.0\.0\.1:(\d+)/")
        url = f"ws://127.0.0.1:{match.group(1)}/ws"

        async def body():
            client = EcdhClient()
            ws = await open_client(url)
            await send(ws, {"event": "authenticate", "data": client.authenticate_data("ann")})
            connected = await recv(ws)
            assert connected["event"] == "connected"
            proc.send_signal(signal.SIGINT)
            code, reason, _ = await closed_with(ws, timeout=TIMEOUT)
            assert (code, reason) == (1001, "Server shutting down")

        run(body())
        interrupted_cleanly(proc)
    finally:
        proc.kill()
        proc.communicate()


def test_chat_app_example_stops_on_ctrl_c_with_1001(redis_server):
    proc = start(["chat_app.py"], env={"REDIS_URL": redis_server.url, "PORT": "0"})
    try:
        match, _ = wait_for(proc, r"chat on ws://127\.0\.0\.1:(\d+)/chat")
        url = f"ws://127.0.0.1:{match.group(1)}/chat"

        async def body():
            ws, data = await authed(url, "token-ann")
            assert data["userId"] == "ann"
            assert (await recv(ws))["event"] == "welcome"
            proc.send_signal(signal.SIGINT)
            code, reason, _ = await closed_with(ws, timeout=TIMEOUT)
            assert (code, reason) == (1001, "Server shutting down")

        run(body())
        interrupted_cleanly(proc)
    finally:
        proc.kill()
        proc.communicate()


def test_relay_app_example_stops_on_ctrl_c_with_1001():
    proc = start(["-m", "roomcast", "serve", "--port", "0", "--app", "relay_app:app"])
    try:
        match, lines = wait_for(proc, r"listening on ws://127\.0\.0\.1:(\d+)/ws")
        [token] = [line.split()[-1] for line in lines if "demo token" in line]

        async def body():
            ws, _ = await authed(f"ws://127.0.0.1:{match.group(1)}/ws", token)
            proc.send_signal(signal.SIGINT)
            code, reason, _ = await closed_with(ws, timeout=TIMEOUT)
            assert (code, reason) == (1001, "Server shutting down")

        run(body())
        interrupted_cleanly(proc)
    finally:
        proc.kill()
        proc.communicate()
