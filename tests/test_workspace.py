"""The daemon's commits: nothing the agent planted in .git runs, and droppings stay out."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from actors.sandbox import WORKSPACE_MOUNT
from actors.sandbox.shell import Shell
from actors.workspace import GitError, Workspace
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


async def test_sandboxes_starting_together_on_a_fresh_workspace_all_start(
        tmp_path: Path) -> None:
    """At a daemon's first start several actors reach the sandbox at once while the
    workspace has no repository yet (the coder's and the services' git through one
    Workspace, the tool actor's shell through a Shell of its own). Each sandbox mounts an
    empty placeholder over .git and takes it away after: none may take another's
    placeholder for a repository (bwrap then failed to start, and the shell stayed
    unavailable for the daemon's life)."""
    path = tmp_path / "ws"
    workspace = Workspace(path, "entity-a", SANDBOX)
    tool_shell = Shell(SANDBOX, path)

    async def tool_actor() -> str | None:
        problem = await tool_shell.probe()
        for _ in range(3):
            assert (await tool_shell.run("true")).exit_code == 0
        return problem

    results = await asyncio.gather(workspace.ensure(), workspace.head(), tool_actor(),
                                   workspace.head(), return_exceptions=True)
    problems = [r for r in results if isinstance(r, BaseException)]
    assert not problems, problems
    assert results[2] is None, results[2]  # the tool actor's sandbox is available
    assert (path / ".git" / "HEAD").exists()  # the repository the daemon made
    (path / "a.txt").write_text("a\n")
    made = await workspace.commit("first")
    assert made is not None and await workspace.head() == made.sha


async def test_the_history_cannot_grow_past_the_quota(tmp_path: Path) -> None:
    """The quota's scan leaves .git out, and the agent cannot write there, but each commit
    adds to it what the tree holds: filled, committed, emptied and filled again, a tree
    under its quota would grow the history without end. Past the quota, commits stop."""
    small = dataclasses.replace(SANDBOX, workspace_mb=1)
    workspace = Workspace(tmp_path / "ws", "entity-a", small)
    await workspace.ensure()
    commits = 0
    with pytest.raises(GitError, match=r"repository \(\.git\) holds .* past the workspace's "
                                       r"quota of 1 MiB"):
        for round_ in range(6):  # 700 KB of noise a round: the history passes 1 MiB soon
            (workspace.path / "blob.bin").write_bytes(os.urandom(700_000))
            assert await workspace.commit(f"round {round_}") is not None
            commits += 1
            (workspace.path / "blob.bin").unlink()
            assert await workspace.commit(f"round {round_} emptied") is not None
    assert 1 <= commits < 6
    (workspace.path / "small.txt").write_text("x\n")
    with pytest.raises(GitError, match="nothing more is committed"):
        await workspace.commit("still refused")
