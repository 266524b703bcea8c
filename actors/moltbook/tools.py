"""The tool actor's Moltbook toolbox: who may call which tool, and each call's requests.

- The model tools (specs.MODEL_TOOLS) are offered to the orchestrator alone, and only
  while a key is configured; the coder and every other actor are refused. A peer's turn is
  never shown them (actors/turn_scope.py offers a peer's turn only the tools it names),
  and a private turn's call (one holding a peer's words) may read but not post, comment,
  vote, follow, join or send a DM: all of those are public, in this entity's name.
- The operator tools (specs.OPERATOR_TOOLS) answer entityctl alone.
- Each HTTP request is an audit event `moltbook_request`: the tool, the endpoint as
  documented ("POST /posts/{id}/comments", never an id, a query or a text), its status
  and how long it was paced. The key is in none of them, nor in any answer.

The calls that keep the account's state (posting, commenting, DMs, the operator's) are in
account.py; the ones here only read or act once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from entityd import Config

from ..messages import ToolCall, ToolResult
from . import render
from .account import Account, Answer, Audit, segment
from .client import MoltbookClient, Reply
from .errors import (
    ApiError,
    KeyRefused,
    MoltbookError,
    NoKey,
    RateLimited,
    RedirectRefused,
    Refused,
    Unreachable,
)
from .specs import MODEL_TOOLS, OPERATOR_TOOLS, check, model_specs

Emit = Callable[..., Awaitable[None]]
ORCHESTRATOR = "orchestrator"
CTL = "ctl"
WRITES = frozenset({"moltbook_post", "moltbook_comment", "moltbook_vote", "moltbook_follow",
                    "moltbook_join_submolt", "moltbook_send_dm"})
MAX_CALLS = 8  # Moltbook calls in progress at once; more are refused as busy
SUMMARY_LIMIT = 160
_OUTCOMES: dict[type[MoltbookError], str] = {
    NoKey: "no key", KeyRefused: "key refused", RedirectRefused: "redirect refused",
    Unreachable: "unreachable", RateLimited: "rate limited", ApiError: "error",
    Refused: "refused",
}


class MoltbookTools:
    def __init__(self, config: Config, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.entity = config.name
        self.account = Account(config, environ, clock)
        self._calls = 0

    # ---- what the tool actor asks ---------------------------------------------------------

    def owns(self, tool: str) -> bool:
        return tool in MODEL_TOOLS or tool in OPERATOR_TOOLS

    def specs(self, src: str) -> list[dict[str, Any]]:
        """The tools offered to the actor at `src`: the orchestrator's, with a key."""
        account = self.account
        if self._actor(src) != ORCHESTRATOR or not account.keys.configured(account.environ):
            return []
        return model_specs()

    async def call(self, call: ToolCall, src: str, emit: Emit) -> ToolResult:
        requests: list[dict[str, Any]] = []

        async def audit(record: dict[str, Any]) -> None:
            requests.append({"endpoint": record["endpoint"], "status": record["status"]})
            await emit("moltbook_request", tool=call.tool, **record)

        try:
            self._admit(call, self._actor(src))
            args = check(call.tool, call.args)
            if self._calls >= MAX_CALLS:
                raise Refused(f"{MAX_CALLS} Moltbook calls are already in progress; retry")
            self._calls += 1
            try:
                output, data = await self._dispatch(call.tool, args, audit)
            finally:
                self._calls -= 1
        except MoltbookError as exc:
            return ToolResult(False, error=str(exc), data={
                "requests": requests, "outcome": _OUTCOMES.get(type(exc), "error")})
        except OSError as exc:  # the state or DM file
            return ToolResult(False, error=f"{call.tool}: {exc}", data={
                "requests": requests, "outcome": "local error"})
        return ToolResult(True, output, data={"requests": requests, **data})

    def summary(self, tool: str, result: ToolResult) -> str:
        """The audit event's line: the endpoints and the outcome; no ids, no texts."""
        calls = "; ".join(f"{r['endpoint']} {r['status'] or 'no answer'}"
                          for r in result.data.get("requests", []))
        text = f"{tool}: {calls or 'no request'} -> {result.data.get('outcome', 'ok')}"
        return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 3] + "..."

    def _actor(self, src: str) -> str:
        entity, _, actor = src.partition("/")
        return actor if entity == self.entity else ""

    def _admit(self, call: ToolCall, actor: str) -> None:
        if call.tool in OPERATOR_TOOLS and actor != CTL:
            raise Refused(f"{call.tool} is the operator's (entityctl moltbook), not {actor}'s")
        if actor not in (ORCHESTRATOR, CTL):
            raise Refused(f"the Moltbook tools serve the orchestrator's operator turns and "
                          f"entityctl, not the {actor or 'unknown'} actor")
        if call.private and call.tool in WRITES:
            raise Refused(f"{call.tool} is refused in this turn: it holds a peer's words (or "
                          "runs for a peer), and what goes to Moltbook is public, in this "
                          "entity's name. Answer with what you found instead.")

    async def _dispatch(self, tool: str, args: dict[str, Any], audit: Audit) -> Answer:
        account = self.account
        local = {"moltbook_pending": account.pending_list, "moltbook_reject": account.reject,
                 "moltbook_reset": account.reset}
        if tool in local:
            return local[tool](args)
        if tool == "moltbook_register":
            return await account.register(account.client(audit, anonymous=True), args)
        if tool == "moltbook_status":
            return await account.status(audit)
        client = account.client(audit)
        if tool == "moltbook_send_dm":
            return await account.send_dm(client, args)
        if tool == "moltbook_approve":
            return await account.approve(client, args)
        handler = getattr(self, "_" + tool.removeprefix("moltbook_"))
        answer: Answer = await handler(client, args)
        return answer

    # ---- the calls that read or act once ----------------------------------------------------

    async def _home(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        reply = await client.call("GET", "/home", "GET /home")
        return render.as_json(reply.data), {}

    async def _feed(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        query = {"sort": args.get("sort", "hot"), "limit": args.get("limit", 15),
                 "cursor": args.get("cursor")}
        if args.get("submolt"):
            reply = await client.call("GET", "/posts", "GET /posts",
                                      query={**query, "submolt": args["submolt"]})
        else:
            query["filter"] = "following" if args.get("following") else None
            reply = await client.call("GET", "/feed", "GET /feed", query=query)
        return render.posts(reply.data), {}

    async def _search(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        reply = await client.call("GET", "/search", "GET /search", query={
            "q": args["query"], "type": args.get("type", "all"), "limit": args.get("limit", 10)})
        return render.search(reply.data), {}

    async def _read_post(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        post = segment(args["post_id"], "post_id")
        reply = await client.call("GET", f"/posts/{post}", "GET /posts/{id}")
        comments = await client.call("GET", f"/posts/{post}/comments",
                                     "GET /posts/{id}/comments",
                                     query={"sort": args.get("comment_sort", "top")})
        return render.post_with_comments(reply.data, comments.data), {}

    async def _post(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        if bool(args.get("content")) == bool(args.get("url")):
            raise Refused("moltbook_post takes either content (a text post) or url (a link "
                          "post)")
        body = {"submolt": args.get("submolt") or "general", "title": args["title"]}
        body.update({"content": args["content"]} if args.get("content") else
                    {"url": args["url"]})
        return await self.account.publish(client, "post", "/posts", "POST /posts", body)

    async def _comment(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        post = segment(args["post_id"], "post_id")
        body = {"content": args["content"]}
        if args.get("parent_id"):
            body["parent_id"] = args["parent_id"]
        return await self.account.publish(client, "comment", f"/posts/{post}/comments",
                                          "POST /posts/{id}/comments", body)

    async def _vote(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        if bool(args.get("post_id")) == bool(args.get("comment_id")):
            raise Refused("moltbook_vote takes either post_id or comment_id")
        direction = args.get("direction", "up")
        if args.get("comment_id"):
            if direction != "up":
                raise Refused("Moltbook documents upvotes of comments only")
            target = segment(args["comment_id"], "comment_id")
            reply = await client.call("POST", f"/comments/{target}/upvote",
                                      "POST /comments/{id}/upvote")
        else:
            target = segment(args["post_id"], "post_id")
            reply = await client.call("POST", f"/posts/{target}/{direction}vote",
                                      f"POST /posts/{{id}}/{direction}vote")
        return _said(reply, f"{direction}voted"), {"outcome": f"{direction}voted"}

    async def _follow(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        name = segment(args["name"], "name")
        method = "DELETE" if args.get("unfollow") else "POST"
        reply = await client.call(method, f"/agents/{name}/follow",
                                  f"{method} /agents/{{name}}/follow")
        done = "unfollowed" if args.get("unfollow") else "followed"
        return _said(reply, f"{done} {args['name']}"), {"outcome": done}

    async def _submolts(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        if args.get("name"):
            name = segment(args["name"], "name")
            reply = await client.call("GET", f"/submolts/{name}", "GET /submolts/{name}")
        else:
            reply = await client.call("GET", "/submolts", "GET /submolts")
        return render.submolts(reply.data), {}

    async def _join_submolt(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        name = segment(args["name"], "name")
        method = "DELETE" if args.get("leave") else "POST"
        reply = await client.call(method, f"/submolts/{name}/subscribe",
                                  f"{method} /submolts/{{name}}/subscribe")
        done = "left" if args.get("leave") else "subscribed"
        return _said(reply, f"{done} m/{args['name']}"), {"outcome": done}

    async def _read_dms(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        if args.get("conversation_id"):
            conversation = segment(args["conversation_id"], "conversation_id")
            reply = await client.call("GET", f"/agents/dm/conversations/{conversation}",
                                      "GET /agents/dm/conversations/{id}")
            return render.as_json(reply.data), {}
        check = await client.call("GET", "/agents/dm/check", "GET /agents/dm/check")
        listed = await client.call("GET", "/agents/dm/conversations",
                                   "GET /agents/dm/conversations")
        return render.as_json({"activity": check.data, "conversations": listed.data}), {}


def _said(reply: Reply, done: str) -> str:
    message = reply.data.get("message")
    return f"{done}: {message}" if message else done
