"""config.toml documents every setting with its default; overrides and bad values behave as config.py says."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from scoreboard.config import SECTIONS, ActionRule, BoardConfig, Config, from_dict, load
from scoreboard.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "config.toml"
DOCUMENTED = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))

SETTINGS = [(section, f) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _same(value, default) -> bool:
    """Equal and of the same TOML type (5 is not 5.0, 1 is not true)."""
    return type(value) is type(default) and value == default


# ---- the shipped config.toml --------------------------------------------------------------------


@pytest.mark.parametrize(("section", "setting"), SETTINGS, ids=[f"{s}.{f.name}" for s, f in SETTINGS])
def test_every_setting_is_in_config_toml_with_its_default(section, setting):
    documented = DOCUMENTED.get(section, {})

    assert setting.name in documented, f"{section}.{setting.name} is not documented in config.toml"
    assert _same(documented[setting.name], setting.default), (
        f"{section}.{setting.name}: config.toml says {documented[setting.name]!r}, the default is {setting.default!r}")


def test_config_toml_has_no_setting_the_server_does_not_know():
    known = {section: {f.name for f in dataclasses.fields(cls)} for section, cls in SECTIONS.items()}
    extra = [f"{section}.{key}" for section, values in DOCUMENTED.items() if section in known
             for key in values if key not in known[section]]

    assert extra == []
    assert set(DOCUMENTED) <= set(SECTIONS) | {"boards", "actions"}


def _named_defaults(cls: type) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "name"}


def test_the_global_board_in_config_toml_has_the_board_defaults():
    board = DOCUMENTED["boards"]["global"]

    assert set(board) == set(_named_defaults(BoardConfig))
    assert all(_same(board[key], default) for key, default in _named_defaults(BoardConfig).items()), board


def test_the_level_complete_rule_in_config_toml_has_the_rule_defaults():
    rule = DOCUMENTED["actions"]["level_complete"]

    assert set(rule) == set(_named_defaults(ActionRule))
    assert all(_same(rule[key], default) for key, default in _named_defaults(ActionRule).items()), rule


def test_config_toml_documents_exactly_the_built_in_boards_and_actions():
    assert tuple(DOCUMENTED["boards"]) == tuple(board.name for board in Config.boards)
    assert tuple(DOCUMENTED["actions"]) == tuple(rule.name for rule in Config.actions)


def test_loading_config_toml_gives_the_same_config_as_no_file_at_all():
    assert load(SHIPPED, env={}) == load(None, env={}) == Config()


# ---- environment overrides ----------------------------------------------------------------------


def test_an_environment_variable_overrides_a_default():
    config = load(None, env={"SCOREBOARD_AUTH_ACCESS_TTL_S": "60"})

    assert config.auth.access_ttl_s == 60


def test_an_environment_variable_overrides_the_file():
    config = load(SHIPPED, env={"SCOREBOARD_AUTH_ACCESS_TTL_S": "60"})

    assert config.auth.access_ttl_s == 60


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("0", False), ("off", False), ("YES", True)])
def test_a_boolean_environment_variable_accepts_the_usual_spellings(text, expected):
    config = load(None, env={"SCOREBOARD_AUTH_OPEN_REGISTRATION": text})

    assert config.auth.open_registration is expected


def test_an_unrelated_environment_variable_is_ignored():
    assert load(None, env={"SCOREBOARD_NOT_A_SETTING": "1", "HOME": "/tmp"}) == Config()


# ---- bad values name their key ------------------------------------------------------------------


def _error(raw: dict, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        from_dict(raw, env or {})
    return caught.value


def test_an_unknown_setting_is_an_error_naming_it():
    error = _error({"auth": {"acess_ttl_s": 60}})

    assert error.key == "auth.acess_ttl_s"
    assert "auth.acess_ttl_s" in str(error)


def test_an_unknown_section_is_an_error_naming_it():
    error = _error({"serevr": {"port": 1}})

    assert error.key == "serevr"
    assert "serevr" in str(error)


def test_a_setting_of_the_wrong_type_is_an_error_naming_it():
    error = _error({"server": {"port": "x"}})

    assert error.key == "server.port"
    assert "server.port" in str(error)


def test_a_boolean_is_not_accepted_as_a_number():
    assert _error({"server": {"max_body_bytes": True}}).key == "server.max_body_bytes"


def test_an_environment_variable_of_the_wrong_type_is_an_error_naming_it():
    error = _error({}, {"SCOREBOARD_SERVER_PORT": "abc"})

    assert error.key == "SCOREBOARD_SERVER_PORT"
    assert "SCOREBOARD_SERVER_PORT" in str(error)


def test_a_bad_board_operator_is_an_error_naming_it():
    error = _error({"boards": {"x": {"operator": "max"}}})

    assert error.key == "boards.x.operator"
    assert "boards.x.operator" in str(error)


def test_an_unknown_board_setting_is_an_error_naming_it():
    assert _error({"boards": {"x": {"operater": "incr"}}}).key == "boards.x.operater"


def test_a_bad_action_range_is_an_error_naming_it():
    assert _error({"actions": {"jump": {"min_points": 10, "max_points": 1}}}).key == "actions.jump.min_points"


@pytest.mark.parametrize(("raw", "key"), [
    ({"database": {"migrate_on_start": "sometimes"}}, "database.migrate_on_start"),
    ({"database": {"url": "mysql://localhost/db"}}, "database.url"),
    ({"redis": {"url": "http://localhost"}}, "redis.url"),
    ({"auth": {"jwt_algorithm": "none"}}, "auth.jwt_algorithm"),
    ({"auth": {"jwt_secret": "too short"}}, "auth.jwt_secret"),
    ({"auth": {"argon2_memory_kib": 1024}}, "auth.argon2_memory_kib"),
    ({"auth": {"login_limit_per_username": "five a minute"}}, "auth.login_limit_per_username"),
    ({"server": {"port": 70000}}, "server.port"),
    ({"server": {"log_level": "loud"}}, "server.log_level"),
    ({"broadcast": {"top_n": 0}}, "broadcast.top_n"),
    ({"signing": {"window_s": -1}}, "signing.window_s"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_an_out_of_range_value_is_an_error_naming_its_key(raw, key):
    assert _error(raw).key == key


def test_a_config_file_that_is_not_toml_is_an_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")

    with pytest.raises(ConfigError) as caught:
        load(path, env={})

    assert caught.value.key == "--config"


def test_a_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "absent.toml", env={})

    assert "absent.toml" in str(caught.value)


@pytest.mark.parametrize("value", ["", "0", "1,3", "12"])
def test_cpu_affinity_takes_cpu_numbers_separated_by_commas(value):
    config = from_dict({"server": {"cpu_affinity": value}}, {})
    assert config.server.cpus == ({int(v) for v in value.split(",")} if value else set())


@pytest.mark.parametrize("value", ["x", "1-3", "1,", " 1", "-1", "1;2"])
def test_a_malformed_cpu_affinity_is_an_error_naming_it(value):
    assert _error({"server": {"cpu_affinity": value}}).key == "server.cpu_affinity"
