"""The pid files of `entityd up` (run/NAME.pid: pid and start time, so that a reused pid
is not taken for ours), by which a later `up` names leftovers of an earlier run, and
`down` and `ps` find the processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ...errors import EntitydError
from .plan import show

UP = "up"  # the pid file of `up` itself
STOP_TIMEOUT_S = 15.0  # per group of processes: then what is left is killed
POLL_S = 0.1


class Leftovers(EntitydError):
    """An earlier run on the same dir is still running."""


def run_dir(root: Path) -> Path:
    return root / "run"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), None if there is no such process
    or only its zombie (an orphan's, where no init reaps them, as in some containers)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def write_pid(root: Path, name: str, pid: int) -> None:
    path = run_dir(root) / f"{name}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_start_time(pid) or '?'}\n")


def running(root: Path) -> dict[str, int]:
    """The processes of a run on `root` that are still alive, by name (pid files whose
    process has the start time written there); the stale pid files are removed."""
    alive = {}
    for path in sorted(run_dir(root).glob("*.pid")):
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _start_time(pid) == started:
            alive[path.stem] = pid
        else:
            path.unlink(missing_ok=True)
    return alive


def check_no_leftovers(root: Path, file: Path) -> None:
    alive = running(root)
    if UP in alive:
        raise Leftovers(f"{root} is in use by a running `entityd up` (pid {alive[UP]}); see "
                        f"it with `entityd ps {file}`, stop it with `entityd down {file}`")
    if alive:
        raise Leftovers(f"leftovers of an earlier run on {root} are still running: "
                        f"{named(alive)}; "
                        f"stop them with `entityd down {file}`")


def named(alive: dict[str, int]) -> str:
    return ", ".join(f"{name} (pid {pid})" for name, pid in alive.items())


def kill(pid: int, sig: signal.Signals, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


async def stop_leftovers(root: Path) -> bool:
    """`entityd down`: the running `up` on root told to stop (it stops its children), or,
    with no `up` left, its children stopped directly. False if nothing was running."""
    alive = running(root)
    if not alive:
        return False
    targets = {UP: alive[UP]} if UP in alive else alive
    show(f"stopping {named(targets)}")
    for pid in targets.values():
        kill(pid, signal.SIGTERM)

    async def all_gone() -> bool:
        return not running(root)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3 * STOP_TIMEOUT_S):
            await until(all_gone)
    for name, pid in running(root).items():
        show(f"{name} (pid {pid}) did not stop; killing it")
        kill(pid, signal.SIGKILL, group=name != UP)
        kill(pid, signal.SIGKILL)
    return True


async def until(check: Callable[..., Awaitable[bool]], *args: Any) -> None:
    """Until `check(*args)` is true, asked every POLL_S (under the caller's deadline)."""
    while True:
        if await check(*args):
            return
        await asyncio.sleep(POLL_S)
