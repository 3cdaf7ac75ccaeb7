"""`roomcast token`, the --jwt-* flags of `roomcast serve`, and the CLI's first-run manners:
--version, usage, the redis line, refused default rooms, the example --app."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt_support import JwksServer, hs256_by_hand, jwk
from process_support import SECRET, STARTUP_TIMEOUT, one_line_error, roomcast, stop, wait_listening
from support import authed, closed_with, open_client, recv, run, send

ROOT = Path(__file__).resolve().parents[2]


def token_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "token", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def mint(*args: str, env: dict[str, str] | None = None) -> str:
    out = token_cli(*args, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    [token] = out.stdout.splitlines()  # only the token
    return token


def write_keys(tmp_path: Path, private_key) -> tuple[Path, Path]:
    private = tmp_path / "key.pem"
    public = tmp_path / "key.pub.pem"
    private.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def logs_in(port: int, token: str, user: str) -> None:
    async def body():
        ws, data = await authed(f"ws://127.0.0.1:{port}/ws", token)
        assert data["userId"] == user
        await ws.close()

    run(body())


def refused(port: int, token: str) -> None:
    async def body():
        ws = await open_client(f"ws://127.0.0.1:{port}/ws")
        await send(ws, {"event": "authenticate", "data": {"type": "Bearer", "token": token}})
        code, _, received = await closed_with(ws)
        assert code == 4003
        assert received == [{"event": "error", "data": {"message": "Authentication failed"}}]

    run(body())


# -- roomcast token ------------------------------------------------------------------------


def test_token_prints_only_a_token_with_the_claims_asked_for():
    token = mint("--sub", "alice", "--secret", SECRET, "--exp-s", "120", "--claim", "role=admin")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 120
    listed = mint("--sub", "b", "--claim", 'rooms=["a","b"]', "--claim", "n=5", "--exp-s", "0",
                  env={"ROOMCAST_JWT_SECRET": SECRET})  # fmt: skip
    claims = jwt.decode(listed, SECRET, algorithms=["HS256"])
    assert claims["rooms"] == ["a", "b"] and claims["n"] == 5 and "exp" not in claims
    assert (
        jwt.get_unverified_header(mint("--sub", "c", "--secret", SECRET * 2, "--alg", "HS512"))[
            "alg"
        ]
        == "HS512"
    )


def test_token_from_a_secret_is_accepted_by_serve():
    proc = roomcast("serve", "--port", "0", "--jwt-secret", SECRET)
    try:
        port, lines = wait_listening(proc)
        assert not any("demo token" in line for line in lines)
        logs_in(port, mint("--sub", "alice", "--secret", SECRET), "alice")
        refused(port, mint("--sub", "eve", "--secret", "x" * 32))
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize(
    ("make_key", "alg"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "PS256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
def test_token_from_a_private_key_is_accepted_by_serve_with_the_public_key(tmp_path, make_key, alg):
    private, public = write_keys(tmp_path, make_key())
    token = mint("--sub", "kim", "--private-key", str(private), "--alg", alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    proc = roomcast("serve", "--port", "0", "--jwt-public-key", str(public))
    try:
        port, _ = wait_listening(proc)
        logs_in(port, token, "kim")
        (tmp_path / "other").mkdir()
        other, _ = write_keys(tmp_path / "other", make_key())
        refused(port, mint("--sub", "kim", "--private-key", str(other), "--alg", alg))
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_serve_with_a_jwks_url_accepts_a_token_minted_with_a_kid(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    private, _ = write_keys(tmp_path, key)
    jwks = JwksServer([jwk(key, "key-1", "ES256")])
    env = {
        "ROOMCAST_JWKS_URL": jwks.url,
        "ROOMCAST_JWKS_ALLOW_HTTP": "1",
        "ROOMCAST_JWT_AUDIENCE": "chat",
        "ROOMCAST_JWT_ISSUER": "https://id.test",
        "ROOMCAST_JWT_USER_CLAIM": "email",
    }
    proc = roomcast("serve", "--port", "0", env=env)
    try:
        port, lines = wait_listening(proc)
        assert not any("demo token" in line for line in lines)
        claims = ["--claim", "aud=chat", "--claim", "iss=https://id.test"]
        good = mint("--private-key", str(private), "--kid", "key-1", "--claim", "email=a@x.io",
                    *claims)  # fmt: skip
        logs_in(port, good, "a@x.io")
        refused(port, mint("--private-key", str(private), "--kid", "key-1", "--claim", "aud=x"))
        assert jwks.requests == 1
        jwks.stop()
        refused(port, mint("--private-key", str(private), "--kid", "key-2", *claims))
        logs_in(port, good, "a@x.io")  # the key fetched before still works
        assert stop(proc) == 0
    finally:
        jwks.stop()
        proc.kill()
        proc.communicate()


def test_token_errors_are_one_line():
    for args, expected in [
        (
            ["--sub", "a"],
            "roomcast: error: give --secret (or ROOMCAST_JWT_SECRET) or --private-key",
        ),
        (
            ["--sub", "a", "--secret", "short"],
            "roomcast: error: secret too short for HS256: 5 bytes (at least 32; "
            "--allow-short-secret to use it anyway)",
        ),
        (
            ["--sub", "a", "--secret", SECRET, "--alg", "RS256"],
            "roomcast: error: --alg RS256 needs --private-key (a secret signs HS256/384/512)",
        ),
        (
            ["--sub", "a", "--private-key", "/nonexistent.pem"],
            "roomcast: error: cannot read key file '/nonexistent.pem': No such file or directory",
        ),
        (
            ["--claim", "novalue", "--secret", SECRET],
            "roomcast: error: argument --claim: expected NAME=VALUE, got 'novalue'",
        ),
    ]:
        out = token_cli(*args, env={"ROOMCAST_JWT_SECRET": ""})
        assert out.returncode == 2, args
        assert out.stderr.strip() == expected
        assert out.stdout == ""
    assert mint("--sub", "a", "--secret", "short", "--allow-short-secret")


# -- serve's --jwt-* flags -----------------------------------------------------------------------


def test_short_empty_and_conflicting_secrets_are_refused_at_start():
    code, line = one_line_error("serve", "--jwt-secret", "tooshort")
    assert code == 2
    assert line == (
        "roomcast: error: --jwt-secret: jwt secret too short: 8 bytes "
        "(at least 32; allow_short_secret to accept it)"
    )
    code, line = one_line_error("serve", env={"ROOMCAST_JWT_SECRET": ""})
    assert (code, line) == (2, "roomcast: error: --jwt-secret: jwt secret must not be empty")
    code, line = one_line_error("serve", "--jwt-secret", SECRET, "--jwks-url", "http://x/j")
    assert (code, line) == (2, "roomcast: error: give one of --jwt-secret, --jwks-url, not several")
    code, line = one_line_error("serve", "--jwt-public-key", "/nonexistent.pem")
    assert code == 2 and line.startswith("roomcast: error: --jwt-public-key: cannot read key file")


def test_jwt_secret_file_gives_the_secret_and_its_errors_are_one_line(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")  # as `echo` or an editor leaves it
    proc = roomcast("serve", "--port", "0", "--jwt-secret-file", str(secret_file))
    try:
        port, lines = wait_listening(proc)
        assert not any("demo token" in line for line in lines)
        logs_in(port, mint("--sub", "alice", "--secret", SECRET), "alice")
        refused(port, mint("--sub", "eve", "--secret", SECRET + "\n"))
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()
    missing = str(tmp_path / "missing")
    code, line = one_line_error("serve", env={"ROOMCAST_JWT_SECRET_FILE": missing})
    assert (code, line) == (
        2,
        f"roomcast: error: --jwt-secret-file: cannot read {missing!r}: No such file or directory",
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, line = one_line_error("serve", "--jwt-secret-file", str(empty))
    assert (code, line) == (2, f"roomcast: error: --jwt-secret-file: {str(empty)!r} is empty")
    short = tmp_path / "short"
    short.write_text("tooshort")
    code, line = one_line_error("serve", "--jwt-secret-file", str(short))
    assert line == (
        "roomcast: error: --jwt-secret-file: jwt secret too short: 8 bytes "
        "(at least 32; allow_short_secret to accept it)"
    )
    code, line = one_line_error(
        "serve", "--jwt-secret-file", str(secret_file), env={"ROOMCAST_JWT_SECRET": SECRET}
    )
    assert line == "roomcast: error: give one of --jwt-secret, --jwt-secret-file, not several"


def test_a_jwks_url_over_plain_http_needs_jwks_allow_http():
    code, line = one_line_error("serve", "--jwks-url", "http://127.0.0.1:9/jwks.json")
    assert (code, line) == (
        2,
        "roomcast: error: --jwks-url: plain http:// refused: 'http://127.0.0.1:9/jwks.json' "
        "(anyone on the way could hand out their own keys; use https://, or --jwks-allow-http)",
    )
    # Allowed, it starts; the set is fetched at the first login (here, from nowhere).
    proc = roomcast("serve", "--port", "0", "--jwks-url", "http://127.0.0.1:9/jwks.json",
                    "--jwks-allow-http")  # fmt: skip
    try:
        port, _ = wait_listening(proc)
        refused(port, hs256_by_hand({"sub": "x"}, SECRET, kid="k"))
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_jwt_require_exp_refuses_tokens_without_exp():
    proc = roomcast("serve", "--port", "0", "--jwt-secret", SECRET, "--jwt-require-exp")
    try:
        port, _ = wait_listening(proc)
        logs_in(port, mint("--sub", "alice", "--secret", SECRET, "--exp-s", "60"), "alice")
        refused(port, mint("--sub", "bob", "--secret", SECRET, "--exp-s", "0"))
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_logins_during_a_provider_outage_share_one_wait_then_are_refused_at_once(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    private, _ = write_keys(tmp_path, key)
    jwks = JwksServer([jwk(key, "key-1", "ES256")])
    jwks.hold.clear()  # up, but answers nothing: a provider in trouble
    env = {"ROOMCAST_JWKS_URL": jwks.url, "ROOMCAST_JWKS_ALLOW_HTTP": "1"}
    proc = roomcast("serve", "--port", "0", env=env)
    try:
        port, _ = wait_listening(proc)
        token = mint("--private-key", str(private), "--kid", "key-1", "--sub", "ann")

        async def login() -> tuple[int | None, list[dict]]:
            ws = await open_client(f"ws://127.0.0.1:{port}/ws")
            await send(ws, {"event": "authenticate", "data": {"type": "Bearer", "token": token}})
            code, _, received = await closed_with(ws, timeout=30)
            return code, received

        async def wave() -> None:
            for code, received in await asyncio.gather(*(login() for _ in range(10))):
                assert code == 4003
                assert received == [
                    {"event": "error", "data": {"message": "Authentication failed"}}
                ]

        run(wave(), timeout=60)
        assert jwks.requests == 1  # ten logins, one attempt
        run(wave(), timeout=60)
        assert jwks.requests == 1  # within the interval after it failed: no new attempt
        assert stop(proc) == 0
    finally:
        jwks.stop()
        proc.kill()
        proc.communicate()


def test_a_short_secret_is_accepted_with_jwt_allow_short_secret():
    proc = roomcast("serve", "--port", "0", "--jwt-secret", "short", "--jwt-allow-short-secret")
    try:
        port, _ = wait_listening(proc)
        logs_in(port, hs256_by_hand({"sub": "s"}, "short"), "s")
        assert stop(proc) == 0
        assert "Warning" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()


def test_jwt_flags_map_onto_the_config_and_read_the_environment():
    from roomcast.cli import build_parser, config_from_args

    args = build_parser().parse_args(["serve", "--jwt-leeway-ms", "1500", "--jwt-issuer", "i"])
    env = {
        "ROOMCAST_JWT_AUDIENCE": "aud",
        "ROOMCAST_JWT_ISSUER": "env-issuer",
        "ROOMCAST_JWT_USER_CLAIM": "email",
        "ROOMCAST_JWT_ALLOW_SHORT_SECRET": "yes",
        "ROOMCAST_JWT_PUBLIC_KEY": "/k.pem",
        "ROOMCAST_JWKS_URL": "https://id/jwks",
    }
    config = config_from_args(args, env)
    assert config.jwt_leeway == 1.5
    assert config.jwt_issuer == "i"  # the flag wins
    assert config.jwt_audience == "aud" and config.jwt_user_claim == "email"
    assert config.jwt_allow_short_secret is True
    assert (config.jwt_public_key, config.jwks_url) == ("/k.pem", "https://id/jwks")


def test_the_demo_token_carries_the_configured_audience_and_issuer():
    proc = roomcast("serve", "--port", "0", "--jwt-audience", "chat", "--jwt-issuer", "me")
    try:
        port, lines = wait_listening(proc)
        [token] = [line.rsplit(" ", 1)[1] for line in lines if "demo token" in line]
        logs_in(port, token, "demo")
        assert stop(proc) == 0
    finally:
        proc.kill()
        proc.communicate()


# -- first-run manners ----------------------------------------------------------------------------


def test_version_and_bare_usage():
    from roomcast import __version__

    out = subprocess.run(
        [sys.executable, "-m", "roomcast", "--version"], capture_output=True, text=True
    )
    assert (out.returncode, out.stdout.strip()) == (0, f"roomcast {__version__}")
    bare = subprocess.run([sys.executable, "-m", "roomcast"], capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stdout == ""
    usage, error = bare.stderr.strip().splitlines()
    assert usage.startswith("usage: roomcast [-h] [--version] {serve,emit,token}")
    assert error == "roomcast: error: a command is required: serve, emit or token"


def test_serve_says_it_is_connecting_to_redis_while_it_waits():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    proc = roomcast(
        "serve", "--redis-url", f"redis://127.0.0.1:{port}", "--redis-timeout-ms", "500"
    )
    out, err = proc.communicate(timeout=STARTUP_TIMEOUT)
    assert f"roomcast: connecting to redis at 127.0.0.1:{port}..." in out.splitlines()
    assert proc.returncode == 1
    assert err.strip().startswith(f"roomcast: error: cannot reach redis at 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("rooms", "error"),
    [
        ("lobby,ws:internal", "room names may not start with 'ws:': 'ws:internal'"),
        ("a,,b", "empty room name in 'a,,b'"),
        ("a, ", "empty room name in 'a, '"),
        ("x" * 257, "room name longer than 256 characters: 'xxxxxxxxxxxxxxxxxxxx'..."),
    ],
)
def test_default_rooms_a_client_could_not_join_are_refused_at_start(rooms, error):
    code, line = one_line_error("serve", "--default-rooms", rooms)
    assert (code, line) == (2, f"roomcast: error: argument --default-rooms: {error}")
    code, line = one_line_error("serve", env={"ROOMCAST_DEFAULT_ROOMS": rooms})
    assert (code, line) == (2, f"roomcast: error: ROOMCAST_DEFAULT_ROOMS: {error}")


def test_the_example_relay_app_relays_between_two_clients():
    flags = ["--jwt-secret", SECRET, "--app", "examples.relay_app:app", "--allow-rooms", "room-*"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port, _ = wait_listening(proc)
        url = f"ws://127.0.0.1:{port}/ws"
        tokens = {user: mint("--sub", user, "--secret", SECRET) for user in ("ann", "bob")}

        async def body():
            ann, _ = await authed(url, tokens["ann"])
            bob, _ = await authed(url, tokens["bob"])

            def said(text: str, sender: str) -> dict:
                return {"event": "chat", "data": {"room": "room-1", "text": text, "from": sender}}

            # Each joins and hears itself: the join is done before anyone relies on it.
            await send(ann, {"event": "join", "data": {"rooms": ["room-1"]}})
            await send(ann, {"event": "chat", "data": {"room": "room-1", "text": "a"}})
            assert await recv(ann) == said("a", "ann")
            await send(bob, {"event": "join", "data": {"rooms": ["room-1"]}})
            await send(bob, {"event": "chat", "data": {"room": "room-1", "text": "b"}})
            assert await recv(bob) == said("b", "bob")
            assert await recv(ann) == said("b", "bob")
            # Relayed to everyone in the room, the sender too, with who sent it.
            await send(ann, {"event": "chat", "data": {"room": "room-1", "text": "hi bob"}})
            assert await recv(bob) == said("hi bob", "ann")
            assert await recv(ann) == said("hi bob", "ann")
            # Not to a room the sender is not in, nor from one it may not join.
            await send(bob, {"event": "join", "data": {"rooms": ["secret"]}})
            await send(bob, {"event": "chat", "data": {"room": "secret", "text": "x"}})
            await send(bob, {"event": "chat", "data": {"room": "room-1", "text": "hi ann"}})
            assert (await recv(ann))["data"] == {"room": "room-1", "text": "hi ann", "from": "bob"}
            await ann.close()
            await bob.close()

        run(body())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=STARTUP_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.communicate()
