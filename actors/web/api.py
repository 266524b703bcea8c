"""The page's JSON API: each handler turns one request into the signed actor message
entityctl sends for the same thing, and its reply into JSON. Nothing here decides
anything; the actors do, as they do for entityctl."""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from entityd import ActorDeadError, AskTimeout, Context, EntitydError, RemoteError
from protocol import StatusGet

from ..ledger.messages import BalanceGet, LedgerGet, ReputationGet
from ..llm.messages import UsageGet
from ..messages import (
    CommitDiffGet,
    CommitsGet,
    Goal,
    MemorySearch,
    TodoAdd,
    TodoList,
    TodoUpdate,
)
from ..peer.messages import PeerCheck, PeersGet, PeerTalk, TasksGet
from ..services.messages import ServicesGet
from ..untrusted import json_loads

Handler = Callable[[Request], Awaitable[Response]]
MAX_TEXT = 16_000
MAX_BODY = 64 * 1024
SOURCE = "web"  # Goal.source of the operator's goals from the page
PEER_NAME = re.compile(r"[a-z0-9-]{1,32}")
MAX_ID = 2**63 - 1  # what the wire's integers hold


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def reply(value: Any, status: int = 200) -> Response:
    return JSONResponse(to_json(value), status_code=status)


async def body_of(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the request body is over {MAX_BODY} bytes")
    try:
        data = json_loads(raw or b"{}")
    except ValueError:
        raise BadRequest("the request body is not JSON (or nested too deep)") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body is not a JSON object")
    return data


def text_field(data: dict[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name}: a non-empty string is needed")
    if len(value) > limit:
        raise BadRequest(f"{name}: at most {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON may carry a lone surrogate (\ud800)
        raise BadRequest(f"{name}: not valid Unicode text") from None
    return value


def peer_field(value: Any) -> str:
    if not isinstance(value, str) or not PEER_NAME.fullmatch(value):
        raise BadRequest("peer: an entity name ([a-z0-9-]{1,32}) is needed")
    return value


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadRequest(f"{name}: a whole number from {low} to {high}")
    return int(raw)


class Api:
    """The routes' handlers, asking the entity's actors through `ctx`."""

    def __init__(self, ctx: Context, talk_timeout: float) -> None:
        self.ctx = ctx
        self.talk_timeout = talk_timeout

    def to(self, actor: str) -> str:
        return f"{self.ctx.entity}/{actor}"

    async def ask(self, actor: str, message: object, timeout: float | None = None) -> Any:
        return await self.ctx.ask(self.to(actor), message, timeout)

    def guarded(self, handler: Handler) -> Handler:
        """Bad input, a refusal or an actor that does not answer: a JSON error, never a
        traceback."""
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except BadRequest as exc:
                return reply({"error": "bad_request", "message": exc.message}, 400)
            except RemoteError as exc:
                return reply({"error": exc.code, "message": exc.message}, 409)
            except (AskTimeout, TimeoutError):
                return reply({"error": "timeout", "message": "the entity did not answer in "
                              "time"}, 504)
            except ActorDeadError as exc:
                return reply({"error": "unavailable", "message": str(exc)}, 503)
            except EntitydError as exc:
                return reply({"error": "failed", "message": str(exc)}, 502)
        return run

    # ---- the entity -----------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        return reply(await self.ask("health", StatusGet()))

    async def goal(self, request: Request) -> Response:
        data = await body_of(request)
        text = text_field(data, "text")
        task_id = f"web-{secrets.token_hex(6)}"
        accepted = await self.ask("orchestrator", Goal(text, task_id=task_id,
                                                      conversation=task_id, source=SOURCE))
        return reply(accepted)

    async def memory(self, request: Request) -> Response:
        query = request.query_params.get("q", "")
        if not query.strip() or len(query) > 500:
            raise BadRequest("q: 1 to 500 characters")
        limit = int_param(request, "limit", 20, 1, 100)
        return reply(await self.ask("memory", MemorySearch(query, limit=limit)))

    async def todo(self, request: Request) -> Response:
        include_done = request.query_params.get("all") == "1"
        return reply(await self.ask("memory", TodoList(include_done=include_done)))

    async def todo_add(self, request: Request) -> Response:
        data = await body_of(request)
        return reply(await self.ask("memory", TodoAdd(text_field(data, "text", 2000))))

    async def todo_update(self, request: Request) -> Response:
        raw = request.path_params["id"]
        if raw > MAX_ID:
            raise BadRequest("id: no such todo item")
        data = await body_of(request)
        status = data.get("status")
        if status not in ("open", "doing", "done", "dropped"):
            raise BadRequest("status: one of open, doing, done, dropped")
        return reply(await self.ask("memory", TodoUpdate(int(raw), status=status)))

    async def usage(self, request: Request) -> Response:
        hours = int_param(request, "hours", 24, 1, 24 * 90)
        return reply(await self.ask("memory", UsageGet(since_s=hours * 3600)))

    # ---- peers, tasks, money ----------------------------------------------------------

    async def peers(self, request: Request) -> Response:
        peers = await self.ask("peer", PeersGet())
        rows = []
        for peer in peers.peers:
            row = to_json(peer)
            try:
                row["reputation"] = to_json(await self.ask("ledger",
                                                           ReputationGet(peer.name), 5.0))
            except EntitydError:
                row["reputation"] = None
            rows.append(row)
        return reply({"peers": rows})

    async def peer_check(self, request: Request) -> Response:
        peer = peer_field(request.path_params["name"])
        return reply(await self.ask("peer", PeerCheck(peer), 15.0))

    async def talk(self, request: Request) -> Response:
        data = await body_of(request)
        peer = peer_field(data.get("peer"))
        text = text_field(data, "text")
        outcome = await self.ask("peer", PeerTalk(peer, text, conversation=f"web-{peer}"),
                                 self.talk_timeout + 5)
        return reply(outcome)

    async def tasks(self, request: Request) -> Response:
        return reply(await self.ask("peer", TasksGet()))

    async def ledger(self, request: Request) -> Response:
        balance = await self.ask("ledger", BalanceGet(), 10.0)
        entries = await self.ask("ledger", LedgerGet(limit=int_param(request, "limit", 50,
                                                                      1, 500)), 10.0)
        return reply({"balance": balance, "entries": entries.entries})

    # ---- the workspace ------------------------------------------------------------------

    async def commits(self, request: Request) -> Response:
        before = request.query_params.get("before", "")
        limit = int_param(request, "limit", 30, 1, 200)
        return reply(await self.ask("coder", CommitsGet(limit=limit, before=before), 30.0))

    async def commit_diff(self, request: Request) -> Response:
        return reply(await self.ask("coder", CommitDiffGet(request.path_params["sha"]), 30.0))

    async def services(self, request: Request) -> Response:
        """The services the entity runs, each with its loopback preview URL (served on a
        host of its own: never under this page's origin, where the agent's code would
        have the operator's session)."""
        return reply(await self.ask("services", ServicesGet()))
