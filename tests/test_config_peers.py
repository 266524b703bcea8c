"""The federation's config: the [peers] section, the [trust] and [peer_keys] tables, their
defaults in the starter config, environment overrides, and how a bad value is reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entityd import config as config_mod
from entityd.config import PeersSection
from entityd.errors import ConfigError
from tests.helpers import make_entity

PEER_KEY = "cd" * 32


@pytest.fixture
def starter(tmp_path: Path) -> Path:
    """An entity's data dir and the config exactly as the starter template writes it."""
    return make_entity(tmp_path)


def set_key(path: Path, key: str, value: str) -> None:
    """Replace the starter's line `key = ...` (each [peers] key appears once in it)."""
    text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", path.read_text())
    assert count == 1, key
    path.write_text(text)


def add_to_table(path: Path, table: str, lines: str) -> None:
    """Add entries right under the starter's `[table]` header."""
    text, count = re.subn(rf"(?m)^\[{table}\]\n", lambda m: m.group(0) + lines,
                          path.read_text())
    assert count == 1, table
    path.write_text(text)


def load_error(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ=environ or {})
    return caught.value


# -- defaults -------------------------------------------------------------------------------


def test_starter_peers_section_equals_the_built_in_defaults(starter: Path) -> None:
    cfg = config_mod.load(starter, environ={})
    assert cfg.peers == PeersSection()
    assert cfg.peers.heartbeat_interval == 5.0
    assert cfg.peers.alive_window == 0.0
    assert cfg.peers.pinning == "first-sight"
    assert cfg.peers.capabilities == ("chat", "code")
    assert cfg.peers.default_trust == ("talk", "report")
    assert (cfg.peers.rate_per_minute, cfg.peers.rate_burst) == (120, 30)
    assert cfg.peers.ping_timeout == 3.0
    assert cfg.peers.talk_timeout == 600.0
    assert cfg.peers.command_timeout == 15.0
    assert cfg.peers.delegation_timeout == 3600.0
    assert dict(cfg.trust) == {}
    assert dict(cfg.peer_keys) == {}


def test_window_defaults_to_three_heartbeats(starter: Path) -> None:
    assert config_mod.load(starter, environ={}).peers.window == 15.0
    set_key(starter, "heartbeat_interval", "2.0")
    assert config_mod.load(starter, environ={}).peers.window == 6.0


def test_explicit_alive_window_wins_over_the_heartbeat_rule(starter: Path) -> None:
    set_key(starter, "alive_window", "42")
    cfg = config_mod.load(starter, environ={})
    assert cfg.peers.alive_window == 42.0 and type(cfg.peers.alive_window) is float
    assert cfg.peers.window == 42.0


def test_peers_values_from_the_file(starter: Path) -> None:
    set_key(starter, "pinning", '"config"')
    set_key(starter, "capabilities", '["review"]')
    set_key(starter, "default_trust", "[]")
    set_key(starter, "rate_per_minute", "6")
    set_key(starter, "rate_burst", "1")
    cfg = config_mod.load(starter, environ={})
    assert cfg.peers.pinning == "config"
    assert cfg.peers.capabilities == ("review",)
    assert cfg.peers.default_trust == ()
    assert (cfg.peers.rate_per_minute, cfg.peers.rate_burst) == (6, 1)


def test_trust_and_peer_keys_tables_load(starter: Path) -> None:
    add_to_table(starter, "trust",
                 'entity-b = ["talk", "report", "delegate", "wake", "restart"]\n'
                 'entity-c = []\n"*" = ["talk"]\n')
    add_to_table(starter, "peer_keys", f'entity-b = "{PEER_KEY.upper()}"\n')
    cfg = config_mod.load(starter, environ={})
    assert dict(cfg.trust) == {
        "entity-b": ("talk", "report", "delegate", "wake", "restart"),
        "entity-c": (),
        "*": ("talk",),
    }
    assert dict(cfg.peer_keys) == {"entity-b": PEER_KEY}  # normalised to lower case


# -- environment overrides ------------------------------------------------------------------


def test_env_overrides_heartbeat_interval_and_so_the_window(starter: Path) -> None:
    cfg = config_mod.load(starter, environ={"ENTITYD_PEERS_HEARTBEAT_INTERVAL": "0.5"})
    assert cfg.peers.heartbeat_interval == 0.5
    assert type(cfg.peers.heartbeat_interval) is float
    assert cfg.peers.window == 1.5
    assert cfg.peers.rate_burst == 30  # the others keep the file's values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("chat,code,review", ("chat", "code", "review")),
        (" chat , review ,", ("chat", "review")),
        ("solo", ("solo",)),
        ("", ()),
    ],
)
def test_env_capabilities_is_a_comma_list(
    starter: Path, text: str, expected: tuple[str, ...]
) -> None:
    cfg = config_mod.load(starter, environ={"ENTITYD_PEERS_CAPABILITIES": text})
    assert cfg.peers.capabilities == expected


def test_env_overrides_pinning_trust_and_rates(starter: Path) -> None:
    cfg = config_mod.load(starter, environ={
        "ENTITYD_PEERS_PINNING": "config",
        "ENTITYD_PEERS_DEFAULT_TRUST": "talk,wake",
        "ENTITYD_PEERS_RATE_PER_MINUTE": "10",
        "ENTITYD_PEERS_ALIVE_WINDOW": "9",
    })
    assert cfg.peers.pinning == "config"
    assert cfg.peers.default_trust == ("talk", "wake")
    assert cfg.peers.rate_per_minute == 10 and type(cfg.peers.rate_per_minute) is int
    assert cfg.peers.window == 9.0


@pytest.mark.parametrize(
    ("var", "value", "key", "problem"),
    [
        ("ENTITYD_PEERS_HEARTBEAT_INTERVAL", "soon", "peers.heartbeat_interval", "a number"),
        ("ENTITYD_PEERS_RATE_BURST", "2.5", "peers.rate_burst", "an integer"),
    ],
)
def test_bad_env_value_names_the_key_and_the_variable(
    starter: Path, var: str, value: str, key: str, problem: str
) -> None:
    err = load_error(starter, {var: value})
    assert err.key == f"{key} (from {var})"
    assert f"expected {problem}, got {value!r}" in err.problem


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("ENTITYD_PEERS_HEARTBEAT_INTERVAL", "0", "peers.heartbeat_interval"),
        ("ENTITYD_PEERS_HEARTBEAT_INTERVAL", "nan", "peers.heartbeat_interval"),
        ("ENTITYD_PEERS_ALIVE_WINDOW", "NaN", "peers.alive_window"),
        ("ENTITYD_PEERS_PINNING", "never", "peers.pinning"),
        ("ENTITYD_PEERS_DEFAULT_TRUST", "talk,fly", "peers.default_trust"),
    ],
)
def test_env_values_are_checked_like_file_values(
    starter: Path, var: str, value: str, key: str
) -> None:
    assert load_error(starter, {var: value}).key == key


# -- bad values in the file -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("heartbeat_interval", "0", "must be greater than 0, got 0.0"),
        ("heartbeat_interval", "-1.5", "must be greater than 0, got -1.5"),
        ("heartbeat_interval", "nan", "must be greater than 0, got nan"),
        ("heartbeat_interval", '"5"', "expected a number, got '5'"),
        ("alive_window", "-1", "must be 0 (auto) or more, got -1.0"),
        ("alive_window", "nan", "must be 0 (auto) or more, got nan"),
        ("rate_per_minute", "0", "must be greater than 0, got 0"),
        ("rate_per_minute", "1.5", "expected an integer"),
        ("rate_burst", "-3", "must be greater than 0, got -3"),
        ("rate_burst", "true", "expected an integer, got True"),
        ("ping_timeout", "0", "must be greater than 0"),
        ("talk_timeout", "-600", "must be greater than 0"),
        ("command_timeout", "nan", "must be greater than 0"),
        ("delegation_timeout", "0", "must be greater than 0"),
        ("pinning", '"trust-me"', "'trust-me' is not one of first-sight, config"),
        ("pinning", '"First-Sight"', "is not one of first-sight, config"),
        ("capabilities", '"chat"', "expected a list of strings, got 'chat'"),
        ("capabilities", "[1]", "expected a list of strings"),
        ("default_trust", '["talk", "own"]',
         "'own' is not one of talk, report, delegate, wake, restart"),
        ("default_trust", '"talk"', "expected a list of strings"),
    ],
)
def test_bad_peers_value_names_the_key(starter: Path, key: str, value: str, problem: str) -> None:
    set_key(starter, key, value)
    err = load_error(starter)
    assert err.key == f"peers.{key}"
    assert problem in err.problem
    assert str(err).startswith(f"config peers.{key}: ")


def test_unknown_key_in_peers_lists_the_known_keys(starter: Path) -> None:
    add_to_table(starter, "peers", "heartbeat = 5.0\n")
    err = load_error(starter)
    assert err.key == "peers.heartbeat"
    assert "unknown key" in err.problem
    for known in ("heartbeat_interval", "alive_window", "pinning", "default_trust", "rate_burst"):
        assert known in err.problem


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        ('entity-b = ["talk", "launch"]\n', "trust.entity-b",
         "'launch' is not one of talk, report, delegate, wake, restart"),
        ('entity-b = ["Talk"]\n', "trust.entity-b", "'Talk' is not one of"),
        ('entity-b = "talk"\n', "trust.entity-b", "expected a list drawn from talk, report"),
        ("entity-b = [1]\n", "trust.entity-b", "expected a list drawn from"),
        ('Entity-B = ["talk"]\n', "trust.Entity-B", "not an entity name"),
        ('"entity b" = ["talk"]\n', "trust.entity b", "not an entity name"),
        (f'{"x" * 33} = ["talk"]\n', f"trust.{'x' * 33}", "not an entity name"),
        ('"**" = ["talk"]\n', "trust.**", 'or "*"'),
    ],
)
def test_bad_trust_entry_names_the_peer(
    starter: Path, entry: str, key: str, problem: str
) -> None:
    add_to_table(starter, "trust", entry)
    err = load_error(starter)
    assert err.key == key
    assert problem in err.problem


@pytest.mark.parametrize(
    ("entry", "key", "problem"),
    [
        (f'entity-b = "{PEER_KEY[:-2]}"\n', "peer_keys.entity-b", "64-character hex"),
        (f'entity-b = "{PEER_KEY}00"\n', "peer_keys.entity-b", "64-character hex"),
        (f'entity-b = "{"zz" * 32}"\n', "peer_keys.entity-b", "64-character hex"),
        ('entity-b = ""\n', "peer_keys.entity-b", "64-character hex"),
        ("entity-b = 42\n", "peer_keys.entity-b", "64-character hex"),
        (f'Entity_B = "{PEER_KEY}"\n', "peer_keys.Entity_B", "not an entity name"),
        (f'"*" = "{PEER_KEY}"\n', "peer_keys.*", "not an entity name"),
    ],
)
def test_bad_peer_key_names_the_peer(starter: Path, entry: str, key: str, problem: str) -> None:
    add_to_table(starter, "peer_keys", entry)
    err = load_error(starter)
    assert err.key == key
    assert problem in err.problem


def test_peer_key_with_whitespace_is_refused(starter: Path) -> None:
    add_to_table(starter, "peer_keys", f'entity-b = "{PEER_KEY[:-2]}  "\n')
    assert load_error(starter).key == "peer_keys.entity-b"


@pytest.mark.parametrize(
    ("table", "value", "problem"),
    [
        ("trust", '"everyone"', "must be a table of peer"),
        ("trust", '["talk"]', "must be a table of peer"),
        ("peer_keys", f'"{PEER_KEY}"', "must be a table of name"),
    ],
)
def test_table_that_is_not_a_table(tmp_path: Path, table: str, value: str, problem: str) -> None:
    path = tmp_path / config_mod.CONFIG_NAME
    # Top-level keys come before the first table header in TOML.
    path.write_text(f'{table} = {value}\n[entity]\nname = "entity-a"\n')
    err = load_error(path)
    assert err.key == table
    assert problem in err.problem


def test_peers_that_is_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / config_mod.CONFIG_NAME
    path.write_text('peers = 5\n[entity]\nname = "entity-a"\n')
    err = load_error(path)
    assert err.key == "peers"
    assert "must be a table" in err.problem
