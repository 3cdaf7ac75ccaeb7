"""Headless Chromium runs the example page (built on the JavaScript client): WebCrypto
handshake, decryption, encrypted reply.

Needs Debian's `chromium` (`.ci/run` installs it). Skipped only when it is missing outside CI;
with CI=true a missing browser fails the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from roomcast import HttpRequest, HttpResponse
from roomcast.crypto import EcdhScheme
from support import run, running

CHROMIUM = "/usr/bin/chromium"
PAGE = Path(__file__).resolve().parents[1] / "examples" / "encrypted_client.html"
CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js" / "src" / "roomcast.js"
BROWSER_TIMEOUT = 45.0

if not os.path.exists(CHROMIUM) and os.environ.get("CI", "").lower() != "true":
    pytest.skip(
        f"{CHROMIUM} not installed (apt-get install chromium; CI installs it)",
        allow_module_level=True,
    )


def page_handler(request: HttpRequest) -> HttpResponse | None:
    if request.path == "/":
        return HttpResponse(200, PAGE.read_bytes(), {"Content-Type": "text/html; charset=utf-8"})
    if request.path == "/roomcast.js":  # the JavaScript client the page is built on
        return HttpResponse(200, CLIENT.read_bytes(), {"Content-Type": "text/javascript"})
    return None


def test_example_page_completes_the_handshake_with_webcrypto_and_decrypts_a_room_message():
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: .ci/run must install chromium"
    scheme = EcdhScheme()
    events: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    def on_message(client_id, user_id, message):
        events.put_nowait((client_id, message))

    async def body():
        profile = tempfile.mkdtemp(prefix="roomcast-chromium-")
        log = open(os.path.join(profile, "chromium.log"), "wb")
        browser = None
        try:
            async with running(
                http_handler=page_handler,
                encryption=scheme,
                require_encryption=True,
                message_handler=on_message,
            ) as node:
                url = f"http://127.0.0.1:{node.port}/?token=user:browser&report=1"
                browser = await asyncio.create_subprocess_exec(
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    f"--user-data-dir={profile}",
                    url,
                    stdout=log,
                    stderr=log,
                )
                try:
                    # The page decrypts nothing before it has its key: "ready" comes sealed.
                    client_id, ready = await asyncio.wait_for(events.get(), BROWSER_TIMEOUT)
                    assert ready["event"] == "ready", ready
                    assert "Chrome" in ready["data"]["userAgent"]
                    client = node.helper.get_clients(client_id)
                    assert client.encrypted and client.user_id == "browser"
                    news = {"text": "héllo from roomcast ✓", "n": 42, "list": [1, None, True]}
                    assert node.helper.send_to_room("ws-default", "news", news) == 1
                    _, report = await asyncio.wait_for(events.get(), BROWSER_TIMEOUT)
                except TimeoutError:
                    log.flush()
                    tail = Path(log.name).read_bytes()[-3000:].decode(errors="replace")
                    pytest.fail(f"no answer from the page within {BROWSER_TIMEOUT} s:\n{tail}")
                assert report == {"event": "report", "data": {"event": "news", "data": news}}
        finally:
            if browser is not None and browser.returncode is None:
                browser.kill()
                await browser.wait()
            log.close()
            shutil.rmtree(profile, ignore_errors=True)

    run(body(), timeout=BROWSER_TIMEOUT * 2 + 10)
