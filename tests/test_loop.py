"""The event loop entityd's programs run on: uvloop where installed, asyncio's own on
request (ENTITYD_LOOP=asyncio), and a wrong choice refused by name, with no traceback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from entityd import ConfigError, loop
from tests.helpers import DaemonProc, child_env, ctl, make_entity

pytestmark = pytest.mark.timeout(90)


def _loop_of(daemon: DaemonProc) -> str:
    for line in daemon.log().splitlines():
        if '"entityd_starting"' in line:
            return str(json.loads(line)["loop"])
    raise AssertionError(daemon.log())


@pytest.mark.parametrize("choice", ["", "asyncio"])
def test_the_daemon_runs_on_the_chosen_loop_and_serves(tmp_path: Path, choice: str) -> None:
    import uvloop  # noqa: F401  (a dependency on Linux: missing is a failure, not a skip)

    config = make_entity(tmp_path)
    env = child_env(ENTITYD_LOOP=choice) if choice else child_env()
    daemon = DaemonProc(config, tmp_path / "entityd.log", env=env).start()
    try:
        daemon.wait_log('"entityd_ready"')
        assert _loop_of(daemon) == (choice or "uvloop")
        status = ctl(config, "status")
        assert status.returncode == 0, status.stderr
        assert daemon.terminate() == 0
    finally:
        daemon.kill()


def test_a_wrong_loop_is_refused_by_name(tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import BIN

    config = make_entity(tmp_path)
    done = subprocess.run([str(BIN / "entityctl"), "--config", str(config), "status"],
                          capture_output=True, text=True, timeout=60,
                          env=child_env(ENTITYD_LOOP="trio"))
    assert done.returncode == 2
    assert "ENTITYD_LOOP" in done.stderr and "uvloop, asyncio" in done.stderr
    assert "Traceback" not in done.stderr
    daemon = subprocess.run([str(BIN / "entityd"), "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60,
                            env=child_env(ENTITYD_LOOP="trio"))
    assert daemon.returncode == 2
    assert "ENTITYD_LOOP" in daemon.stderr and "Traceback" not in daemon.stderr


def test_run_uses_the_factory_of_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    async def kind() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    monkeypatch.setenv(loop.ENV, "asyncio")
    assert loop.run(kind()) == "asyncio"
    monkeypatch.setenv(loop.ENV, "bogus")
    with pytest.raises(ConfigError, match="ENTITYD_LOOP"):
        loop.run(kind())  # the coroutine is closed, not left un-awaited
