"""The daemon's commits: nothing the agent planted in .git runs, and droppings stay out."""

from __future__ import annotations

from pathlib import Path

from actors.sandbox import WORKSPACE_MOUNT
from actors.workspace import Workspace
from tests.test_tool_actor import SANDBOX


def _plant(path: Path, marker: Path) -> None:
    # Git runs in the sandbox, where the host path does not exist: the program also
    # marks the workspace (its working directory there), so a run would show.
    path.write_text(f"#!/bin/sh\ntouch {marker} RAN-{marker.name}\nexit 0\n")
    path.chmod(0o755)


async def test_commit_runs_no_hook_and_no_fsmonitor(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws", "entity-a", SANDBOX)
    await workspace.ensure()
    git_dir = workspace.path / ".git"
    markers = tmp_path / "markers"
    markers.mkdir()
    for hook in ("pre-commit", "commit-msg", "post-commit", "prepare-commit-msg"):
        _plant(git_dir / "hooks" / hook, markers / hook)
    _plant(workspace.path / "fsmonitor.sh", markers / "fsmonitor")
    # What an agent would plant if .git were writable: the repository's own config, with
    # the paths git sees where it runs (the sandbox's /workspace).
    with (git_dir / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {WORKSPACE_MOUNT}/fsmonitor.sh\n"
                     f"\thooksPath = {WORKSPACE_MOUNT}/.git/hooks\n")

    (workspace.path / "work.py").write_text("print('work')\n")
    commit = await workspace.commit("Add work\n\nentityd task t1")

    assert commit is not None
    assert "work.py" in commit.diffstat and "fsmonitor.sh" in commit.diffstat
    assert list(markers.iterdir()) == []
    assert not list(workspace.path.rglob("RAN-*"))
    assert await workspace.head() == commit.sha


async def test_build_droppings_are_not_committed_and_no_change_means_no_commit(
    tmp_path: Path,
) -> None:
    workspace = Workspace(tmp_path / "ws", "entity-a", SANDBOX)
    await workspace.ensure()
    (workspace.path / "__pycache__").mkdir()
    (workspace.path / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (workspace.path / "m.py").write_text("x = 1\n")
    commit = await workspace.commit("Add m")
    assert commit is not None
    files = await workspace.git("show", "--name-only", "--format=", "HEAD")
    assert files.split() == ["m.py"]
    assert await workspace.commit("Nothing new") is None
