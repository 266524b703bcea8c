"""The orchestrator uses an MCP server's tool: its operator turn is offered the approved
tool as mcp__notes__echo and calls it through the tool actor (a scripted model:
tests/peer_model.py's `CALL <tool> <json>`); a peer's turn is not offered it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors.llm import ScriptedLLMServer, build_llm
from actors.mcp import McpApprove, McpApproved
from actors.memory import MemoryActor
from actors.messages import Goal, GoalAccepted
from actors.orchestrator import OrchestratorActor
from actors.tool import ToolActor
from entityd import identity
from entityd.config import Config, EntitySection, LlmSection
from protocol import ReplayGuard
from tests.helpers import NatsServer, running_actors
from tests.peer_model import route
from tests.test_failure_policy import ScriptedSource, next_event
from tests.test_mcp import ENTITY, SERVER, mcp_table, server_config, skip_without_host_python
from tests.test_tool_actor import SANDBOX


def _tools(request: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or []}


async def test_the_orchestrator_calls_an_approved_mcp_tool(
        nats_server: NatsServer, tmp_path: Path) -> None:
    skip_without_host_python()
    data = tmp_path / ENTITY
    data.mkdir()
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=SANDBOX,
                    mcp=mcp_table(server_config(["echo"])))
    (data / "mcp" / "notes").mkdir(parents=True)
    (data / "mcp" / "notes" / "server.py").write_text(SERVER)
    async with ScriptedLLMServer(route) as server:
        llm = build_llm(LlmSection(provider="scripted", base_url=server.base_url,
                                   max_retries=0), environ={}, workspace=None, budget=None)
        source = ScriptedSource(llm)
        factories: dict[str, Any] = {
            "memory": lambda: MemoryActor(tmp_path / "memory.db"),
            "tool": lambda: ToolActor(config),
            "orchestrator": lambda: OrchestratorActor(source, 6),
        }
        async with running_actors(nats_server.url, ENTITY, factories,
                                  events=f"fed.evt.{ENTITY}.>") as running:
            client = running.client
            approved = await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool",
                                        McpApprove("notes"), 30.0)
            assert isinstance(approved.message, McpApproved)
            assert approved.message.pinned == ["echo"], approved.message
            guard = ReplayGuard()
            goal = 'CALL mcp__notes__echo {"text": "from the orchestrator"}'
            accepted = await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/orchestrator",
                                        Goal(goal, task_id="t1"), 10.0)
            assert isinstance(accepted.message, GoalAccepted)
            answer = await next_event(running, guard, "answer", timeout=60.0)
            assert answer.data["task_id"] == "t1" and answer.data["ok"] is True, answer.data
            assert answer.data["text"] == "done: echo: from the orchestrator"

            peer_goal = Goal('CALL mcp__notes__echo {"text": "from a peer"}', task_id="t2",
                             source="peer:entity-b", private=True)
            accepted = await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/orchestrator",
                                        peer_goal, 10.0)
            assert isinstance(accepted.message, GoalAccepted)
            answer = await next_event(running, guard, "answer", timeout=60.0)
            await llm.aclose()
        requests = [r.body for r in server.requests]

    operator = [r for r in requests if "from the orchestrator" in json.dumps(r)]
    assert operator and "mcp__notes__echo" in _tools(operator[0])
    peer = [r for r in requests if "from a peer" in json.dumps(r) and _tools(r)]
    assert peer, "the peer's turn reached the model"
    assert not {name for r in peer for name in _tools(r) if name.startswith("mcp__")}
    # The model asked for it anyway: the peer's turn has no such tool.
    said = [m["content"] for r in peer for m in r["messages"] if m["role"] == "tool"]
    assert said and said[0].startswith("error: there is no tool 'mcp__notes__echo'")
