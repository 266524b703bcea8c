"""The entity as an A2A client: against an A2A agent built here from a2a-sdk's server
classes (an executor that answers at once, served by uvicorn on loopback), the
orchestrator's turn (a scripted model: `CALL delegate_to_a2a_agent {...}`) gives the
agent a task and answers with its result; an agent not in [a2a] agents is refused, and
the client's card check tells a signed card from a tampered one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from a2a.helpers.proto_helpers import new_task, new_text_artifact
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from starlette.applications import Starlette

from actors.a2a import card, client
from actors.a2a.tools import A2ATools
from actors.agent.toolbox import ToolFailed
from actors.llm import ScriptedLLMServer, build_llm
from actors.memory import MemoryActor
from actors.messages import Goal, GoalAccepted
from actors.orchestrator import OrchestratorActor
from actors.web.server import WebServer, bind
from entityd.config import Config, EntitySection, LlmSection
from protocol import ReplayGuard
from tests.helpers import NatsServer, running_actors
from tests.peer_model import route
from tests.test_failure_policy import ScriptedSource, next_event

ENTITY = "entity-a"


class Echo(AgentExecutor):
    """The outside agent: a task that completes at once with what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        self.asked.append(text)
        task_id, context_id = context.task_id or "", context.context_id or ""
        await event_queue.enqueue_event(new_task(task_id, context_id,
                                                 TaskState.TASK_STATE_SUBMITTED))
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.add_artifact(new_text_artifact("r", f"remote did: {text}").parts)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


@asynccontextmanager
async def outside_agent(executor: Echo) -> AsyncIterator[str]:
    sock = bind("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    agent_card = AgentCard(
        name="helper", description="an A2A agent of the test", version="1",
        supported_interfaces=[AgentInterface(url=base + "rpc", protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True), default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echoes", tags=["echo"])])
    handler = DefaultRequestHandlerV2(executor, InMemoryTaskStore(), agent_card)
    app = Starlette(routes=[*create_agent_card_routes(agent_card),
                            *create_jsonrpc_routes(handler, "/rpc")])
    server = WebServer(app, sock)
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(server.serve())
        try:
            yield base
        finally:
            server.stop()
            await serving


async def test_the_orchestrator_delegates_to_an_a2a_agent(
        nats_server: NatsServer, tmp_path: Path) -> None:
    executor = Echo()
    async with outside_agent(executor) as base, ScriptedLLMServer(route) as model:
        llm = build_llm(LlmSection(provider="scripted", base_url=model.base_url,
                                   max_retries=0), environ={}, workspace=None, budget=None)
        factories: dict[str, Any] = {
            "memory": lambda: MemoryActor(tmp_path / "memory.db"),
            "orchestrator": lambda: OrchestratorActor(ScriptedSource(llm), 6,
                                                      a2a_agents={"helper": base}),
        }
        async with running_actors(nats_server.url, ENTITY, factories,
                                  events=f"fed.evt.{ENTITY}.>") as running:
            goal = ('CALL delegate_to_a2a_agent '
                    + json.dumps({"agent": "helper", "task": "count the stars"}))
            accepted = await running.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/orchestrator",
                                                Goal(goal, task_id="t1"), 10.0)
            assert isinstance(accepted.message, GoalAccepted)
            answer = await next_event(running, ReplayGuard(), "answer", timeout=60.0)
        await llm.aclose()
    assert answer.data["ok"] is True, answer.data
    assert answer.data["text"] == "done: helper answered: remote did: count the stars"
    assert executor.asked == ["count the stars"]


async def test_only_configured_agents_are_called() -> None:
    tools = A2ATools({"helper": "http://127.0.0.1:9/"})
    with pytest.raises(ToolFailed, match="not an A2A agent"):
        await tools.delegate({"agent": "http://evil.example/", "task": "x"})
    assert A2ATools({}).tools() == []


async def test_the_card_check_tells_a_tampered_card(tmp_path: Path) -> None:
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    public = bytes(key.verify_key)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(tmp_path)))
    signed = card.sign(card.build(config, "http://127.0.0.1:1/a2a", public), ENTITY, public,
                       lambda data: key.sign(data).signature)
    assert card.verify(card.from_json(card.to_json(signed))) == public
    signed.name = "someone-else"
    with pytest.raises(ValueError):
        card.verify(signed)
    unsigned = card.build(config, "http://127.0.0.1:1/a2a", public)
    with pytest.raises(ValueError, match="not signed"):
        card.verify(unsigned)
    executor = Echo()
    async with outside_agent(executor) as base:
        checked = await client.fetch_card(base)
        assert checked.signed == "unsigned" and checked.ok
        outcome = await client.send(base, "hello")
    assert outcome.ok and outcome.text == "remote did: hello", outcome
