"""What entityctl asks of the tool actor about the MCP servers, and its answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import kind


@kind("mcp_list")
@dataclass(frozen=True, slots=True)
class McpList:
    """The configured MCP servers and their tools, listed from the servers now."""


@dataclass(frozen=True, slots=True)
class McpToolInfo:
    name: str  # as the server names it
    model_name: str  # as the model sees it: mcp__SERVER__TOOL
    allowed: bool  # on mcp.servers.SERVER.allowed_tools
    # pinned (offered) | unapproved (never approved) | changed (refused until approved)
    # | not allowed
    state: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class McpServerInfo:
    name: str
    command: list[str]
    tools: list[McpToolInfo] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # allowed, but the server has none
    error: str = ""  # why it could not be listed


@kind("mcp_listing")
@dataclass(frozen=True, slots=True)
class McpListing:
    servers: list[McpServerInfo] = field(default_factory=list)
    problem: str = ""  # why the [mcp] config was not applied


@kind("mcp_approve")
@dataclass(frozen=True, slots=True)
class McpApprove:
    """Pin the server's allowed tools as it serves them now (their definitions' hashes)."""

    server: str


@kind("mcp_approved")
@dataclass(frozen=True, slots=True)
class McpApproved:
    server: str
    pinned: list[str] = field(default_factory=list)  # the allowed tools now pinned
    changed: list[str] = field(default_factory=list)  # ... of which were pinned otherwise
    error: str = ""  # why nothing was pinned
