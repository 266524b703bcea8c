"""MCP: the stdio MCP servers of `[mcp.servers.NAME]`, run in the sandbox, their allowed
and approved tools offered to the orchestrator and the coder (see tools.py)."""

from .messages import McpApprove, McpApproved, McpList, McpListing, McpServerInfo, McpToolInfo
from .tools import McpTools

__all__ = ["McpApprove", "McpApproved", "McpList", "McpListing", "McpServerInfo",
           "McpToolInfo", "McpTools"]
