"""Per-call totals, tried as a hostile agent would: a disk filler is stopped at the
workspace quota during the call (not per file), and the next call works. Real bwrap."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from actors.sandbox import Shell, prepare
from actors.sandbox.scan import scan
from tests.test_tool_actor import SANDBOX

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


async def test_a_disk_filler_is_killed_at_the_workspace_quota(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = dataclasses.replace(SANDBOX, timeout=60.0, workspace_mb=64, file_size_mb=4)
    shell = Shell(settings, ws)
    prepare(ws, (settings.uid, settings.gid) if shell.as_root else None)
    assert await shell.probe() is None
    # Many files, each under the per-file limit: only a per-call total stops this.
    filler = await shell.run("i=0; while :; do i=$((i+1)); head -c 4M /dev/zero > f$i || "
                             "exit 3; done")
    assert filler.over_quota and not filler.timed_out, filler
    assert "disk quota of 64 MiB" in filler.output
    used = scan(str(ws)).bytes
    # Stopped soon after the quota: by the next look at the disk (0.1 s here). At the
    # quota exactly is possible: the look counts allocated blocks, and a file being
    # written may hold blocks beyond its end that the file system trims once it closes.
    assert 64 * MiB <= used < 64 * MiB + 1024 * MiB, used

    # Over quota now: a call that does not grow the workspace runs, and can clean up.
    listed = await shell.run("ls | wc -l")
    assert listed.exit_code == 0 and not listed.over_quota
    cleaned = await shell.run("rm -f f* && echo clean")
    assert cleaned.exit_code == 0 and cleaned.output.startswith("clean\n")
    assert "over its disk quota" in cleaned.output  # no file could grow in it
    grows = await shell.run("head -c 1000 /dev/zero > g; echo $?")
    assert grows.output.startswith("0\n") and "over its disk quota" not in grows.output
    assert scan(str(ws)).bytes < MiB


HOG = """python3 -c "
import os, time
kids = []
for _ in range(8):
    pid = os.fork()
    if pid == 0:
        block = b'x' * (200 * 1024 * 1024)
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
killed = sum(os.waitpid(pid, 0)[1] != 0 for pid in kids)
print('children killed', killed)
" """


async def test_a_forking_memory_hog_is_held_to_the_call_total(tmp_path: Path) -> None:
    """Each child stays under the per-process limit (memory_mb of address space); only
    a per-call total stops eight of them together."""
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = dataclasses.replace(SANDBOX, timeout=60.0, memory_mb=512)
    shell = Shell(settings, ws)
    prepare(ws, (settings.uid, settings.gid) if shell.as_root else None)
    assert await shell.probe() is None
    if not shell.limits.enforced:
        pytest.skip(f"no per-call cgroup on this host: {shell.limits.description}")
    hog = await shell.run(HOG)
    assert hog.oom_killed, hog
    assert "memory limit was reached" in hog.output
    killed = int(hog.output.split("children killed")[1].split()[0])
    assert killed >= 5  # at most two of the eight 200 MiB children fit in 512 MiB
    after = await shell.run("python3 -c \"b = b'x' * (100 * 1024 * 1024); print('fine')\"")
    assert after.exit_code == 0 and after.output == "fine\n" and not after.oom_killed
