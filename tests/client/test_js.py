"""The JavaScript client (clients/js): its own `node --test` suite against `roomcast serve`,
and the chaos test (two nodes on a real redis-server, node kills and a Redis restart) with
clients in Node (the `ws` package as WebSocket) and one in headless Chromium.

Needs Node 20+ with `clients/js/node_modules` (`npm ci` in clients/js; `.ci/run` does it) and
Debian's chromium. Skipped when they are missing outside CI; with CI=true they must be there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from client_support import ROOM, Nodes, Seen, emit_with_faults, problems, summary, wait_all
from redis_support import RedisServer
from support import run

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
NODE = shutil.which("node")
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() == "true"
NODE_CLIENTS = 10

if not IN_CI and (NODE is None or not (JS / "node_modules" / "ws").is_dir()):
    pytest.skip(
        "node or clients/js/node_modules missing (cd clients/js && npm ci; CI does it)",
        allow_module_level=True,
    )


def node_env() -> dict[str, str]:
    """The servers the suite starts run on this interpreter, which imports roomcast (installed,
    or from PYTHONPATH as scripts/dev sets it)."""
    return dict(os.environ, ROOMCAST_PYTHON=sys.executable)


@pytest.mark.timeout(300)
def test_the_js_client_suite_passes_under_node():
    assert NODE is not None, "node is missing: .ci/run must install it"
    out = subprocess.run(
        [NODE, "--test", "test/"],
        cwd=JS,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "# fail 0" in out.stdout and "# pass " in out.stdout, out.stdout[-3000:]


def check(seens: list[Seen], chaos: Any, extra: dict[str, Any]) -> None:
    report = summary(seens, chaos) | extra
    print("chaos figures:", json.dumps(report))
    bad = {i: p for i, s in enumerate(seens) if (p := problems(s, chaos))}
    assert not bad, (bad, report)
    assert report["reconnects"] >= 1, report


def seen_from(log: list[list[Any]], reconnects: list[float]) -> Seen:
    seen = Seen()
    seen.log = [(kind, n) for kind, n in log]
    seen.reconnects = list(reconnects)
    return seen


@pytest.mark.timeout(240)
def test_js_clients_in_node_get_every_message_once_in_order_through_the_chaos(
    tmp_path, monkeypatch
):
    assert NODE is not None
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a node that crashes says where
    redis = RedisServer(tmp_path / "redis").start()
    nodes = Nodes(tmp_path, redis)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        for index in (0, 1):
            await loop.run_in_executor(None, nodes.start, index)
        proc = await asyncio.create_subprocess_exec(
            NODE,
            str(JS / "tools" / "chaos-runner.js"),
            ",".join(nodes.urls),
            str(NODE_CLIENTS),
            ROOM,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # the final line holds every client's log
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
            assert ready == {"ready": True}
            chaos = await emit_with_faults(nodes, redis)
            proc.stdin.write(json.dumps({"last": chaos.published[-1]}).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, (await proc.stderr.read()).decode()[-3000:]
            result = json.loads(line)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        seens = [
            seen_from(log, rec)
            for log, rec in zip(result["logs"], result["reconnects"], strict=True)
        ]
        extra = {
            "replayed": result["replayed"],
            "connections": result["connections"],
            "per_client": result["perClient"],
        }
        check(seens, chaos, extra)

    try:
        run(body(), timeout=220)
    finally:
        nodes.close()
        redis.kill()


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>roomcast chaos</title>
<script type="module">
import { RoomcastClient } from "/roomcast.js";
const params = new URLSearchParams(location.search);
const log = [];
const reconnects = [];
let droppedAt = null;
const client = new RoomcastClient(params.get("urls").split(","), {
  token: "browser", rooms: ["chaos"], historyRooms: "chaos*", backoff: [50, 1000],
});
client.on("n", (m) => { log.push(["n", m.data.n]); });
client.on("gap", () => { log.push(["gap", 0]); });
client.on("disconnected", () => { droppedAt = performance.now(); });
client.on("connected", () => {
  if (droppedAt !== null) reconnects.push((performance.now() - droppedAt) / 1000);
  droppedAt = null;
});
const post = (body) => fetch("/report", { method: "POST", body: JSON.stringify(body) });
try {
  await client.connect();
  await client.join("chaos");
  setInterval(() => post({
    ready: true, log, reconnects, replayed: client.replayed, connections: client.connections,
    userAgent: navigator.userAgent,
  }), 300);
} catch (err) {
  post({ error: String(err) });
}
</script>
"""


class PageServer:
    """Serves the page and the client module, and keeps the page's latest report."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/roomcast.js"):
                    body, kind = (JS / "src" / "roomcast.js").read_bytes(), "text/javascript"
                else:
                    body, kind = PAGE.encode(), "text/html; charset=utf-8"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                owner.report = json.loads(self.rfile.read(length))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def chromium(url: str, profile: str, log: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-background-timer-throttling",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        url,
        stdout=log,
        stderr=log,
    )


@pytest.mark.timeout(240)
def test_the_js_client_in_chromium_gets_every_message_once_in_order_through_the_chaos(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: .ci/run must install chromium")
        pytest.skip(f"{CHROMIUM} not installed")
    redis = RedisServer(tmp_path / "redis").start()
    nodes = Nodes(tmp_path, redis)
    page = PageServer()
    profile = tempfile.mkdtemp(prefix="roomcast-chromium-")
    log = open(os.path.join(profile, "chromium.log"), "wb")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        for index in (0, 1):
            await loop.run_in_executor(None, nodes.start, index)
        url = f"http://127.0.0.1:{page.port}/?urls={','.join(nodes.urls)}"
        browser = await chromium(url, profile, log)
        try:

            def tail() -> str:
                log.flush()
                return Path(log.name).read_bytes()[-2000:].decode(errors="replace")

            await wait_all(lambda: bool(page.report), 60, lambda: f"no report: {tail()}")
            assert page.report.get("ready"), page.report
            assert "Chrome" in page.report["userAgent"]
            chaos = await emit_with_faults(nodes, redis)
            last = chaos.published[-1]
            await wait_all(
                lambda: any(n >= last for kind, n in page.report["log"][-5:] if kind == "n"),
                90,
                lambda: f"{page.report['log'][-3:]} {tail()}",
            )
        finally:
            if browser.returncode is None:
                browser.kill()
            await browser.wait()
        report = page.report
        seen = seen_from(report["log"], report["reconnects"])
        extra = {"replayed": report["replayed"], "connections": report["connections"]}
        check([seen], chaos, extra)

    try:
        run(body(), timeout=220)
    finally:
        page.close()
        nodes.close()
        redis.kill()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
