"""The orchestrator uses an MCP server's tool: its operator turn is offered the approved
tool as mcp__notes__echo and calls it through the tool actor (a scripted model:
tests/peer_model.py's `CALL <tool> <json>`); a peer's turn is not offered it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors.mcp import McpApprove, McpApproved
from actors.messages import Goal
from tests.helpers import NatsServer
from tests.orchestrator_rig import entity_config, orchestrator_rig
from tests.test_mcp import ENTITY, SERVER, mcp_table, server_config, skip_without_host_python


def _tools(request: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or []}


async def test_the_orchestrator_calls_an_approved_mcp_tool(
        nats_server: NatsServer, tmp_path: Path) -> None:
    skip_without_host_python()
    config = entity_config(tmp_path, ENTITY, mcp=mcp_table(server_config(["echo"])))
    (config.data_dir / "mcp" / "notes").mkdir(parents=True)
    (config.data_dir / "mcp" / "notes" / "server.py").write_text(SERVER)
    async with orchestrator_rig(nats_server, tmp_path, config) as rig:
        approved = await rig.running.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool",
                                                McpApprove("notes"), 30.0)
        assert isinstance(approved.message, McpApproved)
        assert approved.message.pinned == ["echo"], approved.message
        goal = 'CALL mcp__notes__echo {"text": "from the orchestrator"}'
        answer = await rig.answer(Goal(goal, task_id="t1"))
        assert answer.data["task_id"] == "t1" and answer.data["ok"] is True, answer.data
        assert answer.data["text"] == "done: echo: from the orchestrator"

        await rig.answer(Goal('CALL mcp__notes__echo {"text": "from a peer"}', task_id="t2",
                              source="peer:entity-b", private=True))
    requests = [r.body for r in rig.server.requests]

    operator = [r for r in requests if "from the orchestrator" in json.dumps(r)]
    assert operator and "mcp__notes__echo" in _tools(operator[0])
    peer = [r for r in requests if "from a peer" in json.dumps(r) and _tools(r)]
    assert peer, "the peer's turn reached the model"
    assert not {name for r in peer for name in _tools(r) if name.startswith("mcp__")}
    # The model asked for it anyway: the peer's turn has no such tool.
    said = [m["content"] for r in peer for m in r["messages"] if m["role"] == "tool"]
    assert said and said[0].startswith("error: there is no tool 'mcp__notes__echo'")
