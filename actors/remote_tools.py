"""The tool actor's tools, offered to an agent: each call goes to the tool actor."""

from __future__ import annotations

from typing import Any

from entityd.actor import Context

from .agent.toolbox import Tool, ToolFailed
from .messages import ToolCall, ToolResult, ToolSpecs, ToolSpecsGet

TOOL_ACTOR = "tool"
TOOL_TIMEOUT_S = 900.0


async def fetch(ctx: Context, caller: str) -> list[Tool]:
    """Ask the tool actor for its tools and wrap each as a Tool for an agent."""
    specs: ToolSpecs = await ctx.ask(f"{ctx.entity}/{TOOL_ACTOR}", ToolSpecsGet())
    return [_wrap(ctx, caller, spec["function"]) for spec in specs.tools]


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
