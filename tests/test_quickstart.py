"""The README's quick start as a newcomer runs it (issue 11): its ```sh blocks, read from
README.md at test time, run command by command in a fresh clone, each with the exit code
the README promises and, where it shows output, the key line of it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import BIN, REPO, free_port, free_port_range

pytestmark = pytest.mark.timeout(180)

README = REPO / "README.md"
PAIR, INSTALL, ONE = "Quick start: the pair", "Install", "Quick start: one entity"

# The Install block's commands that make and fill a venv: the test does not install
# (this machine's venv stands in, linked into the clone), and says so when it passes them.
NOT_RUN = {
    "python3 -m venv .venv": "the machine's venv is linked into the clone as .venv",
    ".venv/bin/pip install -e .": "the clone's code is what runs (PYTHONPATH=clone)",
}

# What a command that runs until Ctrl-C prints once it is ready to be used.
READY = {
    "./deploy/start-pair.sh": "pair ready",
    "entityd run": "entityd_ready",
    "entityctl watch": "Ctrl-C stops",  # the end of its banner, with or without --all
}

# Seconds a command may be run again until it succeeds with the key line: the README says
# the two find each other by their heartbeats within seconds of "pair ready", so peers and
# check run at once after it may come too early (entity-b refuses a key it has not seen
# yet), and a user would run them again.
AGAIN_FOR = {"peers": 10.0, "check": 10.0}

# The key line of each pair command's output, as its README comment describes it.
PAIR_SAYS = {
    "peers": ["entity-b", "heartbeat", "key", "may: talk"],
    "check": ["entity-b: alive", " ms"],
    "talk": ["(demo model)"],
    "restart": ["restarting memory"],
    "delegate": ["delivered", "(demo model)"],
    "tasks": ["to entity-b", "delivered"],
    "ask": ["(demo model)", "entity-b: alive"],  # the answer of its check_peer_alive
}


@dataclass
class Section:
    heading: str
    blocks: list[list[str]]  # each ```sh block's command lines, comments kept
    samples: list[list[str]] = field(default_factory=list)  # untagged ``` blocks: output


def sections() -> dict[str, Section]:
    """The README's level-2 sections that hold the quick start, with their code blocks."""
    found: dict[str, Section] = {}
    current: Section | None = None
    fence: str | None = None
    lines: list[str] = []
    for line in README.read_text().splitlines():
        if fence is not None:
            if line.startswith("```"):
                if current is not None:
                    target = current.blocks if fence == "sh" else current.samples
                    target.append(lines)
                fence = None
            else:
                lines.append(line)
            continue
        if line.startswith("```"):
            fence, lines = line[3:].strip(), []
        elif line.startswith("## "):
            heading = line[3:].strip()
            current = found.setdefault(heading, Section(heading, [])) \
                if heading in (PAIR, INSTALL, ONE) else None
    return found


def entityctl_interrupted_code() -> int:
    """The exit code entityctl's table in the README gives an interrupted (Ctrl-C) command."""
    row = re.search(r"^\| (\d+) \| interrupted \(Ctrl-C\)", README.read_text(), re.M)
    assert row, "the README's entityctl exit codes name no code for Ctrl-C"
    return int(row.group(1))


def commands(block: list[str]) -> list[str]:
    return [line.strip() for line in block if line.strip() and not line.startswith("#")]


def program(command: str) -> str:
    """The command without its comment and arguments past the subcommand."""
    words = shlex.split(command, comments=True)
    return " ".join(words[:2]) if words[0] in ("entityd", "entityctl") else words[0]


class Shell:
    """A terminal: commands run one by one in the clone, `export` changes what follows."""

    def __init__(self, cwd: Path, env: dict[str, str], log: list[str]) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self.log = log

    def export(self, command: str) -> None:
        out = subprocess.run(["bash", "-c", f"{command}\nenv -0"], cwd=self.cwd, env=self.env,
                             capture_output=True, check=True).stdout.decode()
        self.env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        self.log.append(f"$ {command}\n  exit {done.returncode} in "
                        f"{time.monotonic() - started:.1f} s\n{done.stdout}{done.stderr}")
        return done

    def background(self, command: str, output: Path) -> Background:
        self.log.append(f"$ {command} &  (output in {output})")
        return Background(command, self, output)


class Background:
    """A command that runs until Ctrl-C, in its own process group as a terminal's job."""

    def __init__(self, command: str, shell: Shell, output: Path) -> None:
        self.command = command
        self.output_path = output
        with output.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "-c", command], cwd=shell.cwd, env=shell.env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            assert self.proc.poll() is None, \
                f"{self.command} exited ({self.proc.returncode}):\n{self.output()}"
            assert time.monotonic() < deadline, \
                f"{self.command} did not print {needle!r} within {timeout} s:\n{self.output()}"
            time.sleep(0.2)

    def ctrl_c(self, timeout: float = 40) -> int:
        """SIGINT to the job's process group, as a terminal's Ctrl-C; its exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def ours(tmp_path: Path) -> list[str]:
    """Processes started from this test's clone or home (their environment names it)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if str(tmp_path).encode() in environ + cmdline:
            found.append(f"{proc.name}: {cmdline.decode(errors='replace')}")
    return found


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of this repository's HEAD, with this machine's venv as its .venv."""
    repo = tmp_path / "entityd"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(repo)], check=True)
    # A .venv of the clone's own holding only the commands: start-pair.sh installs into a
    # venv with no install stamp of its own, so this one is used as it is.
    (repo / ".venv").mkdir()
    (repo / ".venv" / "bin").symlink_to(BIN)
    yield repo
    for line in ours(tmp_path):  # after a failure: nothing of ours outlives the test
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def base_env(tmp_path: Path, clone: Path) -> dict[str, str]:
    """A newcomer's environment: a home in tmp_path, no model keys (the demo model), no
    entityd or pair settings of the caller's, the machine's venv first on PATH."""
    env = {name: value for name, value in os.environ.items()
           if not (name.endswith("_API_KEY") or name.startswith(("ENTITYD_", "PAIR_"))
                   or name in ("NOTIFY_SOCKET", "PYTHONPATH", "VIRTUAL_ENV"))}
    home = tmp_path / "home"
    home.mkdir()
    env.update(HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(clone))
    return env


def test_readme_quick_start_runs_command_by_command(
    tmp_path: Path, clone: Path, base_env: dict[str, str],
) -> None:
    found = sections()
    assert set(found) == {PAIR, INSTALL, ONE}, f"README sections missing: {found.keys()}"
    log: list[str] = []
    jobs: list[Background] = []
    try:
        run_pair(found[PAIR], clone, base_env, tmp_path, log, jobs)
        installed = run_install(found[INSTALL], clone, base_env, log)
        run_one_entity(found[ONE], clone, installed, tmp_path, log, jobs)
        assert ours(tmp_path) == [], "left running after Ctrl-C"
    finally:
        print("\n".join(log))  # pytest shows it when the test fails, or with -s
        for job in jobs:
            print(f"--- {job.command}\n{job.output()}")
            job.kill()


def run_pair(section: Section, clone: Path, base_env: dict[str, str], tmp_path: Path,
             log: list[str], jobs: list[Background]) -> None:
    # The README's own knob for the pair's six fixed ports.
    env = dict(base_env, PAIR_BASE_PORT=str(free_port_range(6)))
    assert len(section.blocks) == 2, "the pair: its start, then commands against it"
    (start,), against = (commands(block) for block in section.blocks)
    assert program(start) in READY, start
    pair = Shell(clone, env, log).background(start, tmp_path / "pair.out")
    jobs.append(pair)
    pair.wait_for(READY[program(start)], timeout=60)

    shell = Shell(clone, env, log)  # "in another terminal, from the repository's root"
    for command in against:
        run_command(shell, command, tmp_path, jobs, PAIR_SAYS)

    assert pair.ctrl_c() == 0, pair.output()  # "Ctrl-C stops everything cleanly"
    assert "pair stopped" in pair.output()
    assert "Traceback" not in pair.output()
    assert ours(tmp_path) == [], "left running after the pair's Ctrl-C"

    # "Run it again and the same keys and data are used."
    keys = {path: path.read_bytes() for path in (clone / ".pair").glob("*/keys/entity.key")}
    assert len(keys) == 2, keys
    again = Shell(clone, env, log).background(start, tmp_path / "pair-again.out")
    jobs.append(again)
    again.wait_for(READY[program(start)], timeout=60)
    assert "first run" not in again.output()
    assert {path: path.read_bytes() for path in keys} == keys
    assert again.ctrl_c() == 0, again.output()
    assert "pair stopped" in again.output()
    assert "Traceback" not in again.output()
    assert ours(tmp_path) == [], "left running after the second pair's Ctrl-C"


def run_install(section: Section, clone: Path, base_env: dict[str, str],
                log: list[str]) -> dict[str, str]:
    """The Install block's exports, the environment "one entity" goes on in."""
    (block,) = section.blocks
    shell = Shell(clone, base_env, log)
    for command in commands(block):
        bare = shlex.join(shlex.split(command, comments=True))
        if bare in NOT_RUN:
            log.append(f"$ {command}\n  not run: {NOT_RUN[bare]}")
            continue
        assert command.startswith("export "), f"an Install command not known here: {command}"
        shell.export(command)
    assert shell.env["PATH"].split(":")[0] == str(clone / ".venv" / "bin")
    return shell.env


def run_one_entity(section: Section, clone: Path, installed: dict[str, str], tmp_path: Path,
                   log: list[str], jobs: list[Background]) -> None:
    # nats.port is 4222 by default; the README's ENTITYD_<SECTION>_<KEY> moves it.
    env = dict(installed, ENTITYD_NATS_PORT=str(free_port()))
    assert len(section.blocks) == 2, "one entity: init and run, then commands against it"
    first, against = (commands(block) for block in section.blocks)
    shell = Shell(clone, env, log)
    daemon = None
    for command in first:
        if program(command) in READY:
            daemon = shell.background(command, tmp_path / "entityd.out")
            jobs.append(daemon)
            daemon.wait_for(READY[program(command)], timeout=30)
        else:
            done = shell.run(command)
            assert done.returncode == 0, done.stderr
            if program(command) == "entityd init":
                assert "wrote " in done.stdout and "entityd.toml" in done.stdout
    assert daemon is not None, "the one entity's section does not start entityd run"

    (sample,) = section.samples  # the status the README shows
    other = Shell(clone, env, log)  # "in another terminal"
    for command in against:
        done = other.run(command)
        assert done.returncode == 0, done.stdout + done.stderr
        if "--json" in command:
            assert {a["name"] for a in json.loads(done.stdout)["actors"]} >= {"health", "peer"}
        else:
            assert_like_sample(done.stdout, sample)

    assert daemon.ctrl_c() == 0, daemon.output()  # "Ctrl-C or SIGTERM stops it"
    assert "entityd_stopped" in daemon.output()
    assert "Traceback" not in daemon.output()


def assert_like_sample(stdout: str, sample: list[str]) -> None:
    """Every labelled line of the README's sample is there, and each actor line exactly."""
    for line in sample:
        label = re.match(r"^([a-z ]+):", line)
        if label:
            assert re.search(rf"^{label.group(1)}:", stdout, re.M), f"no {line!r} in\n{stdout}"
        elif line.startswith("  "):
            assert line in stdout.splitlines(), f"no {line!r} in\n{stdout}"
    assert "entity:      entity-a" in stdout


def run_command(shell: Shell, command: str, tmp_path: Path, jobs: list[Background],
                says: dict[str, list[str]]) -> None:
    if command.startswith("export "):
        shell.export(command)
        return
    name = program(command)
    if name in READY:  # runs until Ctrl-C: start it, see it ready, stop it
        job = shell.background(command, tmp_path / f"{name.replace(' ', '-')}.out")
        jobs.append(job)
        job.wait_for(READY[name], timeout=15)
        assert name.startswith("entityctl "), command
        code = job.ctrl_c(timeout=15)
        assert code == entityctl_interrupted_code(), \
            f"{command}: exit {code} on Ctrl-C\n{job.output()}"
        assert "Traceback" not in job.output()
        return
    subcommand = name.split()[-1]
    needles = says.get(subcommand, [])
    deadline = time.monotonic() + AGAIN_FOR.get(subcommand, 0)
    while True:
        done = shell.run(command, timeout=60)
        said = done.returncode == 0 and all(needle in done.stdout for needle in needles)
        if said or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stdout, f"{command}: no {needle!r} in\n{done.stdout}"
