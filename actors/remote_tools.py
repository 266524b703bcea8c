"""The tool actor's tools, offered to an agent: each call goes to the tool actor."""

from __future__ import annotations

from typing import Any

from entityd.actor import Context

from .agent.toolbox import Tool, ToolFailed
from .messages import ToolCall, ToolResult, ToolSpecs, ToolSpecsGet

TOOL_ACTOR = "tool"
TOOL_TIMEOUT_S = 900.0


class RemoteTools:
    """The tool actor's tools for one caller, fetched once and kept."""

    def __init__(self, ctx: Context, caller: str) -> None:
        self.ctx = ctx
        self.caller = caller
        self._tools: list[Tool] | None = None

    async def get(self) -> list[Tool]:
        if self._tools is None:
            specs: ToolSpecs = await self.ctx.ask(f"{self.ctx.entity}/{TOOL_ACTOR}",
                                                  ToolSpecsGet())
            self._tools = [_wrap(self.ctx, self.caller, s["function"]) for s in specs.tools]
        return self._tools


def _wrap(ctx: Context, caller: str, function: dict[str, Any]) -> Tool:
    name = function["name"]

    async def run(args: dict[str, Any]) -> str:
        result: ToolResult = await ctx.ask(
            f"{ctx.entity}/{TOOL_ACTOR}", ToolCall(name, args, caller), timeout=TOOL_TIMEOUT_S
        )
        if not result.ok:
            raise ToolFailed(result.error or "the tool failed")
        return result.output

    return Tool(name, function.get("description", ""), function.get("parameters", {}), run)
