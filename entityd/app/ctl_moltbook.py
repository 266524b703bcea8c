"""entityctl's Moltbook commands: register the entity, see its account and limits, read
the feed, search, post, approve the DMs its orchestrator asked to send, reset a stop after
failed verification challenges. Each is a signed tool call to the entity's tool actor,
which holds the key (registering too: the key the entity gets is written by the daemon,
as the daemon's user, and never crosses the bus); the exit code is 0 when it worked, 3
when it was refused or failed (the reason on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from actors.messages import ToolCall, ToolResult

from ..client import EntityClient
from .args import command

EXIT_REFUSED = 3
REPLY_S = 180.0  # a call may wait for Moltbook's limits, a 429, and a verification


def add_commands(sub: Any) -> None:
    moltbook = command(sub, "moltbook", "Moltbook, the AI agents' social network: register "
                       "the entity, its status, feed, search, posts and DMs to approve.",
                       "entityctl moltbook status\nentityctl moltbook pending")
    verbs = moltbook.add_subparsers(dest="moltbook_command", required=True, metavar="COMMAND")

    register = command(verbs, "register", "Register the entity on Moltbook; its key is kept "
                       "in DATA_DIR/keys/moltbook.key (0600) and never printed.",
                       'entityctl moltbook register entity-a --description "builds tools"')
    register.add_argument("name")
    register.add_argument("--description", default="")
    _common(register, lambda a: ("moltbook_register",
                                 {"name": a.name, "description": a.description}))

    status = command(verbs, "status", "The account (claimed or not), its limits now, the "
                     "verification failures in a row and the DMs waiting for approval.",
                     "entityctl moltbook status --json")
    _common(status, lambda a: ("moltbook_status", {}))

    feed = command(verbs, "feed", "The entity's Moltbook feed, or one submolt's posts.",
                   "entityctl moltbook feed --sort new --limit 10")
    feed.add_argument("--sort", choices=["hot", "new", "top", "rising"], default="hot")
    feed.add_argument("--limit", type=int, default=15)
    feed.add_argument("--submolt", default="")
    feed.add_argument("--following", action="store_true", help="only the agents it follows")
    _common(feed, lambda a: ("moltbook_feed", _given(
        sort=a.sort, limit=a.limit, submolt=a.submolt, following=a.following or None)))

    post = command(verbs, "post", "Post on Moltbook in the entity's name (its limits and "
                   "verification apply as to the entity's own posts).",
                   'entityctl moltbook post "Hello" --content "First post" --submolt general')
    post.add_argument("title")
    post.add_argument("--content", default="")
    post.add_argument("--url", default="", help="a link post instead of text")
    post.add_argument("--submolt", default="general")
    _common(post, lambda a: ("moltbook_post", _given(
        title=a.title, content=a.content, url=a.url, submolt=a.submolt)))

    search = command(verbs, "search", "Semantic search of Moltbook's posts and comments.",
                     'entityctl moltbook search "how do agents handle memory"')
    search.add_argument("query")
    search.add_argument("--type", choices=["posts", "comments", "all"], default="all")
    search.add_argument("--limit", type=int, default=10)
    _common(search, lambda a: ("moltbook_search",
                               {"query": a.query, "type": a.type, "limit": a.limit}))

    pending = command(verbs, "pending", "The DMs the entity asked to send, waiting for "
                      'approval ([moltbook] dms = "approve"), with their text.',
                      "entityctl moltbook pending")
    _common(pending, lambda a: ("moltbook_pending", {}))

    approve = command(verbs, "approve", "Send a DM waiting for approval.",
                      "entityctl moltbook approve 3f9a1c2b")
    approve.add_argument("id")
    _common(approve, lambda a: ("moltbook_approve", {"id": a.id}))

    reject = command(verbs, "reject", "Drop a DM waiting for approval.",
                     "entityctl moltbook reject 3f9a1c2b")
    reject.add_argument("id")
    _common(reject, lambda a: ("moltbook_reject", {"id": a.id}))

    reset = command(verbs, "reset", "After failed verification challenges stopped posting: "
                    "reset the count (check `status` first; Moltbook suspends at 10).",
                    "entityctl moltbook reset")
    _common(reset, lambda a: ("moltbook_reset", {}))


def _common(parser: argparse.ArgumentParser, call: Any) -> None:
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=_run, moltbook_call=call)


def _given(**args: Any) -> dict[str, Any]:
    return {name: value for name, value in args.items() if value not in ("", None)}


async def _run(client: EntityClient, args: argparse.Namespace) -> int:
    tool, arguments = args.moltbook_call(args)
    timeout = args.timeout if getattr(args, "timeout_given", False) else REPLY_S
    result: ToolResult = await client.ask("tool", ToolCall(tool, arguments, "entityctl"),
                                          timeout)
    if args.json:
        data = {k: v for k, v in result.data.items() if k != "requests"}
        print(json.dumps({"ok": result.ok, "error": result.error, **data}, indent=2,
                         default=str))
    elif result.output:
        print(result.output)
    if not result.ok:
        if not args.json:
            print(f"entityctl: {result.error}", file=sys.stderr)
        return EXIT_REFUSED
    return 0
