"""The tool actor's MCP toolbox: the allowed, approved tools of the configured servers.

- A tool is offered as `mcp.SERVER.TOOL`; OpenAI's function names may not hold dots, so
  the model sees `mcp__SERVER__TOOL` (server names hold no underscore, so the name splits
  back unambiguously).
- Offered to the orchestrator and the coder, never answered for any other actor. A
  peer's turn is not shown them (actors/turn_scope.py offers a peer's turn only the tools
  it names), and a private call (a turn holding a peer's words, or run for a peer) is
  refused: what a server does is a side effect the entity answers for.
- Offered and run only when on the server's `allowed_tools` and pinned: each tool's
  definition hash (pins.py) is pinned by `entityctl mcp approve SERVER`; a new server's
  tools are offered only after that (the safe default), and a tool whose definition
  changed is neither offered nor run until it is approved again. Each call lists the
  tools of the very process that runs it and checks the pin first.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entityd import Config

from ..messages import ToolCall, ToolResult
from ..sandbox import ToolError
from ..sandbox.cgroup import SharedLimits
from .client import ServedTool, Server, ServerUnavailable, field, list_tools
from .messages import McpApproved, McpListing, McpServerInfo, McpToolInfo
from .pins import Pins, definition_hash

if TYPE_CHECKING:  # the SDK only once a server is used (client.py)
    from mcp import types

PREFIX = "mcp__"
CALLERS = frozenset({"orchestrator", "coder"})
CTL = "ctl"
MAX_DESCRIPTION = 1000  # characters of a server's tool description shown to the model
MODEL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
MAX_MODEL_NAME = 64
SUMMARY_LIMIT = 160
MAX_CALLS = 8  # MCP calls in progress at once (each a sandboxed server); more are refused


def model_name(server: str, tool: str) -> str:
    return f"{PREFIX}{server}__{tool}"


def usable_name(name: str) -> bool:
    """Whether OpenAI's function names can carry it (^[a-zA-Z0-9_-]{1,64}$)."""
    return 0 < len(name) <= MAX_MODEL_NAME and set(name) <= MODEL_NAME_CHARS


class Refused(ToolError):
    """The call may not run (a ToolError: it passes through the session unchanged)."""


class McpTools:
    def __init__(self, config: Config, limits: SharedLimits | None = None) -> None:
        self.entity = config.name
        self.output_limit = config.sandbox.output_limit
        self.pins = Pins(config.data_dir)
        self.problem = ""
        specs = config.mcp  # checked when the config was read: a mistake stops the start
        self.servers = {name: Server(spec, config.sandbox, Path(config.data_dir), limits)
                        for name, spec in specs.items()}
        # What each server served when last listed (None: it could not be), for the offer.
        self._listed: dict[str, list[ServedTool] | None] = {}
        self._errors: dict[str, str] = {}  # why a server could not be listed
        self._calls = 0

    # ---- what the tool actor asks ---------------------------------------------------------

    def owns(self, tool: str) -> bool:
        return tool.startswith(PREFIX)

    async def specs(self, src: str) -> list[dict[str, Any]]:
        """The allowed, pinned tools, for the orchestrator and the coder."""
        if self._actor(src) not in CALLERS or not self.servers:
            return []
        await self._list_unlisted()
        try:
            pins = self.pins.read()
        except ValueError:
            return []
        offered = []
        for name, server in self.servers.items():
            for tool in self._listed.get(name) or []:
                if (tool.name in server.spec.allowed_tools
                        and pins.get(name, {}).get(tool.name) == _hash(tool)
                        and usable_name(model_name(name, tool.name))):
                    offered.append(_spec(name, tool))
        return offered

    async def call(self, call: ToolCall, src: str) -> ToolResult:
        try:
            name, tool = self._admit(call, self._actor(src))
            if self._calls >= MAX_CALLS:
                raise Refused(f"{MAX_CALLS} MCP calls are already in progress; retry")
            self._calls += 1
            try:
                async with self.servers[name].session() as session:
                    served = await list_tools(session)
                    self._listed[name] = served
                    self._check_pinned(name, tool, served)
                    result = await session.call_tool(tool, dict(call.args))
            finally:
                self._calls -= 1
            return self._result(result)
        except (Refused, ServerUnavailable) as exc:
            return ToolResult(False, error=str(exc))
        except ValueError as exc:  # the pins file
            return ToolResult(False, error=f"{call.tool} refused: {exc}")

    def summary(self, tool: str, result: ToolResult) -> str:
        """The audit event's line: which tool, and whether it worked; never its arguments."""
        server, _, name = tool.removeprefix(PREFIX).partition("__")
        text = f"mcp.{server}.{name}" + ("" if result.ok else f" -> {result.error}")
        text = " ".join(text.split())
        return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 3] + "..."

    async def listing(self) -> McpListing:
        await self._list_all()
        try:
            pins = self.pins.read()
        except ValueError as exc:
            return McpListing(problem=str(exc))
        servers = []
        for name, server in self.servers.items():
            served = self._listed.get(name)
            allowed = server.spec.allowed_tools
            infos = [McpToolInfo(t.name, model_name(name, t.name), t.name in allowed,
                                 _state(t, allowed, pins.get(name, {})), t.description[:200])
                     for t in served or []]
            missing = sorted(allowed - {t.name for t in served or []}) if served is not None else []
            servers.append(McpServerInfo(
                name, list(server.spec.command), infos, missing,
                self._errors.get(name, "") if served is None else ""))
        return McpListing(servers, self.problem)

    async def approve(self, name: str) -> McpApproved:
        server = self.servers.get(name)
        if server is None:
            return McpApproved(name, error=self._unknown(name))
        try:
            async with server.session() as session:
                served = await list_tools(session)
            before = self.pins.pinned(name)
            hashes = {t.name: _hash(t) for t in served if t.name in server.spec.allowed_tools}
            self.pins.pin(name, hashes)
        except (ServerUnavailable, ValueError, OSError) as exc:
            return McpApproved(name, error=str(exc))
        self._listed[name] = served
        changed = sorted(t for t, h in hashes.items() if t in before and before[t] != h)
        return McpApproved(name, sorted(hashes), changed)

    # ---- the rest ---------------------------------------------------------------------------

    async def _list_unlisted(self) -> None:
        await self._list([n for n in self.servers if self._listed.get(n) is None])

    async def _list_all(self) -> None:
        await self._list(list(self.servers))

    async def _list(self, names: list[str]) -> None:
        async def one(name: str) -> None:
            try:
                async with self.servers[name].session() as session:
                    self._listed[name] = await list_tools(session)
                self._errors.pop(name, None)
            except ServerUnavailable as exc:
                self._listed[name] = None
                self._errors[name] = str(exc)

        await asyncio.gather(*(one(name) for name in names))

    def _actor(self, src: str) -> str:
        entity, _, actor = src.partition("/")
        return actor if entity == self.entity else ""

    def _admit(self, call: ToolCall, actor: str) -> tuple[str, str]:
        server, _, tool = call.tool.removeprefix(PREFIX).partition("__")
        if actor not in CALLERS:
            raise Refused(f"the MCP tools serve the orchestrator and the coder, not the "
                          f"{actor or 'unknown'} actor")
        if call.private:
            raise Refused(f"{call.tool} is refused in this turn: it holds a peer's words (or "
                          "runs for a peer), and an MCP server's actions are the entity's")
        if self.problem:
            raise Refused(self.problem)
        if server not in self.servers or not tool:
            raise Refused(self._unknown(server))
        if tool not in self.servers[server].spec.allowed_tools:
            raise Refused(f"mcp.{server}.{tool} is not on the allow list "
                          f"(mcp.servers.{server}.allowed_tools)")
        return server, tool

    def _check_pinned(self, server: str, tool: str, served: list[ServedTool]) -> None:
        found = next((t for t in served if t.name == tool), None)
        if found is None:
            raise Refused(f"the MCP server {server} does not serve a tool {tool!r}")
        pinned = self.pins.pinned(server).get(tool)
        if pinned is None:
            raise Refused(f"mcp.{server}.{tool} has not been approved yet; the operator "
                          f"approves it with `entityctl mcp approve {server}`")
        if pinned != _hash(found):
            raise Refused(f"mcp.{server}.{tool} is refused: its definition (description or "
                          "input schema) changed since it was approved; the operator can "
                          f"review it with `entityctl mcp list` and re-approve it with "
                          f"`entityctl mcp approve {server}`")

    def _result(self, result: types.CallToolResult) -> ToolResult:
        from mcp import types

        parts = []
        for block in result.content:
            if isinstance(block, types.TextContent):
                parts.append(block.text)
            else:
                parts.append(f"[{block.type} content]")
        structured = field(result, "structured_content")
        if not parts and structured is not None:
            parts.append(json.dumps(structured, ensure_ascii=False, default=str))
        text = "\n".join(parts)
        if len(text) > self.output_limit:
            text = (text[: self.output_limit] + f"\n[... {len(text) - self.output_limit} "
                    "characters cut: the output limit]")
        if field(result, "is_error"):
            return ToolResult(False, error=text or "the MCP tool reported an error")
        return ToolResult(True, text)

    def _unknown(self, server: str) -> str:
        known = ", ".join(sorted(self.servers)) or "none is configured"
        return f"no MCP server {server!r} is configured ([mcp.servers.NAME]; {known})"


def _hash(tool: ServedTool) -> str:
    return definition_hash(tool.description, tool.input_schema)


def _state(tool: ServedTool, allowed: frozenset[str], pins: dict[str, str]) -> str:
    if tool.name not in allowed:
        return "not allowed"
    pinned = pins.get(tool.name)
    if pinned is None:
        return "unapproved"
    return "pinned" if pinned == _hash(tool) else "changed"


def _spec(server: str, tool: ServedTool) -> dict[str, Any]:
    description = tool.description[:MAX_DESCRIPTION]
    schema = tool.input_schema or {"type": "object", "properties": {}}
    return {"type": "function", "function": {
        "name": model_name(server, tool.name),
        "description": f"(mcp.{server}.{tool.name}, from the MCP server {server}) {description}",
        "parameters": schema}}

