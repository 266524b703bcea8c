"""The shipped systemd units (deploy/*.service): `systemd-analyze verify` passes on them,
with the programs they start pointed at this checkout's venv (on a test machine nothing
is installed in /opt/entityd), and they agree with hub.conf and the README."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import BIN

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
# Where a unit expects a program on a production host -> where this test run has it.
INSTALLED = {
    "/opt/entityd/.venv/bin/": f"{BIN}/",
    "/usr/local/bin/nats-server": f"{BIN}/nats-server",
}
EXEC_LINE = re.compile(r"^Exec\w+=[-@:+!]*(\S+)", re.MULTILINE)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _settings(unit: Path, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)


def _as_installed_here(unit: Path, into: Path) -> Path:
    text = unit.read_text()
    for production, here in INSTALLED.items():
        text = text.replace(production, here)
    for program in EXEC_LINE.findall(text):
        # Else verify fails on a missing file, and a wrong path would pass unnoticed.
        assert os.access(program, os.X_OK), f"{unit.name} starts {program}: not mapped here"
    into.mkdir(parents=True, exist_ok=True)
    copy = into / unit.name
    copy.write_text(text)
    return copy


def _verify(*units: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=120,
    )


def test_the_entity_and_hub_units_are_shipped() -> None:
    assert [unit.name for unit in UNITS] == [
        "entityd-books-reader.service", "entityd-hub.service", "entityd@.service"]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                    reason="systemd-analyze is not installed here, so the units cannot be "
                           "verified (CI images with systemd run this test)")
def test_systemd_analyze_verify_passes_on_the_shipped_units(tmp_path: Path) -> None:
    copies = [_as_installed_here(unit, tmp_path / "units") for unit in UNITS]
    result = _verify(*copies)
    # Unknown keys and bad values are only warnings (exit 0): any output fails.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    # The check is not blind: a misspelt key and a missing program are reported.
    broken = [_as_installed_here(unit, tmp_path / "broken") for unit in UNITS]
    for unit in broken:
        unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nRestartSecs=2\n"))
    warned = _verify(*broken)
    for unit in broken:
        assert re.search(rf"{re.escape(unit.name)}:\d+: Unknown key (name )?'?RestartSecs'?",
                         warned.stdout + warned.stderr), (unit.name, warned)
    entity = tmp_path / "units" / "entityd@.service"
    entity.write_text(entity.read_text().replace(f"{BIN}/entityd", "/nonexistent/entityd"))
    missing = _verify(entity)
    assert missing.returncode != 0 and "/nonexistent/entityd" in missing.stderr


def test_the_entity_unit_runs_unprivileged_in_its_data_dir() -> None:
    unit = DEPLOY / "entityd@.service"
    assert _settings(unit, "User") == ["entityd"]
    assert _settings(unit, "ExecStart") == [
        "/opt/entityd/.venv/bin/entityd run --config /var/lib/entityd/%i/entityd.toml"]
    assert _settings(unit, "ReadWritePaths") == ["/var/lib/entityd/%i"]
    assert _settings(unit, "StateDirectory") == ["entityd/%i"]
    assert _settings(unit, "EnvironmentFile") == ["-/etc/entityd/%i.env"]
    # SIGTERM to the daemon alone: it drains through its nats-server, then stops it.
    assert _settings(unit, "KillMode") == ["mixed"]
    assert _settings(unit, "Delegate") == ["memory pids"]


def test_the_hub_unit_can_write_the_store_its_config_names() -> None:
    unit = DEPLOY / "entityd-hub.service"
    (store,) = re.findall(r'store_dir:\s*"([^"]+)"', (DEPLOY / "hub.conf").read_text())
    (writable,) = _settings(unit, "ReadWritePaths")
    assert Path(store).is_relative_to(writable)
    assert f"/var/lib/{_settings(unit, 'StateDirectory')[0]}" == writable
    assert _settings(unit, "ExecStart") == [
        "/usr/local/bin/nats-server -c /etc/entityd-hub/hub.conf"]
    assert _settings(unit, "User") == ["entityd-hub"]


def test_the_books_reader_unit_runs_beside_the_hub_as_its_user() -> None:
    unit = DEPLOY / "entityd-books-reader.service"
    assert _settings(unit, "User") == ["entityd-hub"]
    assert _settings(unit, "Requires") == ["entityd-hub.service"]
    (start,) = re.findall(r"^ExecStart=((?:.*\\\n)*.*)$", unit.read_text(), re.MULTILINE)
    argv = start.replace("\\\n", " ").split()
    assert argv[:3] == ["/opt/entityd/.venv/bin/python", "-m", "entityd.books_reader"]
    assert argv[argv.index("--hub") + 1] == "nats://127.0.0.1:4222"  # hub.conf's client port
    assert "port: 4222" in (DEPLOY / "hub.conf").read_text()
    assert argv.count("--member") == 2


def test_the_readme_has_the_section_the_units_point_to() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Run it as a service\n" in readme
    for unit in UNITS:
        assert 'README.md, "Run it as a service"' in unit.read_text(), unit.name
        assert f"deploy/{unit.name}" in readme, unit.name
