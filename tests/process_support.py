"""`roomcast` as a user runs it, in a subprocess: start it, read its listening line, stop it;
and tokens signed with PyJWT, independently of roomcast."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import jwt

STARTUP_TIMEOUT = 20
# At least 32 bytes: shorter secrets are refused without --jwt-allow-short-secret.
SECRET = "a-test-secret-of-at-least-32-bytes"


def sign(claims: dict, secret: str = SECRET) -> str:
    """A token made with PyJWT, independently of roomcast."""
    return jwt.encode(claims, secret, algorithm="HS256")


def roomcast(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roomcast", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_listening(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    """Read stdout until the listening line; return the port and the lines before it."""
    lines: list[str] = []
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"server exited: {proc.wait()} {proc.stderr.read()}")
        lines.append(line.strip())
        match = re.search(r"listening on ws://127\.0\.0\.1:(\d+)/", line)
        if match:
            return int(match.group(1)), lines


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=STARTUP_TIMEOUT)


def one_line_error(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = roomcast(*args, env=env)
    _, err = proc.communicate(timeout=STARTUP_TIMEOUT)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return proc.returncode, lines[0]


def emit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "emit", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )
