"""The config file and its environment overrides: what loads, and how a bad value is reported."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from entityd import config as config_mod
from entityd.app import cli
from entityd.errors import ConfigError

OPERATOR_KEY = "ab" * 32


def write(tmp_path: Path, body: str, name: str = "entity-a") -> Path:
    path = tmp_path / config_mod.CONFIG_NAME
    path.write_text(f'[entity]\nname = "{name}"\n' + body)
    return path


def load_error(tmp_path: Path, body: str) -> ConfigError:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    return caught.value


@pytest.fixture
def starter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The config exactly as `entityd init` writes it."""
    data = tmp_path / "entity-a"
    assert cli.main(["init", "entity-a", "--data-dir", str(data), "--nats-port", "4310"]) == 0
    capsys.readouterr()
    return data / config_mod.CONFIG_NAME


# -- the starter config ------------------------------------------------------------------


def test_starter_config_loads_with_the_defaults(starter: Path) -> None:
    cfg = config_mod.load(starter, environ={})
    assert cfg.name == "entity-a"
    assert cfg.data_dir == starter.parent
    assert cfg.path == starter
    assert cfg.embedded_nats and cfg.nats.url == ""
    assert (cfg.nats.host, cfg.nats.port) == ("127.0.0.1", 4310)
    assert cfg.nats.connect_timeout == 5.0 and cfg.nats.ready_timeout == 20.0
    # What the starter spells out must agree with the built-in defaults.
    assert cfg.runtime == config_mod.RuntimeSection()
    assert cfg.protocol == config_mod.ProtocolSection()
    assert cfg.protocol.max_message_bytes == 1024 * 1024
    assert cfg.log == config_mod.LogSection(level="info", format="auto")
    assert cfg.llm == config_mod.LlmSection()
    assert cfg.sandbox == config_mod.SandboxSection()
    assert cfg.autonomy == config_mod.AutonomySection() and not cfg.autonomy.enabled
    assert cfg.workspace_dir == starter.parent / "workspace"
    assert cfg.memory_path == starter.parent / "memory.sqlite3"
    assert dict(cfg.operators) == {}


def test_starter_spells_out_every_key_once_at_its_default_with_a_comment(starter: Path) -> None:
    cfg = config_mod.load(starter, environ={})
    blocks = dict(re.findall(r"(?ms)^\[(\w+)\]\n(.*?)(?=^\[|\Z)", starter.read_text()))
    placeholders = {"entity": cfg.entity, "nats": config_mod.NatsSection(port=4310)}
    for part in dataclasses.fields(cfg):
        section = getattr(cfg, part.name)
        if not dataclasses.is_dataclass(section):
            continue
        assert section == placeholders.get(part.name, type(section)()), part.name
        lines = blocks[part.name].splitlines()
        for key in dataclasses.fields(section):
            at = [i for i, line in enumerate(lines) if line.startswith(f"{key.name} = ")]
            assert len(at) == 1, f"{part.name}.{key.name}"
            commented = re.search(r"  # \S", lines[at[0]]) or lines[at[0] - 1].startswith("# ")
            assert commented, f"{part.name}.{key.name} has no comment"


def test_starter_accepts_an_operator_key(starter: Path) -> None:
    starter.write_text(starter.read_text() + f'alice = "{OPERATOR_KEY.upper()}"\n')
    cfg = config_mod.load(starter, environ={})
    assert dict(cfg.operators) == {"alice": OPERATOR_KEY}


# -- environment overrides ----------------------------------------------------------------


def test_env_overrides_win_over_the_file_and_are_typed(starter: Path) -> None:
    environ = {
        "ENTITYD_NATS_URL": "nats://10.0.0.1:4333",
        "ENTITYD_NATS_PORT": "4999",
        "ENTITYD_RUNTIME_ASK_TIMEOUT": "2.5",
        "ENTITYD_RUNTIME_QUEUE_SIZE": "17",
        "ENTITYD_PROTOCOL_REPLAY_CAPACITY": "50",
        "ENTITYD_LOG_LEVEL": "debug",
        "UNRELATED": "ignored",
    }
    cfg = config_mod.load(starter, environ=environ)
    assert cfg.nats.url == "nats://10.0.0.1:4333" and not cfg.embedded_nats
    assert cfg.nats.port == 4999 and type(cfg.nats.port) is int
    assert cfg.runtime.ask_timeout == 2.5 and type(cfg.runtime.ask_timeout) is float
    assert cfg.runtime.queue_size == 17 and type(cfg.runtime.queue_size) is int
    assert cfg.protocol.replay_capacity == 50
    assert cfg.log.level == "debug"
    # Keys without an override keep the file's values.
    assert cfg.runtime.backoff_max == 10.0


def test_load_reads_os_environ_when_no_environ_is_given(
    starter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENTITYD_NATS_PORT", "4555")
    assert config_mod.load(starter).nats.port == 4555


@pytest.mark.parametrize(
    ("var", "value", "key", "expected"),
    [
        ("ENTITYD_NATS_PORT", "42x", "nats.port", "an integer"),
        ("ENTITYD_NATS_PORT", "4222.5", "nats.port", "an integer"),
        ("ENTITYD_RUNTIME_ASK_TIMEOUT", "soon", "runtime.ask_timeout", "a number"),
    ],
)
def test_bad_env_value_names_the_key_and_the_variable(
    starter: Path, var: str, value: str, key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.load(starter, environ={var: value})
    message = str(caught.value)
    assert key in message and var in message
    assert f"expected {expected}" in message and repr(value) in message


def test_env_values_are_checked_like_file_values(starter: Path) -> None:
    with pytest.raises(ConfigError, match=r"nats\.port: 0 is not a TCP port"):
        config_mod.load(starter, environ={"ENTITYD_NATS_PORT": "0"})
    with pytest.raises(ConfigError, match=r"nats\.url: .http://127\.0\.0\.1:4222. is not a nats://"):
        config_mod.load(starter, environ={"ENTITYD_NATS_URL": "http://127.0.0.1:4222"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), (" Yes ", True), ("ON", True),
     ("0", False), ("false", False), ("no", False), ("off", False)],
)
def test_env_bool_override(starter: Path, text: str, value: bool) -> None:
    cfg = config_mod.load(starter, environ={"ENTITYD_AUTONOMY_ENABLED": text})
    assert cfg.autonomy.enabled is value


def test_env_bool_rejects_anything_else(starter: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.load(starter, environ={"ENTITYD_AUTONOMY_ENABLED": "maybe"})
    message = str(caught.value)
    assert "autonomy.enabled" in message and "ENTITYD_AUTONOMY_ENABLED" in message
    assert "expected true or false, got 'maybe'" in message


@pytest.mark.parametrize("text", ["nan", "NaN", "-inf"])
def test_env_float_must_be_a_positive_number(starter: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"runtime\.ask_timeout: must be greater than 0"):
        config_mod.load(starter, environ={"ENTITYD_RUNTIME_ASK_TIMEOUT": text})


# -- bad values in the file ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('[runtime]\nqueue_size = "big"\n', "runtime.queue_size", "expected an integer, got 'big'"),
        ("[runtime]\nqueue_size = true\n", "runtime.queue_size", "expected an integer"),
        ("[runtime]\nqueue_size = 1.5\n", "runtime.queue_size", "expected an integer"),
        ('[runtime]\nask_timeout = "5"\n', "runtime.ask_timeout", "expected a number, got '5'"),
        ("[nats]\nurl = 4222\n", "nats.url", "expected a string, got 4222"),
        ("[runtime]\nask_timeout = -1\n", "runtime.ask_timeout", "greater than 0, got -1.0"),
        ("[runtime]\ndrain_timeout = 0\n", "runtime.drain_timeout", "greater than 0"),
        ("[nats]\nready_timeout = -0.5\n", "nats.ready_timeout", "greater than 0"),
        ("[protocol]\nreplay_window = 0\n", "protocol.replay_window", "greater than 0"),
        ("[runtime]\nrestart_window = nan\n", "runtime.restart_window", "greater than 0"),
        ("[autonomy]\nenabled = 1\n", "autonomy.enabled", "expected true or false, got 1"),
        ('[nats]\nurl = "http://hub:4222"\n', "nats.url", "not a nats:// or tls:// URL"),
        ('[nats]\nurl = "127.0.0.1:4222"\n', "nats.url", "not a nats:// or tls:// URL"),
        ("[nats]\nport = 0\n", "nats.port", "not a TCP port (1-65535)"),
        ("[nats]\nport = 65536\n", "nats.port", "not a TCP port (1-65535)"),
        ("[nats]\nport = -1\n", "nats.port", "not a TCP port"),
        ('[log]\nlevel = "verbose"\n', "log.level", "not one of debug, info, warning, error"),
        ('[log]\nformat = "xml"\n', "log.format", "not one of auto, json, console"),
        (
            "[runtime]\nbackoff_initial = 2.0\nbackoff_max = 1.0\n",
            "runtime.backoff_max",
            "at least runtime.backoff_initial",
        ),
    ],
)
def test_bad_value_names_the_key_and_what_is_expected(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    err = load_error(tmp_path, body)
    assert err.key == key
    assert problem in err.problem
    assert str(err).startswith(f"config {key}: ")


@pytest.mark.parametrize("command", ["", "   "])
def test_auto_accept_needs_the_command_that_must_pass(tmp_path: Path, command: str) -> None:
    err = load_error(tmp_path, f'[economy]\nauto_accept = true\naccept_command = "{command}"\n')
    assert err.key == "economy.accept_command"
    assert "economy.auto_accept = true" in err.problem
    assert 'set it (e.g. accept_command = "python3 -m unittest")' in err.problem
    assert "or set economy.auto_accept = false" in err.problem


def test_auto_accept_with_its_command_loads_and_the_env_can_set_both(tmp_path: Path) -> None:
    path = write(tmp_path, '[economy]\nauto_accept = true\naccept_command = "pytest -q"\n')
    economy = config_mod.load(path, environ={}).economy
    assert (economy.auto_accept, economy.accept_command, economy.accept_timeout) == (
        True, "pytest -q", 600.0)
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"economy\.accept_command: economy\.auto_accept"):
        config_mod.load(path, environ={"ENTITYD_ECONOMY_AUTO_ACCEPT": "true"})
    economy = config_mod.load(path, environ={
        "ENTITYD_ECONOMY_AUTO_ACCEPT": "true",
        "ENTITYD_ECONOMY_ACCEPT_COMMAND": "python3 -m unittest"}).economy
    assert economy.auto_accept and economy.accept_command == "python3 -m unittest"


def test_unknown_section_lists_the_known_ones(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[natz]\nurl = 'nats://x'\n")
    assert err.key == "natz"
    assert "unknown section" in err.problem
    for known in ("entity", "nats", "runtime", "protocol", "log", "operators"):
        assert known in err.problem


def test_unknown_key_lists_the_known_keys(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[runtime]\nask_timout = 5.0\n")
    assert err.key == "runtime.ask_timout"
    assert "unknown key" in err.problem
    for known in ("ask_timeout", "queue_size", "restart_budget", "backoff_max", "drain_timeout"):
        assert known in err.problem


@pytest.mark.parametrize(
    "name", ["Entity-A", "entity_a", "entity.a", "a" * 33, "entité", "entity a"]
)
def test_bad_entity_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, "", name=name)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert caught.value.key == "entity.name"
    assert repr(name) in caught.value.problem
    assert "lowercase letters, digits and '-'" in caught.value.problem


def test_missing_entity_name(tmp_path: Path) -> None:
    path = tmp_path / "entityd.toml"
    path.write_text("[entity]\ndata_dir = '.'\n")
    with pytest.raises(ConfigError, match=r"entity\.name: missing"):
        config_mod.load(path, environ={})


def test_longest_valid_name_is_accepted(tmp_path: Path) -> None:
    cfg = config_mod.load(write(tmp_path, "", name="a-1" + "b" * 29), environ={})
    assert len(cfg.name) == 32


@pytest.mark.parametrize(
    "value",
    ['"abc"', '"' + "g" * 64 + '"', '"' + "ab" * 33 + '"', '"' + "ab" * 31 + '"', "42"],
)
def test_operator_key_must_be_64_hex(tmp_path: Path, value: str) -> None:
    err = load_error(tmp_path, f"[operators]\nalice = {value}\n")
    assert err.key == "operators.alice"
    assert "64-character hex Ed25519 public key" in err.problem


@pytest.mark.parametrize(
    ("top", "key", "problem"),
    [
        ("runtime = 5\n", "runtime", "must be a table, e.g. [runtime]"),
        (f'operators = "{OPERATOR_KEY}"\n', "operators", 'name = "hex public key"'),
    ],
)
def test_section_must_be_a_table(tmp_path: Path, top: str, key: str, problem: str) -> None:
    path = tmp_path / "entityd.toml"
    path.write_text(top + '[entity]\nname = "entity-a"\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_missing_file_suggests_entityd_init(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "entityd.toml"
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert caught.value.key == str(path)
    assert "no such file" in str(caught.value)
    assert "entityd init" in str(caught.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "entityd.toml"
    path.write_text('[entity]\nname = "entity-a\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value)
    assert "line 2" in str(caught.value)


# -- data_dir -------------------------------------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a directory other than the config's, so cwd-relative resolution would show."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    return conf_dir


def test_relative_data_dir_resolves_against_the_config_directory(elsewhere: Path) -> None:
    path = elsewhere / "entityd.toml"
    path.write_text('[entity]\nname = "entity-a"\ndata_dir = "state/../state2"\n')
    cfg = config_mod.load(path, environ={})
    assert cfg.data_dir == (elsewhere / "state2").resolve()
    assert cfg.data_dir.is_absolute()


def test_relative_config_path_is_resolved_too(elsewhere: Path) -> None:
    (elsewhere / "entityd.toml").write_text('[entity]\nname = "entity-a"\ndata_dir = "d"\n')
    cfg = config_mod.load(Path("..") / "conf" / "entityd.toml", environ={})
    assert cfg.path == (elsewhere / "entityd.toml").resolve()
    assert cfg.data_dir == (elsewhere / "d").resolve()


def test_empty_data_dir_means_the_config_directory(elsewhere: Path) -> None:
    path = elsewhere / "entityd.toml"
    path.write_text('[entity]\nname = "entity-a"\ndata_dir = ""\n')
    assert config_mod.load(path, environ={}).data_dir == elsewhere.resolve()
    path.write_text('[entity]\nname = "entity-a"\n')
    assert config_mod.load(path, environ={}).data_dir == elsewhere.resolve()


def test_absolute_data_dir_is_kept(elsewhere: Path, tmp_path: Path) -> None:
    target = tmp_path / "abs-data"
    path = elsewhere / "entityd.toml"
    path.write_text(f'[entity]\nname = "entity-a"\ndata_dir = "{target}"\n')
    assert config_mod.load(path, environ={}).data_dir == target


def test_data_dir_from_env_is_resolved_against_the_config_directory(elsewhere: Path) -> None:
    path = elsewhere / "entityd.toml"
    path.write_text('[entity]\nname = "entity-a"\n')
    cfg = config_mod.load(path, environ={"ENTITYD_ENTITY_DATA_DIR": "from-env"})
    assert cfg.data_dir == (elsewhere / "from-env").resolve()


@pytest.mark.parametrize(("services", "web", "why"), [
    ("localhost", "127.0.0.1", "is a name"),  # the page answers as localhost too
    ("LOCALHOST", "127.0.0.1", "is a name"),
    ("127.0.0.1", "127.0.0.1", "is web.host too"),
    ("127.000.000.001", "127.0.0.1", "is a name"),  # not an IP literal Python reads
    ("::1", "0:0:0:0:0:0:0:1", "is web.host too"),  # one address, two spellings
    ("10.0.0.5", "127.0.0.1", "not a loopback address"),
])
def test_a_services_host_that_could_share_the_pages_cookies_is_refused(
    tmp_path: Path, services: str, web: str, why: str,
) -> None:
    """A browser sends a host's cookies to every port of it: a service preview (code the
    entity wrote) on any host the page answers to would get the operator's login."""
    err = load_error(tmp_path, f'[web]\nhost = "{web}"\n[services]\nhost = "{services}"\n')
    assert err.key == "services.host"
    assert why in err.problem


def test_a_services_host_apart_from_the_page_loads(tmp_path: Path) -> None:
    path = write(tmp_path, '[web]\nhost = "127.0.0.1"\n[services]\nhost = "127.0.0.3"\n')
    assert config_mod.load(path, environ={}).services.host == "127.0.0.3"
