"""permessage-deflate negotiation (RFC 7692 §7.1) as a pure function: no sockets."""

from __future__ import annotations

import pytest
from roomcast.transport.deflate import Agreement, negotiate, parse

BASE = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def test_plain_offer_gets_both_no_context_takeover_parameters() -> None:
    assert negotiate(["permessage-deflate"]) == Agreement(15, BASE)


def test_what_browsers_offer_is_accepted() -> None:
    assert negotiate(["permessage-deflate; client_max_window_bits"]) == Agreement(15, BASE)


def test_what_the_websockets_client_offers_is_accepted() -> None:
    offer = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    assert negotiate([offer]) == Agreement(12, BASE + "; server_max_window_bits=12")


@pytest.mark.parametrize("bits", range(8, 16))
def test_server_window_is_answered_with_the_same_value(bits: int) -> None:
    agreement = negotiate([f"permessage-deflate; server_max_window_bits={bits}"])
    assert agreement == Agreement(bits, f"{BASE}; server_max_window_bits={bits}")


def test_no_context_takeover_offers_are_accepted() -> None:
    offer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert negotiate([offer]) == Agreement(15, BASE)


def test_quoted_value_is_a_token_once_unquoted() -> None:
    offer = 'permessage-deflate; server_max_window_bits="10"'
    assert negotiate([offer]) == Agreement(10, BASE + "; server_max_window_bits=10")


def test_names_are_case_insensitive_and_whitespace_is_allowed() -> None:
    offer = "Permessage-Deflate ;  Server_Max_Window_Bits = 9 "
    assert negotiate([offer]) == Agreement(9, BASE + "; server_max_window_bits=9")


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits",  # a value is required
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",  # no leading zeros
        "permessage-deflate; server_max_window_bits=x",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; client_max_window_bits; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        'permessage-deflate; server_max_window_bits="1 0"',
        'permessage-deflate; server_max_window_bits="10',
        "permessage-deflate; =10",
        "permessage-deflate; server max_window_bits=10",
    ],
)
def test_offer_the_rfc_says_to_decline_is_declined(offer: str) -> None:
    assert negotiate([offer]) is None


def test_declined_offer_falls_back_to_the_next_one() -> None:
    lines = [
        "permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits"
    ]
    assert negotiate(lines) == Agreement(15, BASE)


def test_first_acceptable_offer_wins() -> None:
    lines = [
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=12",
    ]
    assert negotiate(lines) == Agreement(10, BASE + "; server_max_window_bits=10")


def test_other_extensions_are_ignored() -> None:
    assert negotiate(["x-webkit-deflate-frame"]) is None
    assert negotiate(["foo; bar=1, permessage-deflate"]) == Agreement(15, BASE)


def test_no_header_means_no_extension() -> None:
    assert negotiate([]) is None
    assert negotiate([""]) is None
    assert negotiate([" , ,"]) is None


def test_garbled_element_declines_only_itself() -> None:
    assert negotiate(["@@@, permessage-deflate"]) == Agreement(15, BASE)
    assert negotiate(['permessage-deflate; x="unterminated']) is None
    assert negotiate(['foo; a="unterminated', "permessage-deflate"]) == Agreement(15, BASE)


def test_comma_inside_a_quoted_value_does_not_split() -> None:
    assert parse(['foo; a="b,c", permessage-deflate']) == [
        None,  # "b,c" is not a token once unquoted
        ("permessage-deflate", []),
    ]
    assert parse(['foo; a="b\\c"']) == [("foo", [("a", "bc")])]
