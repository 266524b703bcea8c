"""Per-call totals for the shell tool: each call runs in a fresh cgroup that bounds the
memory (swap included) and the number of tasks of everything the call starts, however it
forks. Where the host offers no writable cgroup the limits stay per process (rlimits
only); `CallLimits.description` then says why, which is a state to report, not an error.

Where the groups go. Call groups sit below the daemon's own cgroup, so a call is still
charged to whatever limit the host puts on the daemon (a group at the hierarchy root would
let a call escape it), and a systemd unit with `Delegate=memory pids` hands over exactly
this subtree:

    cgroup v1   <root>/memory/<daemon's memory group>/entityd-calls/<call>
                <root>/pids/<daemon's pids group>/entityd-calls/<call>
    cgroup v2   <daemon's group>/entityd-daemon        the daemon's processes, moved at detect
                <daemon's group>/entityd-calls/<call>  (v2 lets only leaves hold processes)

A call group is named `<pid namespace>-<pid>-<start time>-<n>` after the daemon process
that made it: detect() removes the groups of daemons that are gone (a crash's leftovers)
and leaves alone those of live daemons, in this process or another, and those made in
another pid namespace (a container sharing the hierarchy), whose pids mean nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from entityd import get_logger

from .errors import ToolError

log = get_logger("actors.sandbox")

MiB = 1024 * 1024
CALLS = "entityd-calls"
DAEMON_LEAF = "entityd-daemon"
CONTROLLERS = ("memory", "pids")
REMOVE_TIMEOUT = 5.0  # seconds to empty and remove one call group before giving up on it
SWEEP_TIMEOUT = 2.0  # the same for each leftover of a dead daemon, found at detect
PROBE_TIMEOUT = 10.0
_CALL_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)-\w+$")
_sequence = itertools.count(1)


class _NoCgroup(Exception):
    """Why per-call cgroups cannot be used here; becomes `rlimits only: <reason>`."""


@dataclasses.dataclass(frozen=True)
class CallUsage:
    """What one call's group counted: OOM kills, forks refused at the task limit, and
    the peaks where the kernel keeps them (memory includes swap where it is accounted)."""

    oom_kills: int = 0
    refused_forks: int = 0
    peak_memory: int | None = None
    peak_tasks: int | None = None


class CallCgroup:
    """One call's cgroup. Run the call as `[*prefix, *argv]`: the prefix moves its own
    process into the group and then execs the rest, so nothing the call starts can fork
    before it is inside. The counters stay readable after the group is removed."""

    def __init__(self, prefix: list[str], dirs: tuple[Path, ...],
                 read: Callable[[], CallUsage] | None) -> None:
        self.prefix = prefix
        self.dirs = dirs
        self._read = read
        self._final: CallUsage | None = None

    def usage(self) -> CallUsage:
        if self._final is not None:
            return self._final
        if self._read is None:
            return CallUsage()
        try:
            return self._read()
        except OSError:
            return CallUsage()

    def oom_killed(self) -> bool:
        """Whether the memory limit killed a process of this call."""
        return self.usage().oom_kills > 0

    def pids_refused(self) -> bool:
        """Whether a fork of this call failed at the task limit."""
        return self.usage().refused_forks > 0

    def _finish(self) -> None:
        self._final = self.usage()


class CallLimits:
    """Per-call memory and task limits, detected once (`detect`), then one `call()` per
    command. Without a usable cgroup `enforced` is False, `description` says why, and
    `call()` yields a group with an empty prefix, so callers need no second path."""

    def __init__(self, *, enforced: bool, description: str, reason: str = "",
                 tree: _Tree | None = None, memory_bytes: int = 0,
                 max_processes: int = 0) -> None:
        self.enforced = enforced
        self.description = description
        self.reason = reason  # why not enforced; empty when enforced
        self.memory_bytes = memory_bytes
        self.max_processes = max_processes
        self._tree = tree
        self._owner = _owner()
        self._leftovers: list[tuple[Path, ...]] = []

    @property
    def parents(self) -> tuple[Path, ...]:
        """The `entityd-calls` directories the call groups go in (none when not enforced)."""
        return self._tree.parents if self._tree else ()

    @classmethod
    def rlimits_only(cls, reason: str) -> CallLimits:
        return cls(enforced=False, description=f"rlimits only: {reason}", reason=reason)

    @classmethod
    def detect(cls, memory_bytes: int, max_processes: int, root: str = "/sys/fs/cgroup", *,
               self_cgroup: str = "/proc/self/cgroup") -> CallLimits:
        """Find a cgroup this process may create call groups in, remove the leftovers of
        dead daemons there, and prove it with a trial call. Blocks for milliseconds, up to
        seconds when leftovers hold processes: run it off the event loop."""
        try:
            tree = _find_tree(Path(root), _own_groups(self_cgroup))
            tree.adopt()
            tree.ensure_parents()
            _sweep(tree)
            swap = _trial(tree, memory_bytes, max_processes)
        except _NoCgroup as exc:
            return cls.rlimits_only(str(exc))
        except OSError as exc:
            where = exc.filename or root
            reason = f"cannot use the cgroup {where}: {exc.strerror or exc}"
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                reason += (f" (uid {os.geteuid()}; a daemon that is not root needs a "
                           "delegated cgroup, systemd: Delegate=memory pids)")
            return cls.rlimits_only(reason)
        except subprocess.SubprocessError as exc:
            return cls.rlimits_only(f"a trial call in a cgroup failed: {exc}")
        swap_note = "memory+swap" if swap else "memory (swap not accounted)"
        description = (f"cgroup v{tree.version} per call: {swap_note} "
                       f"{_mib(memory_bytes)}, {max_processes} tasks")
        return cls(enforced=True, description=description, tree=tree,
                   memory_bytes=memory_bytes, max_processes=max_processes)

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[CallCgroup]:
        """A fresh group for one call, removed afterwards with everything left in it."""
        if self._tree is None:
            yield CallCgroup([], (), None)
            return
        tree = self._tree
        self._retry_leftovers()
        name = f"{self._owner}-{next(_sequence)}"
        try:
            dirs = _create(tree, name, self.memory_bytes, self.max_processes)[0]
        except OSError as exc:
            raise ToolError(f"the per-call limits could not be set up: {exc}") from exc
        group = CallCgroup(_prefix(dirs), dirs, lambda: tree.usage(dirs))
        try:
            yield group
        finally:
            group._finish()
            # Only a group that could not be removed is a leftover: one in use is never
            # in that list, so another call's retry cannot remove it under its feet.
            if not await _remove_async(dirs, REMOVE_TIMEOUT):
                self._leftovers.append(dirs)
                log.error("cgroup_leftover", dirs=[str(d) for d in dirs])

    def close(self) -> None:
        """Remove the empty parents (a later call makes them again); best effort."""
        if self._tree is None:
            return
        self._retry_leftovers()
        for parent in self._tree.parents:
            with contextlib.suppress(OSError):  # busy: another daemon's call is in it
                parent.rmdir()

    def _retry_leftovers(self) -> None:
        for dirs in list(self._leftovers):
            if _removal_step(dirs):
                self._leftovers.remove(dirs)


class _Tree:
    """Where one cgroup version keeps the call groups, and its knobs and counters."""

    version: int
    parents: tuple[Path, ...]  # one `entityd-calls` per hierarchy the call joins

    def adopt(self) -> None:
        """Make the parents possible (v2: move the daemon out of the way)."""

    def ensure_parents(self) -> None:
        for parent in self.parents:
            parent.mkdir(exist_ok=True)

    def configure(self, dirs: tuple[Path, ...], memory_bytes: int, tasks: int) -> bool:
        """Set the limits; return whether swap is inside the memory limit."""
        raise NotImplementedError

    def usage(self, dirs: tuple[Path, ...]) -> CallUsage:
        raise NotImplementedError


class _V1(_Tree):
    version = 1

    def __init__(self, memory_parent: Path, pids_parent: Path) -> None:
        self.parents = (memory_parent, pids_parent)

    def configure(self, dirs: tuple[Path, ...], memory_bytes: int, tasks: int) -> bool:
        memory, pids = dirs
        _write(memory / "memory.limit_in_bytes", memory_bytes)
        swap = (memory / "memory.memsw.limit_in_bytes").exists()
        if swap:  # memory first: memsw may never be below it
            _write(memory / "memory.memsw.limit_in_bytes", memory_bytes)
        _write(pids / "pids.max", tasks)
        return swap

    def usage(self, dirs: tuple[Path, ...]) -> CallUsage:
        memory, pids = dirs
        peak = _number(memory / "memory.memsw.max_usage_in_bytes")
        return CallUsage(
            oom_kills=_field(memory / "memory.oom_control", "oom_kill"),
            refused_forks=_field(pids / "pids.events", "max"),
            peak_memory=peak if peak is not None else _number(
                memory / "memory.max_usage_in_bytes"),
            peak_tasks=_number(pids / "pids.peak"),
        )


class _V2(_Tree):
    version = 2

    def __init__(self, base: Path) -> None:
        self.base = base
        self.parents = (base / CALLS,)

    def adopt(self) -> None:
        """v2 lets a group enable controllers for its children only while it holds no
        processes (the real root excepted): move the daemon and its children into a leaf
        of their own, as systemd's delegation rules ask. Processes of anyone else in the
        group mean it was not delegated to this daemon: refuse rather than move them."""
        if not (self.base / "cgroup.type").exists():
            return  # the real root cgroup (it has no cgroup.type) may hold processes
        leaf = self.base / DAEMON_LEAF
        for attempt in range(6):  # children forked meanwhile show up in the next round
            held = _pids(self.base)
            if not held:
                return
            if attempt == 5:
                break
            foreign = held - _family(os.getpid())
            if foreign:
                raise _NoCgroup(
                    f"{self.base} holds {len(foreign)} processes that are not the daemon's, "
                    "so it cannot have limited groups below it; run the daemon in a cgroup "
                    "of its own (systemd: Delegate=memory pids)")
            leaf.mkdir(exist_ok=True)
            for pid in held:
                try:
                    _write(leaf / "cgroup.procs", pid)
                except ProcessLookupError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
        raise _NoCgroup(f"processes kept appearing in {self.base} while the daemon moved "
                        f"into {leaf}")

    def ensure_parents(self) -> None:
        _enable(self.base)
        super().ensure_parents()
        _enable(self.parents[0])

    def configure(self, dirs: tuple[Path, ...], memory_bytes: int, tasks: int) -> bool:
        (group,) = dirs
        _write(group / "memory.max", memory_bytes)
        swap = (group / "memory.swap.max").exists()
        if swap:
            _write(group / "memory.swap.max", 0)
        _write(group / "pids.max", tasks)
        return swap

    def usage(self, dirs: tuple[Path, ...]) -> CallUsage:
        (group,) = dirs
        return CallUsage(
            oom_kills=_field(group / "memory.events", "oom_kill"),
            refused_forks=_field(group / "pids.events", "max"),
            peak_memory=_number(group / "memory.peak"),
            peak_tasks=_number(group / "pids.peak"),
        )


def _find_tree(root: Path, own: dict[str, str]) -> _Tree:
    if (root / "cgroup.controllers").exists():
        if "" not in own:
            raise _NoCgroup("/proc/self/cgroup has no cgroup v2 entry")
        base = root / own[""].lstrip("/")
        if base.name == DAEMON_LEAF:  # moved there by an earlier detect in this process
            base = base.parent
        available = _read(base / "cgroup.controllers").split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise _NoCgroup(
                f"the {' and '.join(missing)} controller{'s are' if len(missing) > 1 else ' is'}"
                f" not available in {base} (cgroup.controllers: {' '.join(available) or 'none'})"
                "; a systemd unit needs Delegate=memory pids")
        return _V2(base)
    mounts = {c: root / c for c in CONTROLLERS}
    if not any((path / "cgroup.procs").exists() for path in mounts.values()):
        raise _NoCgroup(f"no cgroup filesystem at {root}")
    parents = []
    for controller, mount in mounts.items():
        if not (mount / "cgroup.procs").exists():
            raise _NoCgroup(f"the cgroup v1 {controller} controller is not mounted at {mount}")
        if controller not in own:
            raise _NoCgroup(f"/proc/self/cgroup names no {controller} group")
        parents.append(mount / own[controller].lstrip("/") / CALLS)
    return _V1(*parents)


def _own_groups(self_cgroup: str) -> dict[str, str]:
    """controller -> this process's group path; "" for the v2 hierarchy."""
    groups: dict[str, str] = {}
    for line in _read(Path(self_cgroup)).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path
    return groups


def _create(tree: _Tree, name: str, memory_bytes: int, tasks: int) -> tuple[tuple[Path, ...], bool]:
    """mkdir the call's group in every hierarchy and set its limits; nothing is left
    behind on failure. A parent removed meanwhile (`close` in another daemon of this
    process) is made again."""
    for attempt in range(3):
        tree.ensure_parents()
        dirs = tuple(parent / name for parent in tree.parents)
        made: list[Path] = []
        try:
            for path in dirs:
                path.mkdir()
                made.append(path)
            return dirs, tree.configure(dirs, memory_bytes, tasks)
        except FileNotFoundError:
            _remove_now(tuple(made), SWEEP_TIMEOUT)
            if attempt == 2:
                raise
        except BaseException:
            _remove_now(tuple(made), SWEEP_TIMEOUT)
            raise
    raise AssertionError("unreachable")


def _trial(tree: _Tree, memory_bytes: int, tasks: int) -> bool:
    """One real call: make a group, move a process in through the prefix, remove it."""
    dirs, swap = _create(tree, f"{_owner()}-probe{next(_sequence)}", memory_bytes, tasks)
    try:
        done = subprocess.run([*_prefix(dirs), "/bin/true"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    finally:
        if not _remove_now(dirs, SWEEP_TIMEOUT):
            raise _NoCgroup(f"a trial group could not be removed: {', '.join(map(str, dirs))}")
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-300:] or "no error output"
        raise _NoCgroup(f"a process could not join a trial group (exit {done.returncode}): "
                        f"{detail}")
    return swap


def _prefix(dirs: tuple[Path, ...]) -> list[str]:
    moves = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in dirs)
    return ["/bin/sh", "-c", f'{moves} && exec "$@"', "entityd-cgroup"]


def _sweep(tree: _Tree) -> None:
    """Remove the call groups of daemon processes that no longer exist."""
    for parent in tree.parents:
        for entry in sorted(parent.iterdir()):
            match = _CALL_NAME.match(entry.name)
            if not entry.is_dir() or not match or int(match[1]) != _pid_namespace():
                continue
            if _alive(int(match[2]), match[3]):
                continue
            if _remove_now((entry,), SWEEP_TIMEOUT):
                log.info("cgroup_leftover_removed", path=str(entry))
            else:
                log.error("cgroup_leftover", dirs=[str(entry)])


def _removal_step(dirs: Iterable[Path]) -> bool:
    """Kill whatever is in the groups and remove the empty ones; True once all are gone."""
    remaining = [d for d in dirs if d.exists()]
    for group in remaining:
        _kill(group)
    for group in remaining:
        try:
            if _pids(group):
                return False
            group.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                log.warning("cgroup_rmdir_failed", path=str(group), error=str(exc))
            return False
    return True


def _remove_now(dirs: tuple[Path, ...], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = 0.002
    while not _removal_step(dirs):
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    return True


async def _remove_async(dirs: tuple[Path, ...], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = 0.002
    while not _removal_step(dirs):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)
    return True


def _kill(group: Path) -> None:
    """SIGKILL everything in the group: v2's cgroup.kill does it atomically (Linux 5.14);
    otherwise each listed process, and the caller's next round gets what they forked."""
    kill_file = group / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            _write(kill_file, 1)
            return
    try:
        held = _pids(group)
    except OSError:
        return
    for pid in held:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _enable(group: Path) -> None:
    """Let `group`'s children have the memory and pids controllers (v2)."""
    enabled = _read(group / "cgroup.subtree_control").split()
    wanted = [c for c in CONTROLLERS if c not in enabled]
    if wanted:
        _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))


def _pids(group: Path) -> set[int]:
    return {int(line) for line in _read(group / "cgroup.procs").split()}


def _family(pid: int) -> set[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat:
                children.setdefault(int(stat[1]), []).append(int(entry))
    family, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in family:
            family.add(current)
            todo += children.get(current, [])
    return family


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state on (field 3), past the command name."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[19] if stat else None  # field 22, starttime in clock ticks since boot


def _alive(pid: int, start: str) -> bool:
    """Whether the process that named a group still runs (a reused pid starts later)."""
    return _start_time(pid) == start


def _owner() -> str:
    pid = os.getpid()
    return f"{_pid_namespace()}-{pid}-{_start_time(pid) or 0}"


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _read(path: Path) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: Path, value: object) -> None:
    """Write a knob that must exist (no O_CREAT: a missing knob is an error, not a file)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


def _number(path: Path) -> int | None:
    try:
        text = _read(path).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _field(path: Path, key: str) -> int:
    """A `key value` line of a flat-keyed file (memory.events, pids.events, oom_control)."""
    try:
        text = _read(path)
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _mib(size: int) -> str:
    return f"{size // MiB} MiB" if size % MiB == 0 else f"{size} bytes"


class SharedLimits:
    """One detection per daemon, shared by its shells (the tool actor's and the
    workspace's git), so a restarted actor does not detect again and status can say
    which limits are in force."""

    def __init__(self, memory_bytes: int, max_processes: int) -> None:
        self.memory_bytes = memory_bytes
        self.max_processes = max_processes
        self._limits: CallLimits | None = None
        self._lock = asyncio.Lock()

    @property
    def description(self) -> str:
        """What is in force, or empty before the first shell has started."""
        return self._limits.description if self._limits else ""

    async def get(self) -> CallLimits:
        async with self._lock:
            if self._limits is None:
                self._limits = await asyncio.to_thread(
                    CallLimits.detect, self.memory_bytes, self.max_processes)
                log.info("sandbox_limits", limits=self._limits.description)
            return self._limits

    def close(self) -> None:
        if self._limits is not None:
            self._limits.close()
