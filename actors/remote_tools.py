"""The tool actor's tools, offered to an agent: each call goes to the tool actor.

A call the tool actor does not answer (busy, restarting, gone, too slow) raises the
runtime's error, which the toolbox turns into an observation (actors/agent/toolbox.py).
"""

from __future__ import annotations

from typing import Any

from entityd import Actor, Context, EntitydError

from .agent.toolbox import Tool, ToolFailed
from .messages import ToolCall, ToolResult, ToolSpecs, ToolSpecsGet

TOOL_ACTOR = "tool"
TOOL_TIMEOUT_S = 900.0


class RemoteTools:
    """The tool actor's tools for one actor, fetched on first use and kept.

    It holds the actor, not its context: the runtime gives an actor its context only
    after constructing it.
    """

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self._specs: list[dict[str, Any]] | None = None

    async def get(self, private: bool = False, workspace: str = "") -> list[Tool]:
        """The tools; `private` for a peer's turn (see ToolCall.private), working in
        `workspace` (ToolCall.workspace: "" the entity's own, else a peer's tasks')."""
        ctx = self.actor.ctx
        if self._specs is None:
            try:
                specs: ToolSpecs = await ctx.ask(f"{ctx.entity}/{TOOL_ACTOR}", ToolSpecsGet())
            except EntitydError as exc:
                # The turn goes on without them; the next turn asks again.
                ctx.log.warning("tool_specs_unavailable", error=str(exc))
                return []
            self._specs = [s["function"] for s in specs.tools]
        return [_wrap(ctx, self.actor.name, function, private, workspace)
                for function in self._specs]


def _wrap(ctx: Context, caller: str, function: dict[str, Any], private: bool,
          workspace: str) -> Tool:
    name = function["name"]

    async def run(args: dict[str, Any]) -> str:
        result: ToolResult = await ctx.ask(
            f"{ctx.entity}/{TOOL_ACTOR}", ToolCall(name, args, caller, private, workspace),
            timeout=TOOL_TIMEOUT_S,
        )
        if not result.ok:
            raise ToolFailed(result.error or "the tool failed")
        return result.output

    return Tool(name, function.get("description", ""), function.get("parameters", {}), run)
