"""Each delegating peer's tasks work in a workspace of their own (actors/workspaces.py):
through the orchestrator, a peer's task reads and writes only its peer's workspace, its
coder commits there, and neither the entity's own work nor another peer's is in reach
(the scripted model of tests/peer_model.py: `CALL <tool> <json>`, and a delegated task
handed to the coder)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from actors.messages import Goal, ToolCall, ToolResult
from entityd.config import Config, EntitySection, WorkspaceSection
from tests.helpers import NatsServer
from tests.orchestrator_rig import entity_config, orchestrator_rig

ENTITY = "entity-w"
OWN, OF_A = "OWNER-7c1", "PEERA-7c1"


def _git_log(path: Path) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", str(path), "log",
                           "--all", "--name-only", "--format=%s"],
                          capture_output=True, text=True, check=True).stdout


async def test_a_peers_task_works_in_its_own_workspace(
        nats_server: NatsServer, tmp_path: Path) -> None:
    config = entity_config(tmp_path, ENTITY)
    goals = [
        Goal(f'CALL write_file {{"path": "own.txt", "content": "{OWN}"}}', task_id="t1"),
        Goal(f'CALL write_file {{"path": "a.txt", "content": "{OF_A}"}}',
             task_id="dlg-peer-a.1", source="peer:peer-a", private=True),
        Goal('CALL shell {"command": "cat *.txt; ls -a; ls -a ..; ls /"}',
             task_id="dlg-peer-b.1", source="peer:peer-b", private=True),
        Goal('CALL read_file {"path": "../peer-a/a.txt"}',
             task_id="dlg-peer-b.2", source="peer:peer-b", private=True),
        Goal("peer-b delegated a task to you: add two numbers",
             task_id="dlg-peer-b.3", source="peer:peer-b", private=True),
    ]
    async with orchestrator_rig(nats_server, tmp_path, config, coder=True) as rig:
        for goal in goals:
            answer = await rig.answer(goal)
            assert answer.data["task_id"] == goal.task_id, answer.data
            assert answer.data["ok"] is True, answer.data
        # A name that is no peer's names no workspace: refused, with the reason.
        refused = await rig.running.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool", ToolCall(
            "list_dir", {}, "ctl", workspace="../workspace"), 10.0)
        assert isinstance(refused.message, ToolResult) and not refused.message.ok
        assert "no such workspace" in refused.message.error, refused.message
    requests = [r.body for r in rig.server.requests]

    def tool_outputs(task: str) -> str:
        made = [r for r in requests if task in json.dumps(r["messages"][:2])]
        return "".join(m["content"] for r in made for m in r["messages"] if m["role"] == "tool")

    # Each wrote where its turn works: the operator's own workspace, peer A's.
    assert (config.workspace_dir / "own.txt").read_text() == OWN
    assert (config.workspace_of("peer-a") / "a.txt").read_text() == OF_A
    assert not (config.workspace_dir / "a.txt").exists()
    # Peer B's shell and files saw neither, not even with a path out of its workspace.
    seen_b = tool_outputs("ls -a ..")
    assert "workspace" in seen_b, seen_b[:2000]  # the shell ran: `ls /` shows its mount
    assert OWN not in seen_b and OF_A not in seen_b, seen_b[:2000]
    assert not re.search(r"^(own|a)\.txt$", seen_b, re.M), seen_b[-2000:]  # as ls lists
    escaped = tool_outputs("../peer-a/a.txt")
    assert OF_A not in escaped and "outside the workspace" in escaped, escaped[:2000]
    # Peer B's coding task was coded and committed in B's workspace, not the entity's.
    b = config.workspace_of("peer-b")
    assert (b / "calc.py").exists() and "calc.py" in _git_log(b)
    assert not (config.workspace_dir / "calc.py").exists()
    assert "calc.py" not in _git_log(config.workspace_dir)


def test_a_workspace_is_named_only_by_a_peers_name(tmp_path: Path) -> None:
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(tmp_path)))
    assert config.workspace_of("") == config.workspace_dir
    assert config.workspace_of("peer-a") == tmp_path / "peer-workspaces" / "peer-a"
    for bad in ("..", ".", "../workspace", "a/b", "Peer", "x" * 33, "a\x00", "peer-a\n"):
        with pytest.raises(ValueError, match="not a peer's name"):
            config.workspace_of(bad)
    # The entity's own workspace configured where a peer's tasks work: refused, not shared.
    inside = Config(entity=EntitySection(name=ENTITY, data_dir=str(tmp_path)),
                    workspace=WorkspaceSection(path="peer-workspaces/peer-a/mine"))
    with pytest.raises(ValueError, match=r"move workspace\.path"):
        inside.workspace_of("peer-a")
    with pytest.raises(ValueError, match=r"move workspace\.path"):
        inside.workspace_of("peer-b")  # any peer: the link could be planted at any name
