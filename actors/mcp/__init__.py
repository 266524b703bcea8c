"""MCP: the stdio MCP servers of `[mcp.servers.NAME]`, run in the sandbox, their allowed
and approved tools offered to the orchestrator and the coder (see tools.py, which the tool
actor imports; this package itself holds only the messages, light for entityctl)."""

from .messages import McpApprove, McpApproved, McpList, McpListing, McpServerInfo, McpToolInfo

__all__ = ["McpApprove", "McpApproved", "McpList", "McpListing", "McpServerInfo",
           "McpToolInfo"]
