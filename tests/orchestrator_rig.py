"""One entity's orchestrator, memory and tool actors (and a coder, if asked) on a real
nats-server, their model the scripted one of tests/peer_model.py (`CALL <tool> <json>`,
and a delegated task handed to the coder): the rig of the orchestrator's tool tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.coder import CoderActor
from actors.llm import ScriptedLLMServer, build_llm
from actors.memory import MemoryActor
from actors.messages import Goal, GoalAccepted
from actors.orchestrator import OrchestratorActor
from actors.tool import ToolActor
from actors.workspaces import Workspaces
from entityd import identity
from entityd.actor import Actor
from entityd.config import Config, EntitySection, LlmSection
from protocol import Event, ReplayGuard
from tests.helpers import NatsServer, RunningActors, running_actors
from tests.peer_model import route
from tests.test_failure_policy import ScriptedSource, next_event
from tests.test_tool_actor import SANDBOX


def entity_config(root: Path, entity: str, **sections: Any) -> Config:
    """A config for `entity`, its data dir (with a key) made in `root`, the tests' sandbox
    and `sections` (e.g. mcp=...)."""
    data = root / entity
    data.mkdir()
    identity.create(data)
    return Config(entity=EntitySection(name=entity, data_dir=str(data)), sandbox=SANDBOX,
                  **sections)


@dataclass
class OrchestratorRig:
    running: RunningActors
    server: ScriptedLLMServer  # its `requests` are the model's, kept after the rig stops
    entity: str
    guard: ReplayGuard = field(default_factory=ReplayGuard)

    async def answer(self, goal: Goal) -> Event:
        """`goal` given to the orchestrator as entityctl does, accepted; its answer event."""
        accepted = await self.running.client.ask(
            f"{self.entity}/ctl", f"{self.entity}/orchestrator", goal, 10.0)
        assert isinstance(accepted.message, GoalAccepted), accepted.message
        return await next_event(self.running, self.guard, "answer", timeout=60.0)


@asynccontextmanager
async def orchestrator_rig(nats_server: NatsServer, tmp_path: Path, config: Config, *,
                           coder: bool = False) -> AsyncIterator[OrchestratorRig]:
    """The actors of `config`'s entity running (memory in `tmp_path`), subscribed to its
    events; the model client closed on the way out."""
    entity = config.entity.name
    async with ScriptedLLMServer(route) as server:
        llm = build_llm(LlmSection(provider="scripted", base_url=server.base_url,
                                   max_retries=0), environ={}, workspace=None, budget=None)
        source = ScriptedSource(llm)
        factories: dict[str, Callable[[], Actor]] = {
            "memory": lambda: MemoryActor(tmp_path / "memory.db"),
            "tool": lambda: ToolActor(config),
        }
        if coder:
            factories["coder"] = lambda: CoderActor(source, Workspaces(config), 6)
        factories["orchestrator"] = lambda: OrchestratorActor(source, 6)
        async with running_actors(nats_server.url, entity, factories,
                                  events=f"fed.evt.{entity}.>") as running:
            yield OrchestratorRig(running, server, entity)
            await llm.aclose()
