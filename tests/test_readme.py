"""The README's code works as printed (with a free port instead of 8080)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from process_support import STARTUP_TIMEOUT, wait_listening
from support import authed, closed_with, run

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def section(heading: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def python_blocks(heading: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(heading), re.S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_quick_start_server_and_client_work_and_ctrl_c_closes_clients_with_1001(tmp_path):
    server_code, client_code = python_blocks("Quick start")[:2]
    assert "helper.run(" in server_code
    port = free_port()
    (tmp_path / "chat.py").write_text(server_code.replace("8080", str(port)))
    (tmp_path / "client.py").write_text(client_code.replace("8080", str(port)))
    server = subprocess.Popen(
        [sys.executable, "chat.py"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 15
        while not listening(port):
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "quick-start server did not start"
            time.sleep(0.05)
        out = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=20
        )
        assert out.returncode == 0, out.stderr
        connected, chat = out.stdout.splitlines()
        assert '"event":"connected"' in connected and '"userId":"ann"' in connected
        assert chat == '{"event":"chat","data":{"from":"ann","text":"hi"}}'

        async def body():
            ws, _ = await authed(f"ws://127.0.0.1:{port}/ws", "bea")
            server.send_signal(signal.SIGINT)  # what Ctrl-C sends
            code, reason, _ = await closed_with(ws, timeout=STARTUP_TIMEOUT)
            assert (code, reason) == (1001, "Server shutting down")

        run(body())
        _, err = server.communicate(timeout=STARTUP_TIMEOUT)
        assert server.returncode == 0, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        server.kill()
        server.communicate()


def test_set_up_relay_app_and_client_work_with_the_printed_demo_token(tmp_path):
    [client_code] = python_blocks("Set-up: two commands")
    setup = section("Set-up: two commands")
    assert "roomcast serve --app examples.relay_app:app" in setup
    command = ["serve", "--app", "examples.relay_app:app", "--port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port, lines = wait_listening(proc)
        [token] = [line.rsplit(" ", 1)[1] for line in lines if "demo token" in line]
        (tmp_path / "client.py").write_text(client_code.replace("8080", str(port)))
        out = subprocess.run(
            [sys.executable, "client.py", token],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        connected, chat = out.stdout.splitlines()
        assert '"event":"connected"' in connected and '"userId":"demo"' in connected
        assert chat == '{"event":"chat","data":{"room":"lobby","text":"hi","from":"demo"}}'
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_set_up_lists_the_requirements_before_the_first_command():
    setup = section("Set-up: two commands")
    first_command = setup.index("```sh")
    for requirement in ("Python 3.11+", "Rust toolchain", "C compiler"):
        assert -1 < setup.find(requirement) < first_command, requirement
    assert "python3 -m venv .venv && . .venv/bin/activate\npip install . && roomcast serve" in setup
    assert "```sh\nscripts/test\n```" in setup
    # scripts/test installs into the active interpreter (a venv's, or CI's system python3).
    assert "python3 -m pip install" in (ROOT / "scripts" / "test").read_text()
