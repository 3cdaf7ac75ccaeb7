"""One configuration: ServerConfig, read by the helper, the component and the CLI."""

from __future__ import annotations

import dataclasses

import pytest
from roomcast import WebSocketServerHelper
from roomcast.cli import ServeConfig, build_parser, config_from_args
from roomcast.cli.flags import _SERVE_FLAGS
from roomcast.config import (
    ALIASES,
    COMPONENT_SETTINGS,
    OPTION_ALIASES,
    OPTION_DEFAULTS,
    ServerConfig,
)

# ServerConfig fields (or options) the CLI sets, by ServeConfig attribute.
CLI_SETTINGS = (
    "path",
    "default_rooms",
    "auth_timeout",
    "heartbeat_interval",
    "heartbeat_timeout",
    "require_encryption",
    "subscribe_timeout",
)
CLI_OPTIONS = ("max_payload_length", "backlog")


def test_every_cli_setting_has_a_flag_and_the_helpers_default():
    dests = {flag.lstrip("-").replace("-", "_").removesuffix("_ms") for flag, *_ in _SERVE_FLAGS}
    defaults = ServerConfig()
    serve = ServeConfig()
    for name in CLI_SETTINGS:
        assert name in dests, name
        value = getattr(serve, name)
        assert (tuple(value) if name == "default_rooms" else value) == getattr(defaults, name)
    for name in CLI_OPTIONS:
        assert name in dests, name
        assert getattr(serve, name) == defaults.options[name] == OPTION_DEFAULTS[name]
    # With no flag at all, the CLI builds the helper's defaults (under its own name).
    assert serve.server_config() == defaults.replace(identifier="roomcast")


def test_flags_reach_the_config_the_helper_reads():
    args = build_parser().parse_args(
        ["serve", "--auth-timeout-ms", "1500", "--max-payload-length", "999", "--backlog", "7"]
    )
    config = config_from_args(args, {}).server_config()
    assert config.auth_timeout == 1.5
    assert (config.options["max_payload_length"], config.options["backlog"]) == (999, 7)
    helper = WebSocketServerHelper(
        config.identifier, config.path, "memory://", lambda data: {}, config=config
    )
    assert helper.config is config
    assert helper.auth_timeout == 1.5 and helper.server_options["max_payload_length"] == 999


def test_one_alias_table_for_settings_and_options():
    assert set(OPTION_ALIASES.items()) <= set(ALIASES.items())
    for alias, name in ALIASES.items():
        assert alias != name and "_" not in alias
        assert name in {f.name for f in dataclasses.fields(ServerConfig)} | set(OPTION_DEFAULTS) | {
            "server_options"
        }
    config = ServerConfig.from_settings(
        {"authTimeout": 2, "serverOptions": {"maxPayloadLength": 10}}, COMPONENT_SETTINGS
    )
    assert config.auth_timeout == 2.0 and config.options["max_payload_length"] == 10
    with pytest.raises(KeyError, match="subscribeTimeout"):
        ServerConfig.from_settings({"subscribeTimeout": 1}, COMPONENT_SETTINGS)


def test_the_keyword_settings_build_the_same_config():
    helper = WebSocketServerHelper(
        "h", "/p", "memory://", lambda data: {}, auth_timeout=3, server_options={"idleTimeout": 9}
    )
    assert helper.config == ServerConfig(
        identifier="h", path="/p", auth_timeout=3.0, options={"idle_timeout": 9}
    )


def test_config_is_frozen_and_checked():
    config = ServerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.auth_timeout = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="must be positive"):
        ServerConfig(auth_timeout=0)
    with pytest.raises(ValueError, match="unknown server option: nope"):
        ServerConfig(options={"nope": 1})
    with pytest.raises(ValueError, match="invalid default room"):
        ServerConfig(default_rooms=("ws:x",))


def test_the_limit_flags_and_their_environment_variables_reach_the_options():
    argv = [
        "serve",
        "--max-rooms-per-client",
        "7",
        "--max-fragments",
        "9",
        "--validate-room-timeout-ms",
        "250",
        "--rate-limit-messages",
        "20",
        "--public-client-rooms",
    ]
    environ = {"ROOMCAST_RATE_LIMIT_BYTES": "5000", "ROOMCAST_PRESENCE_LIMIT": "50"}
    options = config_from_args(build_parser().parse_args(argv), environ).server_config().options
    assert (options["max_rooms_per_client"], options["max_fragments"]) == (7, 9)
    assert options["validate_room_timeout"] == 0.25
    assert (options["rate_limit_messages"], options["rate_limit_bytes"]) == (20.0, 5000.0)
    assert options["presence_limit"] == 50 and options["private_client_rooms"] is False
    defaults = ServeConfig().server_config().options
    assert defaults["rate_limit_messages"] is None and defaults["private_client_rooms"] is True


def test_the_limit_options_take_camel_case_aliases_and_refuse_bad_values():
    config = ServerConfig(options={"maxRoomsPerClient": 3, "rateLimitMessages": 10})
    assert config.options["max_rooms_per_client"] == 3
    assert config.options["rate_limit_messages"] == 10.0
    for bad in (
        {"max_rooms_per_client": 0},
        {"max_fragments": 1.5},
        {"rate_limit_bytes": -1},
        {"validate_room_timeout": "soon"},
        {"private_client_rooms": "yes"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerConfig(options=bad)
