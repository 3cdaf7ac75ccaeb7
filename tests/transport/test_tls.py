"""wss:// and https://: `roomcast serve --ssl-*` and the library's `ssl=` with certificates
made by the test (cryptography), client certificates, and one-line errors for bad files."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from roomcast import WebSocketServerHelper
from roomcast.node import jwt
from roomcast.transport.tls import TlsError, server_context
from serving_support import SECRET, STARTUP_TIMEOUT, Served, http_get, make_certificates
from support import authed, open_client, run, token_auth
from websockets.exceptions import InvalidMessage

pytestmark = pytest.mark.timeout(60)


def client_context(files: dict[str, Path], with_certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    if with_certificate:
        context.load_cert_chain(str(files["client_cert"]), str(files["client_key"]))
    return context


def test_cli_serves_wss_and_https_with_an_encrypted_key(tmp_path):
    files = make_certificates(tmp_path, password=b"hunter2")
    served = Served(
        [
            "--port",
            "0",
            "--jwt-secret",
            SECRET,
            "--ssl-certfile",
            str(files["cert"]),
            "--ssl-keyfile",
            str(files["key"]),
            "--ssl-keyfile-password",
            "hunter2",
        ],
        tmp_path,
        tmp_path / "stderr.log",
    )
    try:
        port = served.listening_port()
        served.wait_line(rf"^roomcast: listening on wss://127\.0\.0\.1:{port}/ws")
        context = client_context(files)
        assert http_get(f"https://127.0.0.1:{port}/health", context) == (200, b'{"status":"ok"}')

        async def body() -> None:
            token = jwt.mint({"sub": "ann"}, SECRET, "HS256")
            ws, data = await authed(f"wss://127.0.0.1:{port}/ws", token, ssl=context)
            assert data["userId"] == "ann"
            await ws.close()
            # Plain ws:// on a TLS port is no WebSocket.
            with pytest.raises((InvalidMessage, OSError, asyncio.TimeoutError)):
                await open_client(f"ws://127.0.0.1:{port}/ws", open_timeout=2)

        run(body())
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()


def test_library_serves_wss_and_requires_client_certificates_when_given_a_ca(tmp_path):
    files = make_certificates(tmp_path)
    context = server_context(str(files["cert"]), str(files["key"]), ca_certs=str(files["ca"]))

    async def body() -> None:
        helper = WebSocketServerHelper("tls", "/ws", "memory://", token_auth)
        server = await helper.serve("127.0.0.1", 0, ssl=context)
        try:
            url = f"wss://127.0.0.1:{server.bound_port}/ws"
            ws, data = await authed(url, "user:bob", ssl=client_context(files, True))
            assert data["userId"] == "bob"
            await ws.close()
            with pytest.raises((ssl.SSLError, OSError, InvalidMessage)):
                ws = await open_client(url, ssl=client_context(files, False))
                await ws.recv()  # TLS 1.3: the refusal may come after the handshake
        finally:
            await server.stop()
            await helper.shutdown()

    run(body())


def _serve_error(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--jwt-secret", SECRET, *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return proc.returncode, lines[0]


def test_bad_tls_files_give_one_line_errors(tmp_path):
    files = make_certificates(tmp_path, password=b"right")
    missing = tmp_path / "missing.pem"
    code, line = _serve_error("--ssl-certfile", str(missing))
    assert (code, line) == (2, f"roomcast: error: certificate file not found: {missing}")
    code, line = _serve_error(
        "--ssl-certfile",
        str(files["cert"]),
        "--ssl-keyfile",
        str(files["key"]),
        "--ssl-keyfile-password",
        "wrong",
    )
    assert (code, line) == (
        2,
        f"roomcast: error: cannot decrypt key file (wrong password?): {files['key']}",
    )
    code, line = _serve_error(
        "--ssl-certfile", str(files["cert"]), "--ssl-keyfile", str(files["key"])
    )
    assert (code, line) == (
        2,
        f"roomcast: error: key file is encrypted and no password was given: {files['key']}",
    )
    code, line = _serve_error(
        "--ssl-certfile", str(files["cert"]), "--ssl-keyfile", str(files["ca"])
    )
    assert (code, line) == (2, f"roomcast: error: key file holds no PEM private key: {files['ca']}")
    code, line = _serve_error(
        "--ssl-certfile", str(files["ca"]), "--ssl-keyfile", str(files["client_key"])
    )
    assert code == 2 and "cannot use certificate" in line
    code, line = _serve_error(
        "--ssl-certfile",
        str(files["cert"]),
        "--ssl-keyfile",
        str(files["key"]),
        "--ssl-keyfile-password",
        "right",
        "--ssl-ca-certs",
        str(files["key"]),
    )
    assert code == 2 and line.startswith(
        f"roomcast: error: cannot load CA certificates {files['key']}"
    )
    code, line = _serve_error("--ssl-keyfile", str(files["key"]))
    assert (code, line) == (
        2,
        "roomcast: error: --ssl-keyfile and --ssl-ca-certs need --ssl-certfile",
    )


def test_server_context_names_a_certificate_that_is_not_pem(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TlsError, match=f"cannot use certificate {junk}"):
        server_context(str(junk))


def test_workers_serve_wss_on_one_port(redis_server, tmp_path):
    files = make_certificates(tmp_path)
    served = Served(
        [
            "--port",
            "0",
            "--workers",
            "2",
            "--redis-url",
            redis_server.url,
            "--jwt-secret",
            SECRET,
            "--ssl-certfile",
            str(files["cert"]),
            "--ssl-keyfile",
            str(files["key"]),
        ],
        tmp_path,
        tmp_path / "stderr.log",
    )
    try:
        port = served.listening_port()
        served.wait_line(rf"^roomcast: listening on wss://127\.0\.0\.1:{port}/ws \(2 workers, ")
        context = client_context(files)
        assert http_get(f"https://127.0.0.1:{port}/health", context) == (200, b'{"status":"ok"}')

        async def body() -> None:
            for i in range(10):
                token = jwt.mint({"sub": f"u{i}"}, SECRET, "HS256")
                ws, data = await authed(f"wss://127.0.0.1:{port}/ws", token, ssl=context)
                assert data["userId"] == f"u{i}"
                await ws.close()

        run(body())
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        served.close()
