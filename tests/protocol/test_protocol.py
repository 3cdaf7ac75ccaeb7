"""The pure protocol pieces, without sockets."""

from __future__ import annotations

import orjson
import pytest
from roomcast.protocol.messages import (
    MISSING,
    InvalidMessage,
    InvalidText,
    decode,
    decode_envelope,
    encode,
    encode_envelope,
    iso_now,
    requested_rooms,
    sanitize_rooms,
)


def test_decode_accepts_objects_only():
    assert decode(b'{"event":"x"}', True) == {"event": "x"}
    for raw in (b"null", b"1", b"[]", b'"s"', b"{bad"):
        with pytest.raises(InvalidMessage):
            decode(raw, True)


def test_decode_tells_invalid_utf8_text_from_bad_json():
    with pytest.raises(InvalidText):
        decode(b'{"event":"\xc3\x28"}', True)
    with pytest.raises(InvalidMessage):
        decode(b'{"event":"\xc3\x28"}', False)  # binary: just an invalid message


def test_encode_omits_absent_data_and_keeps_null():
    assert encode("e") == b'{"event":"e"}'
    assert encode("e", None) == b'{"event":"e","data":null}'
    assert encode("e", {"a": [1]}) == b'{"event":"e","data":{"a":[1]}}'


def test_iso_now_looks_like_javascript_to_iso_string():
    text = iso_now()
    assert len(text) == 24 and text.endswith("Z") and text[19] == "."


def test_sanitize_rooms_filters_and_dedupes_in_order():
    assert sanitize_rooms(["b", "", "ws:x", "a", "b", 3, None, "x" * 257, "y" * 256]) == [
        "b",
        "a",
        "y" * 256,
    ]


def test_requested_rooms_ignores_malformed_payloads():
    for data in (None, 5, "s", [], {"rooms": "a"}, {"rooms": None}, {}):
        assert requested_rooms(data) == []
    assert requested_rooms({"rooms": ["a", 1]}) == ["a", 1]


def test_envelope_round_trip_uses_the_original_field_names():
    raw = encode_envelope("srv", "room", "e", {"x": 1}, "lobby", ["c1"])
    assert orjson.loads(raw) == {
        "serverId": "srv",
        "type": "room",
        "target": "lobby",
        "event": "e",
        "data": {"x": 1},
        "exclude": ["c1"],
    }
    env = decode_envelope(raw)
    assert (env.server_id, env.type, env.target, env.event, env.data, env.exclude) == (
        "srv",
        "room",
        "lobby",
        "e",
        {"x": 1},
        ["c1"],
    )
    assert orjson.loads(encode_envelope("s", "broadcast", "e", MISSING)) == {
        "serverId": "s",
        "type": "broadcast",
        "event": "e",
    }


@pytest.mark.parametrize(
    "raw",
    [b"nope", b"[]", b"null", b'{"event":"e"}', b'{"serverId":1,"event":"e"}', b'{"serverId":"s"}'],
)
def test_malformed_envelopes_are_rejected(raw):
    assert decode_envelope(raw) is None
