"""How `entityd run` ends as a process: a daemon that gives up (past the restart budget,
or on a fatal error) exits 1 within 5 s, whatever threads are still alive, and leaves
no process behind (neither itself nor its embedded nats-server).

The crash loop is caused from outside, through NATS, by messages to an actor that
crashes on them (tests/faulty_entityd.py: the real process entry and actors, plus that
actor); the fatal error by killing the real `entityd`'s embedded nats-server.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import protocol
from entityd import config as config_mod
from entityd.client import EntityClient
from tests.faulty_entityd import CrashMe, Stick
from tests.helpers import DaemonProc, child_env, make_entity

pytestmark = pytest.mark.timeout(90)

EXIT_WITHIN_S = 5.0
FAULTY_ENTITYD = Path(__file__).with_name("faulty_entityd.py")


class FaultyDaemon(DaemonProc):
    """tests/faulty_entityd.py as a child process, restarting quickly after a crash."""

    def start(self) -> FaultyDaemon:
        with self.log_path.open("ab") as output:
            self.proc = subprocess.Popen(
                [sys.executable, str(FAULTY_ENTITYD), "run", "--config", str(self.config)],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return self


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie no one has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _process_tree(root: int) -> set[int]:
    """`root` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(parents.get(pid, []))
    return tree


def _embedded_server_pid(daemon: DaemonProc) -> int:
    match = re.search(r'"pid": (\d+), "url": "[^"]+", "event": "nats_server_ready"', daemon.log())
    assert match, daemon.log()
    return int(match.group(1))


def _started(daemon: DaemonProc) -> tuple[int, set[int]]:
    """Wait until the daemon serves; its embedded server's pid and its process tree."""
    daemon.wait_log('"entityd_ready"')
    server = _embedded_server_pid(daemon)
    assert daemon.proc is not None
    tree = _process_tree(daemon.proc.pid)
    assert {daemon.proc.pid, server} <= tree
    return server, tree


def _gave_up_at(daemon: DaemonProc, needle: str, timeout: float = 30.0) -> float:
    """The monotonic time at which `needle` showed in the log (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in daemon.log():
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"no {needle} within {timeout} s:\n{daemon.log()[-3000:]}")


def _assert_exits_1_leaving_nothing(daemon: DaemonProc, since: float, tree: set[int]) -> float:
    """Exit code 1 and no process of the tree left, both within EXIT_WITHIN_S of `since`;
    how long it took."""
    assert daemon.proc is not None
    try:
        code = daemon.proc.wait(max(0.0, since + EXIT_WITHIN_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise AssertionError(
            f"entityd still running {EXIT_WITHIN_S} s after it gave up:\n{daemon.log()[-3000:]}"
        ) from None
    assert code == 1, daemon.log()[-3000:]
    while (left := {pid for pid in tree if _alive(pid)}) and (
        time.monotonic() < since + EXIT_WITHIN_S
    ):
        time.sleep(0.01)
    assert not left, f"processes left {EXIT_WITHIN_S} s after entityd gave up: {left}"
    return time.monotonic() - since


async def _send(config: Path, actor: str, message: object, count: int = 1) -> None:
    async with EntityClient(config_mod.load(config)) as client:
        for _ in range(count):
            await client.tell(actor, message)


async def _ask(config: Path, actor: str, message: object) -> object:
    async with EntityClient(config_mod.load(config)) as client:
        return await client.ask(actor, message, timeout=10)


def _faulty(tmp_path: Path) -> tuple[Path, FaultyDaemon]:
    config = make_entity(tmp_path)
    env = child_env(ENTITYD_RUNTIME_RESTART_BUDGET="3", ENTITYD_RUNTIME_BACKOFF_INITIAL="0.01")
    return config, FaultyDaemon(config, tmp_path / "entityd.log", env=env).start()


def test_a_crash_loop_sent_through_nats_ends_the_process_with_1_within_5_s(
    tmp_path: Path,
) -> None:
    config, daemon = _faulty(tmp_path)
    try:
        _, tree = _started(daemon)
        # More crashes than the budget (3): each message queued meanwhile is served,
        # and crashes, after the restart. The memory actor's SQLite thread is alive.
        asyncio.run(_send(config, "crasher", CrashMe(), count=5))
        gave_up = _gave_up_at(daemon, '"restart_budget_exceeded"')
        _assert_exits_1_leaving_nothing(daemon, gave_up, tree)
    finally:
        daemon.kill()
    log = daemon.log()
    assert "actor crasher crashed 4 times within 60 s" in log
    assert '"nats_server_stopped"' in log  # a clean stop, not only its death signal


def test_a_cleanup_that_hangs_is_cut_short_and_the_process_still_exits_1(
    tmp_path: Path,
) -> None:
    config, daemon = _faulty(tmp_path)
    try:
        _, tree = _started(daemon)
        # A thread of the loop's default executor that never ends: asyncio.run waits
        # for it when it closes the loop, after the daemon has returned.
        assert asyncio.run(_ask(config, "stuck", Stick())) == protocol.Ack()
        asyncio.run(_send(config, "crasher", CrashMe(), count=5))
        gave_up = _gave_up_at(daemon, '"restart_budget_exceeded"')
        _assert_exits_1_leaving_nothing(daemon, gave_up, tree)
    finally:
        daemon.kill()
    assert '"entityd_exit_forced"' in daemon.log()


def test_a_fatal_error_ends_the_real_entityd_with_1_within_5_s(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        server, tree = _started(daemon)
        os.kill(server, signal.SIGKILL)
        gave_up = _gave_up_at(daemon, '"entityd_failed"')
        _assert_exits_1_leaving_nothing(daemon, gave_up, tree)
    finally:
        daemon.kill()
    assert "the embedded nats-server exited unexpectedly" in daemon.log()
