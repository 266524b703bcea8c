"""entityctl's MCP commands: list the configured MCP servers with their tools (allowed or
not, pinned, unapproved or changed), and approve a server's allowed tools as it serves
them now. The tool actor starts each server in the sandbox to answer; the exit code is 0
when it worked, 3 when a server could not be listed or approved (the reason on stderr)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from actors.mcp import McpApprove, McpApproved, McpList, McpListing

from ..client import EntityClient
from .args import command
from .ctl_peers import EXIT_REFUSED, print_json

REPLY_S = 180.0  # each server is started (in the sandbox) and listed: give it time


def add_commands(sub: Any) -> None:
    mcp = command(sub, "mcp", "The MCP servers of [mcp.servers.NAME]: their tools, which "
                  "are offered to the entity, and approving their definitions.",
                  "entityctl mcp list\nentityctl mcp approve notes")
    verbs = mcp.add_subparsers(dest="mcp_command", required=True, metavar="COMMAND")
    listed = command(verbs, "list", "Each configured MCP server's tools as it serves them "
                     "now: allowed or not, and pinned (offered), unapproved or changed "
                     "(refused until approved).", "entityctl mcp list --json")
    listed.add_argument("--json", action="store_true")
    listed.set_defaults(run=_list)
    approve = command(verbs, "approve", "Pin the definitions (description and input "
                      "schema) of a server's allowed tools as it serves them now; only "
                      "pinned tools are offered to the entity.", "entityctl mcp approve notes")
    approve.add_argument("name", help="the server, as in [mcp.servers.NAME]")
    approve.add_argument("--json", action="store_true")
    approve.set_defaults(run=_approve)


def _timeout(args: argparse.Namespace) -> float:
    return float(args.timeout) if getattr(args, "timeout_given", False) else REPLY_S


async def _list(client: EntityClient, args: argparse.Namespace) -> int:
    listing: McpListing = await client.ask("tool", McpList(), _timeout(args))
    failed = bool(listing.problem) or any(s.error for s in listing.servers)
    if args.json:
        print_json(listing)
        return EXIT_REFUSED if failed else 0
    if listing.problem:
        print(f"entityctl: {listing.problem}", file=sys.stderr)
    if not listing.servers and not listing.problem:
        print("no MCP server is configured ([mcp.servers.NAME] in the config file)")
    for server in listing.servers:
        print(f"{server.name}: {' '.join(server.command)}")
        if server.error:
            print(f"  could not be listed: {server.error}")
        for tool in server.tools:
            print(f"  {tool.name:<24} {tool.state:<12} as {tool.model_name}")
        for name in server.missing:
            print(f"  {name:<24} {'not served':<12} (allowed, but the server has no such tool)")
    return EXIT_REFUSED if failed else 0


async def _approve(client: EntityClient, args: argparse.Namespace) -> int:
    answer: McpApproved = await client.ask("tool", McpApprove(args.name), _timeout(args))
    if args.json:
        print_json(answer)
    elif not answer.error:
        pinned = ", ".join(answer.pinned) or "none (no allowed tool is served)"
        print(f"{answer.server}: pinned {pinned}")
        if answer.changed:
            print(f"  re-approved after a change: {', '.join(answer.changed)}")
    if answer.error:
        if not args.json:
            print(f"entityctl: {answer.error}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
