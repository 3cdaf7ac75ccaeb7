"""The server API's request checks (`roomcast.serving.commands`) and the disconnect envelope,
as pure functions: what each body becomes, and the message for each bad one."""

from __future__ import annotations

import orjson
import pytest
from roomcast.protocol.constants import API_SERVER_ID, DISCONNECT_TYPE
from roomcast.protocol.messages import MISSING, decode_envelope, disconnect_of
from roomcast.serving.commands import (
    BATCH_LIMIT,
    Disconnect,
    Publish,
    parse_batch,
    parse_broadcast,
    parse_disconnect,
    parse_history,
    parse_publish,
    parse_room,
)
from roomcast.transport.httpapi import ApiError


def test_publish_bodies_become_envelopes_the_original_reads():
    room = parse_publish({"room": "lobby", "event": "e", "data": {"a": 1}, "exclude": ["c1"]})
    assert room == Publish("room", "lobby", "e", {"a": 1}, ["c1"])
    assert room.channel == "ws:room:lobby"
    assert orjson.loads(room.envelope()) == {
        "serverId": API_SERVER_ID,
        "type": "room",
        "target": "lobby",
        "event": "e",
        "data": {"a": 1},
        "exclude": ["c1"],
    }
    user = parse_publish({"user": "u", "event": "e"})
    assert user.data is MISSING and user.channel == "ws:user:u"
    assert "data" not in orjson.loads(user.envelope())
    assert parse_publish({"client": "c", "event": "e", "data": None}).data is None
    everyone = parse_broadcast({"event": "e", "exclude": []})
    assert everyone.channel == "ws:broadcast" and everyone.exclude is None


def test_batch_keeps_the_order_and_names_the_bad_command():
    commands = parse_batch(
        {"commands": [{"broadcast": {"event": "a"}}, {"publish": {"user": "u", "event": "b"}}]}
    )
    assert [c.event for c in commands] == ["a", "b"]
    with pytest.raises(ApiError, match=r"commands\[1\]\.publish: unknown field: x"):
        parse_batch({"commands": [{"broadcast": {"event": "a"}}, {"publish": {"x": 1}}]})
    with pytest.raises(ApiError, match=r"commands\[0\] must be an object with one key"):
        parse_batch({"commands": [{"publish": {}, "broadcast": {}}]})
    with pytest.raises(ApiError, match="too many commands"):
        parse_batch({"commands": [{"broadcast": {"event": "a"}}] * (BATCH_LIMIT + 1)})
    assert parse_batch({"commands": []}) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"client": "c", "code": 999}, "code must be 1000 or 3000-4999, got 999"),
        ({"client": "c", "code": 5000}, "code must be 1000 or 3000-4999, got 5000"),
        ({"client": "c", "code": True}, "code must be 1000 or 3000-4999, got True"),
        ({"client": "c", "reason": 5}, "reason must be a string"),
        ({"client": "c", "reason": "é" * 62}, "reason longer than 123 bytes"),
        ({"client": "c", "user": "u"}, "give exactly one of client or user"),
        ({"client": ""}, "client must be a non-empty string"),
    ],
)
def test_bad_disconnects_say_what_is_wrong(body, message):
    with pytest.raises(ApiError) as caught:
        parse_disconnect(body)
    assert (caught.value.status, caught.value.message) == (400, message)


def test_a_disconnect_envelope_round_trips_and_malformed_ones_are_refused():
    order = parse_disconnect({"user": "u", "code": 4000, "reason": "bye"})
    assert order == Disconnect("user", "u", 4000, "bye")
    envelope = decode_envelope(order.envelope())
    assert envelope is not None and envelope.type == DISCONNECT_TYPE
    assert envelope.target == "u" and envelope.server_id == API_SERVER_ID
    assert disconnect_of(envelope.data) == ("user", 4000, "bye")
    assert order.channel == "ws:user:u"
    assert parse_disconnect({"client": "c"}) == Disconnect("client", "c", 1000, "")
    for data in (None, [], {"scope": "room", "code": 1000, "reason": ""},
                 {"scope": "client", "code": 1001, "reason": ""},
                 {"scope": "client", "code": 4000, "reason": "x" * 124},
                 {"scope": "client", "code": "4000", "reason": ""}):  # fmt: skip
        assert disconnect_of(data) is None, data


def test_history_and_presence_bodies():
    assert parse_history({"room": "h"}) == ("h", None, None)
    assert parse_history({"room": "h", "since": {"epoch": "e", "offset": 3}, "limit": 2}) == (
        "h",
        ("e", 3),
        2,
    )
    with pytest.raises(ApiError, match="since: unknown field: x"):
        parse_history({"room": "h", "since": {"epoch": "e", "offset": 1, "x": 0}})
    with pytest.raises(ApiError, match=r"since\.epoch must be a string"):
        parse_history({"room": "h", "since": {"offset": 1}})
    with pytest.raises(ApiError, match=r"since\.offset must be a whole number >= 0"):
        parse_history({"room": "h", "since": {"epoch": "e", "offset": True}})
    assert parse_room({"room": "p"}) == "p"
    with pytest.raises(ApiError, match="missing field: room"):
        parse_room({})


def test_the_readme_examples_are_requests_the_description_accepts():
    import json
    import re
    from pathlib import Path

    from api_support import SPEC, request_valid

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("\n## Server HTTP API\n") :]
    section = section[: section.index("\n## ", 1)]
    examples = re.findall(
        r"curl -H \"\$KEY\"(?: -d '(.*?)')? http://127\.0\.0\.1:8080(\S+)", section
    )
    assert {path for _, path in examples} == set(SPEC["paths"])  # every endpoint shown
    for body, path in examples:
        if body:
            assert request_valid(path, json.loads(body)), (path, body)
        else:
            assert "get" in SPEC["paths"][path], path


def test_the_key_flags_refuse_two_sources_an_empty_key_or_an_unreadable_file(tmp_path):
    import os

    from process_support import one_line_error

    (tmp_path / "key").write_text("secret-key\n")
    (tmp_path / "empty").write_text(" \n")
    env = {k: v for k, v in os.environ.items() if k != "ROOMCAST_API_KEY"}
    cases = [
        (["--api-key", "a", "--api-key-file", str(tmp_path / "key")],
         "roomcast: error: give --api-key or --api-key-file (or ROOMCAST_API_KEY), not both"),
        (["--api-key-file", str(tmp_path / "empty")], "roomcast: error: the API key is empty"),
        (["--api-key", ""], "roomcast: error: the API key is empty"),
        (["--api-key-file", str(tmp_path / "missing")],
         f"roomcast: error: --api-key-file: cannot read {tmp_path / 'missing'}: "),
        (["--api-body-limit", "0"],
         "roomcast: error: argument --api-body-limit: must be positive: 0"),
    ]  # fmt: skip
    for args, message in cases:
        code, line = one_line_error("serve", "--port", "0", *args, env=env)
        assert code == 2 and line.startswith(message), (args, line)
    code, line = one_line_error(
        "serve", "--api-key-file", str(tmp_path / "key"), env={**env, "ROOMCAST_API_KEY": "b"}
    )
    assert code == 2 and "not both" in line
