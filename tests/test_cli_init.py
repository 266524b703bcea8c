"""The installed `entityd` console script: init, keygen, and run's answer to a missing config."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

from entityd import config as config_mod
from entityd import identity
from tests.helpers import BIN, child_env, free_port

ENTITYD = str(BIN / "entityd")
HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def entityd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENTITYD, *args], capture_output=True, text=True, timeout=30, cwd=cwd, env=child_env()
    )


def test_init_writes_config_and_key_and_prints_the_public_key(tmp_path: Path) -> None:
    data = tmp_path / "state" / "entity-a"
    port = free_port()
    result = entityd("init", "entity-a", "--data-dir", str(data), "--nats-port", str(port))
    assert result.returncode == 0, result.stderr
    config_path = data / "entityd.toml"
    key = data / "keys" / "entity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    public = bytes(identity.read_key(key).verify_key).hex()
    assert HEX64.findall(result.stdout) == [public]
    assert str(config_path) in result.stdout
    assert f"entityd run --config {config_path}" in result.stdout
    # Nothing secret on the terminal.
    assert key.read_text().strip() not in result.stdout + result.stderr
    cfg = config_mod.load(config_path, environ={})
    assert (cfg.name, cfg.data_dir, cfg.nats.port) == ("entity-a", data, port)
    assert cfg.embedded_nats


def test_init_with_a_relative_data_dir_writes_an_absolute_one(tmp_path: Path) -> None:
    result = entityd("init", "entity-b", "--data-dir", "b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "b" / "entityd.toml").read_text()
    assert f'data_dir = "{tmp_path / "b"}"' in text
    # Loaded from elsewhere, it still points at the same place.
    cfg = config_mod.load(tmp_path / "b" / "entityd.toml", environ={})
    assert cfg.data_dir == tmp_path / "b" and cfg.nats.port == 4222


def test_second_init_refuses_to_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "entity-a"
    assert entityd("init", "entity-a", "--data-dir", str(data)).returncode == 0
    config_before = (data / "entityd.toml").read_bytes()
    key_before = (data / "keys" / "entity.key").read_bytes()
    result = entityd("init", "entity-z", "--data-dir", str(data), "--nats-port", "5000")
    assert result.returncode == 2
    assert f"entityd: {data / 'entityd.toml'} already exists; not overwriting it" in result.stderr
    assert "Traceback" not in result.stderr
    assert (data / "entityd.toml").read_bytes() == config_before
    assert (data / "keys" / "entity.key").read_bytes() == key_before


def test_init_refuses_a_bad_name_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "entity"
    for name in ("Entity_A", "a" * 33, "x.y"):
        result = entityd("init", name, "--data-dir", str(data))
        assert result.returncode == 2
        assert repr(name) in result.stderr
        assert "1-32 of lowercase letters, digits and '-'" in result.stderr
    assert not data.exists()


def test_keygen_writes_a_private_key_an_operator_entry_accepts(tmp_path: Path) -> None:
    key_file = tmp_path / "operator.key"
    result = entityd("keygen", str(key_file))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    match = re.search(r"public key: ([0-9a-f]{64})\n", result.stdout)
    assert match, result.stdout
    public = match.group(1)
    assert public == bytes(identity.read_key(key_file).verify_key).hex()
    assert key_file.read_text().strip() not in result.stdout
    assert "[operators]" in result.stdout

    data = tmp_path / "entity-a"
    assert entityd("init", "entity-a", "--data-dir", str(data)).returncode == 0
    config_path = data / "entityd.toml"
    config_path.write_text(config_path.read_text() + f'ops = "{public}"\n')
    cfg = config_mod.load(config_path, environ={})
    assert dict(cfg.operators) == {"ops": public}


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key_file = tmp_path / "operator.key"
    assert entityd("keygen", str(key_file)).returncode == 0
    before = key_file.read_bytes()
    result = entityd("keygen", str(key_file))
    assert result.returncode == 2
    assert f"entityd: {key_file} already exists; refusing to overwrite a key" in result.stderr
    assert key_file.read_bytes() == before


def test_run_with_a_missing_config_names_the_file(tmp_path: Path) -> None:
    result = entityd("run", "--config", "missing.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"entityd: config {tmp_path / 'missing.toml'}: no such file" in result.stderr
    assert "entityd init NAME" in result.stderr
