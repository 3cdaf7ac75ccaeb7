"""Reading Redis replies: the fast path on redis-py's hiredis internals is taken only where it
was tested, and the public fallback is really used when forced (the fixture `redis_parser`
runs a few cross-node tests both ways)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from roomcast.broker.redis import RedisTarget, replies
from support import run


async def _paths(port: int) -> tuple[bool, list[object]]:
    """Whether a connection got the fast path, and two replies read through it."""
    conn = await RedisTarget((("127.0.0.1", port),)).connect("127.0.0.1", port, 2.0)
    try:
        reader = replies.Replies(conn)
        await conn.send_packed_command(b"*2\r\n$4\r\nPING\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n")
        got = [await reader.next(), await reader.next()]
        return reader.gets is not None, got
    finally:
        await conn.disconnect()


@pytest.mark.parametrize("public", [False, True])
def test_forcing_the_public_parser_switches_paths_and_both_read_replies(redis_server, public):
    previous = replies.use_public_parser(public)
    try:
        fast, got = run(_paths(redis_server.port))
    finally:
        replies.use_public_parser(previous)
    assert got == [b"a", b"PONG"]
    assert fast == (not public and _tested())


def _tested() -> bool:
    return redis.VERSION[0] in replies.TESTED_MAJORS


def test_the_installed_redis_py_gets_the_fast_path():
    # The pin in pyproject.toml allows only tested majors, so CI always covers the fast path.
    assert _tested(), redis.__version__
    assert replies.fast_path_enabled()


def test_the_environment_variable_forces_the_public_parser_for_a_process():
    code = "from roomcast.broker.redis import replies; print(replies.fast_path_enabled())"
    env = {**os.environ, replies.PARSER_ENV: "public"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
