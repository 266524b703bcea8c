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
    assert 64 * MiB < used < 64 * MiB + 512 * MiB, used  # stopped soon after the quota

    # Over quota now: a call that does not grow the workspace runs, and can clean up.
    listed = await shell.run("ls | wc -l")
    assert listed.exit_code == 0 and not listed.over_quota
    cleaned = await shell.run("rm -f f* && echo clean")
    assert cleaned.exit_code == 0 and cleaned.output == "clean\n"
    assert scan(str(ws)).bytes < MiB
