"""The session state machine, without sockets or an event loop (pure logic: plain calls in,
actions out)."""

from __future__ import annotations

import pytest
from roomcast import WebSocketClientStates
from roomcast.protocol.session import Action, Session, SessionMachine, State, Verdict, refused
from roomcast.transport.connection import Client


def authenticated(user: str | None = "u1") -> Session:
    session = Session("c1")
    assert session.receive("authenticate") is Action.AUTHENTICATE
    result = {} if user is None else {"user_id": user}
    assert session.authenticated(result) is Verdict.ACCEPT
    assert session.logged_in()
    return session


def test_states_are_the_public_strings():
    assert [s.value for s in State] == [
        WebSocketClientStates.UNAUTHORIZED,
        WebSocketClientStates.AUTHENTICATING,
        WebSocketClientStates.AUTHENTICATED,
        WebSocketClientStates.DISCONNECTED,
    ]
    assert Session("c").state == "unauthorized"


def test_before_authentication_only_authenticate_and_heartbeat_are_taken():
    session = Session("c1")
    assert session.receive("heartbeat") is Action.IGNORE
    for event in ("join", "leave", "custom", "encrypted", "connected"):
        assert session.receive(event) is Action.NOT_AUTHENTICATED
    assert session.state is State.UNAUTHORIZED


def test_authenticate_moves_to_authenticating_at_once():
    session = Session("c1")
    assert session.receive("authenticate") is Action.AUTHENTICATE
    assert session.state is State.AUTHENTICATING
    # A second one in the same read already sees it.
    assert session.receive("authenticate") is Action.ALREADY_AUTHENTICATED
    assert session.receive("chat") is Action.NOT_AUTHENTICATED


def test_events_without_a_string_name_are_dropped_in_any_state():
    for session in (Session("c1"), authenticated()):
        for event in (None, "", 5, ["x"]):
            assert session.receive(event) is Action.DROP_NO_EVENT


def test_authenticated_sessions_route_each_event():
    session = authenticated()
    assert session.receive("join") is Action.JOIN
    assert session.receive("leave") is Action.LEAVE
    assert session.receive("custom") is Action.HANDLE
    assert session.receive("authenticate") is Action.ALREADY_AUTHENTICATED
    for event in ("connected", "error", "disconnect"):
        assert session.receive(event) is Action.DROP_SERVER_EVENT
    assert session.receive("encrypted") is Action.OPEN_ENCRYPTED
    assert session.receive("encrypted", sealed=True) is Action.DROP_NESTED


@pytest.mark.parametrize("result", [None, False, 0, "", []])
def test_falsy_results_refuse(result):
    assert refused(result)
    session = Session("c1")
    session.receive("authenticate")
    assert session.authenticated(result) is Verdict.REFUSE
    assert session.user_id is None


def test_any_mapping_accepts_and_gives_user_and_metadata():
    assert not refused({})
    session = Session("c1")
    session.receive("authenticate")
    assert session.authenticated({"userId": 7, "metadata": {"role": "x"}}) is Verdict.ACCEPT
    assert (session.user_id, session.metadata) == ("7", {"role": "x"})
    assert session.state is State.AUTHENTICATING  # until the login completes
    assert session.logged_in()
    assert session.state is State.AUTHENTICATED


def test_truthy_non_mapping_accepts_without_a_user():
    session = Session("c1")
    session.receive("authenticate")
    assert session.authenticated(True) is Verdict.ACCEPT
    assert session.user_id is None and session.metadata is None


def test_outcomes_after_the_client_left_or_began_closing_are_gone():
    session = Session("c1")
    session.receive("authenticate")
    session.closing = True
    assert session.authenticated({"user_id": "u"}) is Verdict.GONE
    assert session.handshaken({}) is Verdict.GONE
    assert not session.logged_in()
    other = Session("c2")
    other.receive("authenticate")
    assert other.disconnected() is False  # never logged in: no client_disconnected_fn
    assert other.authenticated({}) is Verdict.GONE
    assert other.disconnected() is None  # already gone


def test_handshake_is_wanted_when_required_or_offered():
    session = Session("c1")
    assert session.wants_handshake(True, False, {})
    assert session.wants_handshake(False, True, {"publicKey": "k"})
    assert not session.wants_handshake(False, True, {})
    assert not session.wants_handshake(False, False, {"publicKey": "k"})


def test_handshake_outcome_and_connected_data():
    session = Session("c1")
    session.receive("authenticate")
    session.authenticated({"user_id": "u"})
    assert session.handshaken(None) is Verdict.REFUSE
    assert session.handshaken("yes") is Verdict.REFUSE  # not a mapping
    assert session.handshaken({"serverPublicKey": "pk", "salt": "s"}) is Verdict.ACCEPT
    session.encrypted = True
    assert session.logged_in()
    assert session.connected_data("T") == {
        "id": "c1",
        "userId": "u",
        "time": "T",
        "serverPublicKey": "pk",
        "salt": "s",
    }
    # Key material goes only to encrypted sessions; no userId without a user.
    plain = authenticated(None)
    assert plain.connected_data("T") == {"id": "c1", "time": "T"}


def test_errors_are_sealed_only_once_an_encrypted_client_is_connected():
    session = Session("c1")
    session.receive("authenticate")
    session.encrypted = True
    assert not session.seals_errors()  # the client has no key yet
    session.authenticated({})
    session.logged_in()
    assert session.seals_errors()


def test_disconnect_reports_whether_the_session_had_logged_in():
    session = authenticated()
    assert session.live
    assert session.disconnected() is True
    assert session.state is State.DISCONNECTED and not session.live
    assert session.disconnected() is None


def test_a_client_is_a_session():
    assert issubclass(Client, SessionMachine)


def test_the_public_state_names_are_the_members():
    session = authenticated()
    assert session.state is WebSocketClientStates.AUTHENTICATED
    assert WebSocketClientStates.is_valid("authenticating")
    assert not WebSocketClientStates.is_valid("gone")
