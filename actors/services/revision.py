"""One revision of a service: its snapshot directory and the sandbox it runs in, its
output, the proxy's connections to it, and one run of its process (`live`).

A run is the shell tool's sandbox (actors/sandbox/shell.py: the unprivileged uid, bwrap
with no network, a cleared environment, rlimits, a cgroup of its own) over the revision's
directory instead of the workspace, with no wall-clock limit: it runs until it exits or is
stopped, and the disk quota is watched while it runs. What happens to it is posted to the
service that owns it as records (Started, Ready, NotReady, Exited), so that the service
alone decides what follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..sandbox import Shell, ToolError
from ..sandbox.scan import scan
from ..sandbox.shell import HOST_ENV
from . import endpoint
from .manifest import ServiceSpec

KILL_GRACE_S = 5.0
DRAIN_OUTPUT_S = 1.0  # after the process ended, how long its last output may take to arrive
QUOTA_POLL_S = 2.0
READ_CHUNK = 1 << 16
FIRST_PAUSE_S = 0.02  # between two readiness requests, doubling up to
MAX_PAUSE_S = 0.25


class Output:
    """The newest `limit` bytes a revision's processes wrote (stdout and stderr)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def note(self, text: str) -> None:
        """A line of the daemon's own in the output (a start, a death)."""
        self.add(f"[entityd: {text}]\n".encode())

    def tail(self, size: int) -> tuple[bytes, int]:
        """The newest `size` bytes and how many older ones are not among them."""
        kept = bytes(self.data[-size:]) if size > 0 else b""
        return kept, self.total - len(kept)

    def text(self, size: int) -> str:
        return self.tail(size)[0].decode(errors="replace")


@dataclass(eq=False)
class Revision:
    service: str
    spec: ServiceSpec
    commit: str
    id: str  # <commit, 12 hex>.<attempt>
    directory: Path
    shell: Shell  # probed, over `directory`
    output: Output
    connections: int = 0  # proxied connections open to it
    ready: bool = False  # serving: its process runs and answered its readiness check
    retired: bool = False  # replaced; it goes once its connections are done
    stopping: bool = False  # stopped on purpose: its run kills its process and ends
    pid: int = 0  # its bwrap process while one runs
    kill_reason: str = ""
    task: asyncio.Task[None] | None = None  # the current run (`live`)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def uid(self) -> int:
        return self.shell.sandbox_uid

    def stop(self) -> None:
        """End its run: the process is killed (now, or as soon as it starts), and the run
        then cleans up after itself undisturbed. Cancelling the run instead could cut its
        cleanup short (the cgroup's removal awaits) if a second cancellation came."""
        self.stopping = True
        self.ready = False
        if self.pid:
            kill(self.pid)

    def enter(self) -> None:
        self.connections += 1
        self.idle.clear()

    def leave(self) -> None:
        self.connections -= 1
        if self.connections == 0:
            self.idle.set()


@dataclass(frozen=True)
class Started:
    rev: Revision
    pid: int


@dataclass(frozen=True)
class Ready:
    rev: Revision
    seconds: float


@dataclass(frozen=True)
class NotReady:
    rev: Revision
    reason: str


@dataclass(frozen=True)
class Exited:
    rev: Revision
    reason: str
    clean: bool  # exit code 0


Post = Callable[[object], None]


def environment(rev: Revision) -> dict[str, str]:
    """What the service finds in its (otherwise cleared) environment."""
    return {endpoint.SOCKET_ENV: endpoint.SOCKET_PATH, "ENTITYD_SERVICE": rev.service,
            "ENTITYD_REVISION": rev.id, "PYTHONUNBUFFERED": "1"}


async def live(rev: Revision, post: Post, ready_timeout: float, quota_bytes: int) -> None:
    """Run the revision's process once: Started, then Ready or NotReady, then (if it was
    ready) Exited. `rev.stop()` ends it like a death; cancelled, it kills the sandbox and
    posts nothing."""
    rev.kill_reason = ""
    if rev.stopping:
        return
    try:
        found = await rev.shell.scan()
        endpoint.remove_stale(rev.directory)
        argv = rev.shell.program_argv(rev.spec.command, found=found, env=environment(rev))
    except (ToolError, OSError) as exc:
        post(NotReady(rev, f"it could not be started: {exc}"))
        return
    rev.output.note(f"revision {rev.id} starting: {' '.join(rev.spec.command)[:300]}")
    async with rev.shell.limits.call() as cgroup:
        proc = await asyncio.create_subprocess_exec(
            *cgroup.prefix, *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=HOST_ENV,
            start_new_session=True)
        rev.pid = proc.pid
        if rev.stopping:  # stopped while it was starting
            kill(proc.pid)
        try:
            await _supervise(rev, proc, post, ready_timeout, quota_bytes)
        finally:
            kill(proc.pid)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_GRACE_S):
                    await proc.wait()
            if rev.pid == proc.pid:
                rev.pid = 0


async def _supervise(rev: Revision, proc: asyncio.subprocess.Process, post: Post,
                     ready_timeout: float, quota_bytes: int) -> None:
    post(Started(rev, proc.pid))
    began = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        pump = tasks.create_task(_pump(proc, rev.output))
        exited = tasks.create_task(proc.wait())
        quota = tasks.create_task(_watch_quota(rev, proc.pid, quota_bytes))
        why = await _until_ready(rev, exited, ready_timeout)
        if why is not None:
            kill(proc.pid)
        else:
            post(Ready(rev, time.monotonic() - began))
        code = await exited
        quota.cancel()
        await asyncio.wait({pump}, timeout=DRAIN_OUTPUT_S)
        pump.cancel()
    ended = describe(code)
    if rev.kill_reason:
        ended = f"{rev.kill_reason} ({ended})"
    rev.output.note(f"revision {rev.id} ended: {why or ended}")
    if why is not None:
        post(NotReady(rev, why if not rev.kill_reason else f"{why}: {rev.kill_reason}"))
    else:
        post(Exited(rev, ended, code == 0))


async def _until_ready(rev: Revision, exited: asyncio.Task[int], timeout: float) -> str | None:
    """None once GET `ready` answers 200; else why it never did."""
    last = "nothing listened on its socket"
    pause = FIRST_PAUSE_S
    try:
        async with asyncio.timeout(timeout):
            while True:
                if exited.done():
                    return f"it ended ({describe(exited.result())}) before it was ready"
                problem = await endpoint.check_ready(rev.directory, rev.uid, rev.spec.ready)
                if problem is None:
                    return None
                last = problem
                await asyncio.wait({exited}, timeout=pause)
                pause = min(pause * 2, MAX_PAUSE_S)
    except TimeoutError:
        return (f"it was not ready within {timeout:g} s (services.ready_timeout); "
                f"last: {last}")


async def _pump(proc: asyncio.subprocess.Process, output: Output) -> None:
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(READ_CHUNK):
        output.add(chunk)


async def _watch_quota(rev: Revision, pid: int, quota_bytes: int) -> None:
    """Stop the run once the revision's directory grows past the workspace's quota."""
    while True:
        await asyncio.sleep(QUOTA_POLL_S)
        try:
            found = await asyncio.to_thread(scan, str(rev.directory))
        except OSError:
            continue
        if found.bytes > quota_bytes:
            rev.kill_reason = (f"its directory grew past the disk quota of "
                               f"{quota_bytes // (1024 * 1024)} MiB (sandbox.workspace_mb)")
            kill(pid)
            return


def kill(pid: int) -> None:
    """SIGKILL the run's process group (bwrap): --die-with-parent and the pid namespace
    take everything inside with it, and the run's cgroup is emptied after."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def describe(code: int) -> str:
    if code < 0:
        return f"its sandbox was killed by {_signal_name(-code)}"
    if code > 128:
        return f"exit code {code} (killed by {_signal_name(code - 128)})"
    return f"exit code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
