"""A newcomer's first hour (issue 11): each usual mistake gets one clear line on stderr,
no Python traceback, and the documented exit code; run as the user would, as processes."""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.rig import edit
from entityd import federation
from entityd.app import cli, ctl
from tests.helpers import BIN, REPO, child_env, free_port, make_entity

pytestmark = pytest.mark.timeout(120)

ENTITYD = str(BIN / "entityd")
ENTITYCTL = str(BIN / "entityctl")


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=env or child_env(), cwd=REPO)


def one_line(stderr: str) -> str:
    """The single line a mistake prints; fails on a traceback or anything more."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def wait_for(path: Path, needle: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")
        assert time.monotonic() < deadline, path.read_text(errors="replace")
        time.sleep(0.05)


def processes_naming(text: str) -> list[int]:
    """Pids of the live processes whose command line holds `text` (e.g. a data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@dataclass
class Running:
    config: Path
    proc: subprocess.Popen[str]
    log: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One entity, started as `ENTITYD_CONFIG=... entityd run` (no --config), on a model
    that takes 20 s to answer, so an `ask` is still waiting when it is interrupted."""
    root = tmp_path_factory.mktemp("newcomer")
    script = root / "slow.json"
    script.write_text(json.dumps([{"content": "(slow model) done", "delay": 20.0}] * 4))
    model = subprocess.Popen(
        [sys.executable, "-m", "actors.llm.scripted", "--script", str(script), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env(),
        cwd=REPO)
    assert model.stdout is not None
    base_url = model.stdout.readline().rsplit(" ", 1)[1].strip()
    config = make_entity(root)
    edit(config, 'provider = "moonshot"', 'provider = "scripted"')
    edit(config, 'base_url = ""', f'base_url = "{base_url}"')
    log = root / "entityd.log"
    with log.open("w") as output:
        proc = subprocess.Popen([ENTITYD, "run"], stdout=output, stderr=subprocess.STDOUT,
                                text=True, env=child_env(ENTITYD_CONFIG=str(config)))
    try:
        wait_for(log, '"entityd_ready"', proc)
        yield Running(config, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        model.terminate()
        model.communicate(timeout=10)


def ctl_env(config: Path) -> dict[str, str]:
    return child_env(ENTITYD_CONFIG=str(config))


def test_a_data_dir_given_as_config_names_the_file_it_takes(tmp_path: Path) -> None:
    data = make_entity(tmp_path).parent
    for program in (ENTITYD, ENTITYCTL):
        argv = [program, "run", "--config", str(data)] if program == ENTITYD else [
            program, "--config", str(data), "status"]
        result = run(*argv)
        assert result.returncode == 2, result.stderr
        line = one_line(result.stderr)
        assert f"{data} is a directory" in line, line
        assert f"--config {data / 'entityd.toml'}" in line, line


def test_entityd_run_without_config_says_how_to_give_one(tmp_path: Path) -> None:
    env = child_env()
    env.pop("ENTITYD_CONFIG", None)
    result = run(ENTITYD, "run", env=env)
    assert result.returncode == 2
    assert "ENTITYD_CONFIG" in one_line(result.stderr)


def test_entityd_run_takes_its_config_from_ENTITYD_CONFIG(running: Running) -> None:
    status = run(ENTITYCTL, "status", env=ctl_env(running.config))
    assert status.returncode == 0, status.stderr
    assert "entity:      entity-a" in status.stdout


def test_a_second_daemon_on_the_same_data_dir_refuses_naming_the_first(
        running: Running, tmp_path: Path) -> None:
    # Another config file, another port, the same data dir.
    other = tmp_path / "other.toml"
    text = running.config.read_text()
    other.write_text(re.sub(r"(?m)^port = \d+", f"port = {free_port()}", text, count=1))
    assert other.read_text() != text
    started = time.monotonic()
    result = run(ENTITYD, "run", "--config", str(other))
    assert time.monotonic() - started < 10
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)  # no log line either: it started nothing
    assert f"pid {running.proc.pid}" in line, line
    assert str(running.config.parent) in line, line
    assert "nats_server" not in result.stdout + result.stderr
    # The first one goes on serving.
    assert run(ENTITYCTL, "status", env=ctl_env(running.config)).returncode == 0


def test_ctrl_c_during_ask_exits_130_with_one_line(running: Running) -> None:
    proc = subprocess.Popen([ENTITYCTL, "ask", "say hello"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ctl_env(running.config))
    assert proc.stderr is not None
    accepted = proc.stderr.readline()
    assert re.match(r"task \w+ accepted", accepted), accepted
    time.sleep(0.5)  # into the wait for the answer
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=10)
    assert proc.returncode == 130, rest
    line = one_line("\n".join(x for x in rest.splitlines() if not x.startswith("[")))
    assert line.startswith("entityctl: interrupted; the entity keeps task"), line


def test_watch_prints_a_banner_before_any_event(running: Running) -> None:
    proc = subprocess.Popen([ENTITYCTL, "watch"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ctl_env(running.config))
    assert proc.stderr is not None
    banner = proc.stderr.readline()
    assert "entity-a" in banner and "nats://127.0.0.1:" in banner, banner
    assert "waiting for events; Ctrl-C stops" in banner
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert one_line(rest) == "entityctl: interrupted"


def test_wake_with_no_peer_wakes_the_own_entity(running: Running) -> None:
    env = ctl_env(running.config)
    result = run(ENTITYCTL, "wake", "--json", env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    # The orchestrator's own answer: idle (an empty todo list) or busy (the ask above).
    assert answer["started"] is False
    assert answer["reason"].startswith(("idle: the todo list is empty", "busy")), answer
    text = run(ENTITYCTL, "wake", env=env)
    assert text.returncode == 0
    assert text.stdout.startswith("entity-a: noop: "), text.stdout


def test_entityctl_with_the_entity_down_says_so_within_a_second(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    started = time.monotonic()
    result = run(ENTITYCTL, "--config", str(config), "status")
    assert time.monotonic() - started < 3  # the process's start included
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert re.search(r"its NATS server is not running at nats://127\.0\.0\.1:\d+", line), line
    assert f"entityd run --config {config}" in line, line


@pytest.mark.parametrize("when", ["while its commands load", "while it imports the actors",
                                  "while its nats-server starts"])
def test_ctrl_c_during_start_up_leaves_nothing_and_no_traceback(
        tmp_path: Path, when: str) -> None:
    config = make_entity(tmp_path)
    log = tmp_path / "entityd.log"
    with log.open("w") as output:
        proc = subprocess.Popen([ENTITYD, "run", "--config", str(config)], stdout=output,
                                stderr=subprocess.STDOUT, text=True, env=child_env())
    if when == "while its commands load":
        time.sleep(0.15)  # in the first import of entityd.app.cli (most of a second)
    elif when == "while it imports the actors":
        time.sleep(1.0)
    else:
        wait_for(log, '"nats_server_starting"', proc)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(20)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert code in (0, 130), text
    if code == 0:
        assert '"entityd_stopped"' in text, text
    else:
        assert text.strip().splitlines()[-1].startswith("entityd: interrupted"), text
    assert processes_naming(str(config.parent)) == []


def test_ctrl_c_while_entityctl_loads_is_one_line(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    proc = subprocess.Popen([ENTITYCTL, "--config", str(config), "status"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    time.sleep(0.15)  # while its commands load
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1].startswith("entityctl: interrupted"), err


def test_the_demo_model_on_a_busy_port_names_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(sys.executable, "-m", "actors.llm.scripted", "--demo",
                     "--port", str(port))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "in use" in line, line


def test_version() -> None:
    for program in (ENTITYD, ENTITYCTL):
        result = run(program, "--version")
        assert result.returncode == 0
        assert re.fullmatch(rf"{Path(program).name} \d+\.\d+\.\d+\S*\n", result.stdout)


def _subcommands(parser: argparse.ArgumentParser,
                 path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{path} {name}".strip(), child
                yield from _subcommands(child, f"{path} {name}")


@pytest.mark.parametrize("program", ["entityd", "entityctl", "entityd federation"])
def test_every_subcommand_help_has_a_sentence_and_an_example(program: str) -> None:
    parser = {"entityd": cli.parser, "entityctl": ctl.parser,
              "entityd federation": federation.parser}[program]()
    checked = 0
    for name, sub in _subcommands(parser):
        text, description = sub.format_help(), sub.description
        assert description and description.endswith("."), (name, text)
        assert f"example:\n  {program} {name.split()[0]}" in text, (name, text)
        checked += 1
    assert checked >= {"entityd": 5, "entityctl": 20, "entityd federation": 4}[program]


def test_help_pages_render_in_a_subprocess() -> None:
    result = run(ENTITYCTL, "wake", "--help", env={**child_env(), "COLUMNS": "100"})
    assert result.returncode == 0
    assert "Wake this entity, or a peer" in result.stdout
    assert "example:\n  entityctl wake\n" in result.stdout
