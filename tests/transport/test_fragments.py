"""Fragmented messages (`transport/connection.py`) over a real socket: the frames one message
may span are bounded by count (`max_fragments`, empty continuations included: 1008 past it),
and however many are allowed, the node holds a message's bytes, not an object per frame."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import orjson
from process_support import stop, wait_listening
from support import run, running
from test_hostile import CONTINUATION, ROOMCAST_SERVE, TEXT, Wire, close_code, frame

MESSAGE = b'{"event":"echo","data":"in pieces"}'

ECHO_APP = """
class App:
    def setup(self, helper):
        self.helper = helper

    def authenticate_fn(self, data):
        token = data.get("token")
        return {"user_id": token} if token else None

    def message_handler(self, client_id, user_id, message):
        self.helper.send_to_client(client_id, "got", message.get("data"))

app = App()
"""


def echo_handler(node: Any) -> Any:
    def message_handler(client_id: str, user_id: str | None, message: dict[str, Any]) -> None:
        node.helper.send_to_client(client_id, "got", message.get("data"))

    return message_handler


def in_frames(message: bytes, count: int) -> bytes:
    """`message` as a text frame and `count - 1` continuations, the last one final; every
    frame but the first is empty."""
    frames = [frame(TEXT, message, fin=count == 1)]
    empty = frame(CONTINUATION, b"", fin=False)
    frames += [empty] * (count - 2)
    if count > 1:
        frames.append(frame(CONTINUATION, b"", fin=True))
    return b"".join(frames)


async def fragments_answer(port: int, count: int) -> list[tuple[int, bytes]] | dict[str, Any]:
    """Send MESSAGE in `count` frames: the echo, or every frame until the server closed."""
    wire = await Wire.open(port)
    try:
        await wire.upgrade()
        await wire.authenticate("user:alice")
        await wire.send(in_frames(MESSAGE, count))
        opcode, payload = await wire.read_frame()
        if opcode == TEXT:
            return dict(orjson.loads(payload))
        frames = [(opcode, payload), *await wire.frames_until_closed()]
        return frames
    finally:
        wire.close()


# -- frames per message ---------------------------------------------------------------------


def test_a_message_in_max_fragments_frames_passes_and_one_more_frame_gets_1008():
    async def body():
        async with running(server_options={"max_fragments": 64}) as node:
            node.helper.message_handler = echo_handler(node)
            assert await fragments_answer(node.port, 64) == {"event": "got", "data": "in pieces"}
            frames = await fragments_answer(node.port, 65)
            assert isinstance(frames, list) and close_code(frames) == 1008
            assert [p for op, p in frames if op == TEXT] == []
            reason = next(p for op, p in frames if op == 0x8)[2:]
            assert reason == b"Too many fragments"

    run(body())


def test_two_million_empty_continuations_are_closed_with_1008_at_the_default_bound():
    async def body():
        async with running() as node:
            node.helper.message_handler = echo_handler(node)
            wire = await Wire.open(node.port)
            try:
                await wire.upgrade()
                await wire.authenticate("user:alice")
                reader = asyncio.ensure_future(wire.frames_until_closed(timeout=30))
                await wire.send(frame(TEXT, MESSAGE, fin=False))
                chunk = frame(CONTINUATION, b"", fin=False) * 100_000
                for _ in range(20):  # two million, unless the server closed before
                    if not await wire.send(chunk):
                        break
                frames = await reader
            finally:
                wire.close()
            assert close_code(frames) == 1008
            assert [p for op, p in frames if op == TEXT] == []

    run(body(), timeout=60)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_two_million_empty_continuations_under_a_high_bound_keep_memory_flat(tmp_path):
    """Allowed that many frames, the server still holds only the bytes: its memory does
    not grow with the frame count, and the message arrives whole."""
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    proc = subprocess.Popen(
        [*ROOMCAST_SERVE, "--app", "echo_app:app", "--max-fragments", "3000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        port, _ = wait_listening(proc)

        async def body() -> int:
            wire = await Wire.open(port)
            try:
                await wire.upgrade()
                await wire.authenticate("alice")
                before = rss_kib(proc.pid)
                await wire.send(frame(TEXT, MESSAGE, fin=False))
                chunk = frame(CONTINUATION, b"", fin=False) * 100_000
                for _ in range(20):
                    assert await wire.send(chunk)
                await wire.send(frame(CONTINUATION, b"", fin=True))
                opcode, payload = await wire.read_frame(timeout=60)
                assert (opcode, orjson.loads(payload)) == (
                    TEXT,
                    {"event": "got", "data": "in pieces"},
                )
                return rss_kib(proc.pid) - before
            finally:
                wire.close()

        grown = run(body(), timeout=90)
        # A list entry per frame would be 2,000,000 x ~40 bytes, 80 MB: well below that.
        assert grown < 16 * 1024, f"grew {grown} KiB"
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()
