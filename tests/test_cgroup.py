"""Per-call limits in real cgroups with real processes: a forking memory hog is stopped at
the call's memory total, a fork bomb at its task total, nothing outlives the call, and a
host without a writable cgroup says so ("rlimits only") instead of failing.

The calls run through `CallCgroup.prefix` alone, and once composed with the real sandbox
(prefix + `Shell.argv`), as the shell tool runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.sandbox import Shell, prepare
from actors.sandbox.cgroup import CallCgroup, CallLimits
from actors.sandbox.shell import HOST_ENV
from entityd.config import SandboxSection

MiB = 1024 * 1024
LIMIT = 256 * MiB
TASKS = 32
AS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent

# Forks `n` children that each write `mb` MiB and hold it for a while; reports how each
# ended. The children together want far more than the limit, each alone less or more.
HOG = """
import os, sys, time
n, mb = int(sys.argv[1]), int(sys.argv[2])
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        data = b"x" * (mb << 20)
        time.sleep(1.5)
        os._exit(0)
    kids.append(pid)
killed = survived = 0
for pid in kids:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9:
        killed += 1
    elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        survived += 1
print("killed", killed, "survived", survived, flush=True)
"""

# Forks until the kernel refuses; the children sleep and are left behind on exit.
FORKER = """
import os, time
kids = []
while True:
    try:
        pid = os.fork()
    except OSError as exc:
        print("refused", exc.errno, flush=True)
        break
    if pid == 0:
        os.close(1), os.close(2)  # so the caller's read ends with the forker
        time.sleep(60)
        os._exit(0)
    kids.append(pid)
print("forked", len(kids), *kids, flush=True)
"""


@pytest.fixture
def limits() -> Iterator[CallLimits]:
    found = CallLimits.detect(LIMIT, TASKS)
    if not found.enforced:
        pytest.skip(f"no writable cgroup on this host: {found.reason}")
    yield found
    found.close()


async def run(cgroup: CallCgroup, *argv: str, timeout: float = 20.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cgroup.prefix, *argv, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def members(group: Path) -> set[int]:
    return {int(pid) for pid in (group / "cgroup.procs").read_text().split()}


async def test_calls_at_once_leave_each_other_alone(limits: CallLimits) -> None:
    """A call starting (or ending) while another runs must not take the other's group
    for a leftover and kill what runs in it (the tool actor and the daemon's git share
    one CallLimits)."""
    async def long_call() -> tuple[int, str]:
        async with limits.call() as cgroup:
            return await run(cgroup, "/bin/sh", "-c", "sleep 1; echo survived")

    async def short_calls() -> None:
        await asyncio.sleep(0.2)
        for _ in range(3):
            async with limits.call() as cgroup:
                assert (await run(cgroup, "/bin/true"))[0] == 0

    async with asyncio.TaskGroup() as tasks:
        long = tasks.create_task(long_call())
        tasks.create_task(short_calls())
    assert long.result() == (0, "survived\n")


async def test_a_forking_memory_hog_is_stopped_at_the_call_total(limits: CallLimits) -> None:
    # Eight children of 96 MiB each: every one is under the limit, together three times it.
    async with limits.call() as hog:
        code, output = await run(hog, sys.executable, "-c", HOG, "8", "96")
        assert code == 0, output
        assert all(d.is_dir() for d in hog.dirs)
    killed, survived = int(output.split()[1]), int(output.split()[3])
    assert hog.oom_killed()
    assert killed + survived == 8 and survived * 96 * MiB < LIMIT, output
    usage = hog.usage()
    assert usage.peak_memory is not None and 0 < usage.peak_memory <= LIMIT
    assert not any(d.exists() for d in hog.dirs)

    async with limits.call() as after:
        code, output = await run(after, sys.executable, "-c",
                                 "data = b'x' * (64 << 20); print('ok', len(data) >> 20)")
    assert (code, output) == (0, "ok 64\n")
    assert not after.oom_killed() and not after.pids_refused()
    assert set(after.dirs).isdisjoint(hog.dirs)
    assert not any(d.exists() for d in after.dirs)


async def test_children_each_over_the_limit_are_killed(limits: CallLimits) -> None:
    async with limits.call() as hog:
        code, output = await run(hog, sys.executable, "-c", HOG, "8", "512")
    assert code == 0, output
    assert output.split()[:2] == ["killed", "8"], output
    assert hog.usage().oom_kills >= 8
    peak = hog.usage().peak_memory
    assert peak is not None and peak <= LIMIT


async def test_a_fork_bomb_stops_at_the_task_limit_and_nothing_outlives_the_call(
        limits: CallLimits) -> None:
    async with limits.call() as bomb:
        code, output = await run(bomb, sys.executable, "-c", FORKER)
        assert code == 0, output
        refused, forked = output.splitlines()
        kids = [int(pid) for pid in forked.split()[2:]]
        # The forker itself is one of the call's tasks (the prefix execs into it).
        assert refused == "refused 11" and len(kids) == TASKS - 1, output
        assert all(alive(pid) for pid in kids)
        assert bomb.pids_refused()
        assert members(bomb.dirs[-1]) == set(kids)
    assert not any(alive(pid) for pid in kids)
    assert bomb.usage().peak_tasks in (None, TASKS)
    assert not any(d.exists() for d in bomb.dirs)


async def test_a_process_that_detaches_is_killed_with_the_call(limits: CallLimits) -> None:
    async with limits.call() as call:
        code, output = await run(call, "/bin/sh", "-c",
                                 "setsid sleep 60 >/dev/null 2>&1 & echo $!")
        escaped = int(output)
        assert code == 0 and alive(escaped)
    assert not alive(escaped)
    assert not any(d.exists() for d in call.dirs)


async def test_cancelling_a_call_still_removes_its_group(limits: CallLimits) -> None:
    started = asyncio.Event()
    groups: list[CallCgroup] = []

    async def hold() -> None:
        async with limits.call() as call:
            groups.append(call)
            await run(call, "/bin/sh", "-c", "sleep 60 >/dev/null 2>&1 & echo started")
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    async with asyncio.timeout(10):
        await started.wait()
    sleeper = members(groups[0].dirs[0])
    assert len(sleeper) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(alive(pid) for pid in sleeper)
    assert not any(d.exists() for d in groups[0].dirs)


def test_detect_removes_a_dead_daemons_groups_and_keeps_others(
        limits: CallLimits) -> None:
    start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    pid, ns = os.getpid(), os.stat("/proc/self/ns/pid").st_ino
    # Our pid with another start time is how a dead daemon's pid looks once reused.
    dead = [parent / f"{ns}-{pid}-{int(start) + 1}-7" for parent in limits.parents]
    live = [parent / f"{ns}-{pid}-{start}-other" for parent in limits.parents]
    # A daemon in another pid namespace: its pid says nothing about it here.
    foreign = [parent / f"{ns + 1}-{pid}-{int(start) + 1}-7" for parent in limits.parents]
    for group in dead + live + foreign:
        group.mkdir()
    leftover = subprocess.Popen(["sleep", "60"], start_new_session=True)
    theirs = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for group in dead:
            (group / "cgroup.procs").write_text(f"{leftover.pid}\n")
        for group in foreign:
            (group / "cgroup.procs").write_text(f"{theirs.pid}\n")
        again = CallLimits.detect(LIMIT, TASKS)
        assert again.enforced, again.description
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not any(group.exists() for group in dead)
        assert all(group.is_dir() for group in live + foreign)
        assert theirs.poll() is None
    finally:
        for process in (leftover, theirs):
            process.kill()
            process.wait()
        deadline = time.monotonic() + 5
        for group in dead + live + foreign:
            while group.exists() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):  # busy until the kill above lands
                    group.rmdir()
                time.sleep(0.01)


async def test_the_prefix_composes_with_the_real_sandbox(limits: CallLimits,
                                                          tmp_path: Path) -> None:
    """prefix + Shell.argv, as the shell tool runs a call: the hog and the bomb run as the
    sandbox uid inside bwrap and are held by the group the prefix joined as root."""
    # rlimits loose enough that only the cgroup can stop these commands.
    settings = SandboxSection(timeout=10.0, cpu_seconds=30, memory_mb=1024, file_size_mb=4,
                              max_processes=4096, max_open_files=256, output_limit=4000)
    workspace = tmp_path / "ws"
    prepare(workspace, (settings.uid, settings.gid) if AS_ROOT else None)
    shell = Shell(settings, workspace)
    if reason := await shell.probe():
        pytest.skip(f"the sandbox cannot run here: {reason}")

    async def sandboxed(command: str, timeout: float) -> tuple[int | None, str]:
        async with limits.call() as call:
            groups.append(call)
            proc = await asyncio.create_subprocess_exec(
                *call.prefix, *shell.argv(command), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env=HOST_ENV, start_new_session=True,
            )
            try:
                async with asyncio.timeout(timeout):
                    out, _ = await proc.communicate()
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)  # as the shell tool does at its timeout
                out, _ = await proc.communicate()
                return None, out.decode(errors="replace")
        return proc.returncode, out.decode(errors="replace")

    groups: list[CallCgroup] = []
    code, output = await sandboxed(f"python3 -c {shlex.quote(HOG)} 8 96; id -u", 30.0)
    assert code == 0, output
    assert output.splitlines()[-1] == str(shell.sandbox_uid)
    hog = groups[-1]
    assert hog.oom_killed() and int(output.split()[3]) * 96 * MiB < LIMIT, output
    peak = hog.usage().peak_memory
    assert peak is not None and peak <= LIMIT

    code, output = await sandboxed(f"python3 -c {shlex.quote(FORKER)}", 10.0)
    assert code == 0, output
    forked = int(output.split()[3])
    bomb = groups[-1]
    # bwrap, its init in the pid namespace and bash are tasks of the call too.
    assert bomb.pids_refused() and TASKS - 4 <= forked < TASKS, output
    assert bomb.usage().peak_tasks in (None, TASKS)

    code, output = await sandboxed("echo alive", 10.0)
    assert (code, output) == (0, "alive\n")
    for call in groups:
        assert not any(d.exists() for d in call.dirs)


def test_no_writable_cgroup_means_rlimits_only_with_the_reason() -> None:
    probe = ("from actors.sandbox.cgroup import CallLimits; "
             "limits = CallLimits.detect(256 << 20, 32); "
             "print(limits.enforced); print(limits.description)")
    if AS_ROOT:
        # The production daemon is not root: the same detect as an unprivileged uid.
        def as_nobody(code: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-B", "-c", code],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )

        if as_nobody("import actors.sandbox.cgroup").returncode != 0:
            pytest.skip(f"uid 65534 cannot run {sys.executable} with this checkout")
        done = as_nobody(probe)
        assert done.returncode == 0, done.stderr
        enforced, description = done.stdout.splitlines()
    else:
        found = CallLimits.detect(256 << 20, 32)
        if found.enforced:
            pytest.skip("this user has a writable (delegated) cgroup")
        enforced, description = str(found.enforced), found.description
    assert enforced == "False"
    assert description.startswith("rlimits only: ")
    assert "Permission denied" in description or "not available" in description, description


async def test_rlimits_only_still_runs_the_call(tmp_path: Path) -> None:
    limits = CallLimits.detect(LIMIT, TASKS, root=str(tmp_path))
    assert not limits.enforced
    assert limits.description == f"rlimits only: no cgroup filesystem at {tmp_path}"
    async with limits.call() as call:
        assert call.prefix == []
        assert await run(call, "/bin/echo", "ran") == (0, "ran\n")
    assert not call.oom_killed() and not call.pids_refused()


def fake_v2(tmp_path: Path, controllers: str, procs: list[int]) -> tuple[Path, Path]:
    """A v2 hierarchy's files as a directory tree, with this process in `svc`."""
    root = tmp_path / "cgroup"
    service = root / "svc"
    service.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (service / "cgroup.controllers").write_text(controllers + "\n")
    (service / "cgroup.type").write_text("domain\n")
    (service / "cgroup.subtree_control").write_text("\n")
    (service / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in procs))
    own = tmp_path / "self-cgroup"
    own.write_text("0::/svc\n")
    return root, own


def test_v2_without_delegated_controllers_is_rlimits_only(tmp_path: Path) -> None:
    root, own = fake_v2(tmp_path, "cpu io", [os.getpid()])
    limits = CallLimits.detect(LIMIT, TASKS, root=str(root), self_cgroup=str(own))
    assert not limits.enforced
    assert limits.reason == (f"the memory and pids controllers are not available in {root}/svc "
                             "(cgroup.controllers: cpu io); a systemd unit needs "
                             "Delegate=memory pids")


def test_v2_group_shared_with_other_processes_is_left_alone(tmp_path: Path) -> None:
    root, own = fake_v2(tmp_path, "memory pids", [1, os.getpid()])
    limits = CallLimits.detect(LIMIT, TASKS, root=str(root), self_cgroup=str(own))
    assert not limits.enforced
    assert "holds 1 processes that are not the daemon's" in limits.reason
    assert "Delegate=memory pids" in limits.reason
    assert not (root / "svc" / "entityd-daemon").exists()
    assert (root / "svc" / "cgroup.subtree_control").read_text() == "\n"


def test_this_hosts_v2_mount_without_controllers(tmp_path: Path) -> None:
    unified = Path("/sys/fs/cgroup/unified")
    if not (unified / "cgroup.controllers").exists():
        pytest.skip("no hybrid v2 mount at /sys/fs/cgroup/unified")
    if {"memory", "pids"} <= set((unified / "cgroup.controllers").read_text().split()):
        pytest.skip("the v2 mount has memory and pids here")
    own = tmp_path / "self-cgroup"
    own.write_text("0::/\n")
    limits = CallLimits.detect(LIMIT, TASKS, root=str(unified), self_cgroup=str(own))
    assert not limits.enforced
    assert limits.reason.startswith(f"the memory and pids controllers are not available in "
                                    f"{unified}")


# The daemon's side of the v2 test, run as its own process in a group of its own.
V2_DAEMON = """
import asyncio, json, sys
from actors.sandbox.cgroup import CallLimits
HOG, FORKER = sys.argv[1], sys.argv[2]

async def main():
    limits = await asyncio.to_thread(CallLimits.detect, 256 << 20, 32)
    report = {"enforced": limits.enforced, "description": limits.description,
              "own": open("/proc/self/cgroup").read().strip()}
    calls = {"hog": [sys.executable, "-c", HOG, "8", "96"],
             "forker": [sys.executable, "-c", FORKER],
             "after": [sys.executable, "-c", "print('ok')"]}
    for label, argv in calls.items() if limits.enforced else ():
        async with limits.call() as call:
            proc = await asyncio.create_subprocess_exec(
                *call.prefix, *argv, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            text, _ = await proc.communicate()
        usage = call.usage()
        report[label] = {"code": proc.returncode, "output": text.decode(),
                         "oom_kills": usage.oom_kills, "refused": usage.refused_forks,
                         "peak": usage.peak_memory,
                         "left": [str(d) for d in call.dirs if d.exists()]}
    limits.close()
    print(json.dumps(report))

asyncio.run(main())
"""


def test_v2_in_a_delegated_group() -> None:
    """On a cgroup v2 host: a daemon alone in a group that has memory and pids (what
    systemd's Delegate= gives a unit) moves itself into a leaf and bounds each call."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists():
        pytest.skip("this host's memory and pids controllers are on cgroup v1")
    if not AS_ROOT:
        pytest.skip("making a delegated group for the test daemon needs root")
    if not {"memory", "pids"} <= set((root / "cgroup.controllers").read_text().split()):
        pytest.skip("this host's cgroup v2 has no memory or pids controller")
    enabled = (root / "cgroup.subtree_control").read_text().split()
    wanted = " ".join(f"+{c}" for c in ("memory", "pids") if c not in enabled)
    if wanted:
        (root / "cgroup.subtree_control").write_text(wanted)
    service = root / f"entityd-test-{os.getpid()}"
    service.mkdir()
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", f'echo $$ > {service}/cgroup.procs && exec "$@"', "join",
             sys.executable, "-B", "-c", V2_DAEMON, HOG, FORKER],
            cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["enforced"], report["description"]
        assert report["description"].startswith("cgroup v2 per call: memory")
        assert report["own"] == f"0::/{service.name}/entityd-daemon"
        hog, forker, after = report["hog"], report["forker"], report["after"]
        assert hog["code"] == 0 and hog["oom_kills"] > 0, hog
        assert hog["peak"] is None or hog["peak"] <= LIMIT, hog
        survived = int(hog["output"].split()[3])
        assert survived * 96 * MiB < LIMIT, hog
        assert forker["refused"] > 0 and forker["output"].startswith("refused 11"), forker
        assert len(forker["output"].split()) == TASKS - 1 + 4, forker  # "refused", "forked"
        assert after["code"] == 0 and after["output"] == "ok\n", after
        assert not (hog["left"] or forker["left"] or after["left"])
    finally:
        _remove_tree(service)


def _remove_tree(group: Path) -> None:
    """Kill what is in a v2 group and its children, then remove them, deepest first."""
    kill = group / "cgroup.kill"
    deadline = time.monotonic() + 10
    for path in [*sorted((p for p in group.rglob("*") if p.is_dir()), reverse=True), group]:
        while path.exists() and time.monotonic() < deadline:
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):  # busy until the kills land
                path.rmdir()
            time.sleep(0.01)
