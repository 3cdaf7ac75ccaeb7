"""The README's quick start works as printed (with a free port instead of 8080)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_quick_start_server_and_client_work(tmp_path):
    server_code, client_code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[:2]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    (tmp_path / "chat.py").write_text(server_code.replace("8080", port))
    (tmp_path / "client.py").write_text(client_code.replace("8080", port))
    server = subprocess.Popen([sys.executable, "chat.py"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while not listening(int(port)):
            assert time.monotonic() < deadline, "quick-start server did not start"
            time.sleep(0.05)
        out = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=20
        )
        assert out.returncode == 0, out.stderr
        connected, chat = out.stdout.splitlines()
        assert '"event":"connected"' in connected and '"userId":"ann"' in connected
        assert chat == '{"event":"chat","data":{"from":"ann","text":"hi"}}'
    finally:
        server.kill()
        server.wait()
