"""delegate_to_a2a_agent: the orchestrator's tool to give a task to an A2A agent, one of
`[a2a] agents` by name only (the model cannot point it at any other URL). The API key
for an agent, when it needs one, comes from the environment (A2A_KEY_<NAME>, the name in
upper case with - as _), never from the config file or the model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..agent.toolbox import Tool, ToolFailed

TIMEOUT_S = 600.0


def key_variable(agent: str) -> str:
    return "A2A_KEY_" + agent.upper().replace("-", "_")


class A2ATools:
    def __init__(self, agents: Mapping[str, str], timeout: float = TIMEOUT_S,
                 environ: Mapping[str, str] | None = None) -> None:
        self.agents = agents
        self.timeout = timeout
        self.environ = os.environ if environ is None else environ

    def tools(self) -> list[Tool]:
        if not self.agents:
            return []
        names = ", ".join(sorted(self.agents))
        return [Tool(
            "delegate_to_a2a_agent",
            f"Give a task to an outside A2A agent and wait for its answer. Agents: {names}.",
            {"type": "object", "properties": {
                "agent": {"type": "string", "enum": sorted(self.agents),
                          "description": "the agent, by name"},
                "task": {"type": "string", "description": "what it should do, in full"}},
             "required": ["agent", "task"]},
            self.delegate)]

    async def delegate(self, args: dict[str, Any]) -> str:
        agent, task = str(args.get("agent", "")), str(args.get("task", ""))
        url = self.agents.get(agent)
        if url is None:
            raise ToolFailed(f"{agent!r} is not an A2A agent of this entity's "
                             f"(known: {', '.join(sorted(self.agents))})")
        if not task.strip():
            raise ToolFailed("give the task to delegate")
        from . import client  # the SDK (a fifth of a second to import) only once it is used

        try:
            outcome = await client.send(url, task, self.environ.get(key_variable(agent), ""),
                                        self.timeout)
        except client.UNREACHABLE as exc:
            raise ToolFailed(f"{agent} could not be reached: {exc}"[:500]) from None
        if not outcome.ok:
            raise ToolFailed(f"{agent}'s task ended {outcome.state}: {outcome.text}"[:4000])
        return f"{agent} answered: {outcome.text}"
