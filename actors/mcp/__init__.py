"""MCP: the stdio MCP servers of `[mcp.servers.NAME]`, run in the sandbox, their allowed
and approved tools offered to the orchestrator and the coder (see tools.py)."""

from .config import McpConfigError, McpServer
from .messages import McpApprove, McpApproved, McpList, McpListing, McpServerInfo, McpToolInfo
from .tools import McpTools

__all__ = ["McpApprove", "McpApproved", "McpConfigError", "McpList", "McpListing",
           "McpServer", "McpServerInfo", "McpToolInfo", "McpTools"]
