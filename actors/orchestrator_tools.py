"""The orchestrator's own tools: delegate to the coder, memory and the todo list, as one
turn's scope allows them (actors/turn_scope.py): memory is recalled and written under the
turn's origin, and the coder runs private and on the turn's budget when it should."""

from __future__ import annotations

from typing import Any

from entityd import Context

from .agent.toolbox import Tool, ToolFailed, integer, schema
from .messages import (
    MEMORY_KINDS,
    CodeResult,
    CodeTask,
    MemoryAdd,
    MemoryHits,
    MemoryRef,
    MemorySearch,
    TodoAdd,
    TodoItems,
    TodoList,
    TodoUpdate,
)
from .turn_scope import TurnScope

CODER_TIMEOUT_S = 3600.0
RECALL_TOOL_LIMIT = 8


def render_hits(hits: MemoryHits) -> str:
    return "\n".join(f"- [{h.kind} #{h.id}{_from(h.origin)}] {h.text}" for h in hits.hits)


def _from(origin: str) -> str:
    peers = [part.removeprefix("peer:") for part in origin.split(",") if part != "operator"]
    return f", from {', '.join(peers)}" if peers else ""


def render_todos(items: TodoItems) -> str:
    if not items.items:
        return "(the todo list is empty)"
    return "\n".join(f"#{t.id} [{t.status}] (p{t.priority}) {t.text}" for t in items.items)


class OrchestratorTools:
    """Builds the tools for one turn; `commits` and `diffstats` collect what the coder
    committed."""

    def __init__(self, ctx: Context, task_id: str, scope: TurnScope | None = None) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.scope = scope or TurnScope()
        self.commits: list[str] = []
        self.diffstats: list[str] = []

    def _addr(self, actor: str) -> str:
        return f"{self.ctx.entity}/{actor}"

    async def _ask(self, actor: str, message: object, timeout: float | None = None) -> Any:
        # An ask that fails raises the runtime's error: the toolbox makes it an observation.
        return await self.ctx.ask(self._addr(actor), message, timeout)

    def tools(self) -> list[Tool]:
        if self.scope.owner:
            recall = Tool("recall", "Search what you remember of your conversations with "
                          f"{self.scope.owner}.", schema({"query": "words to look for"}),
                          self.recall)
        else:
            recall = Tool("recall", "Search long-term memory: your own, and with peers=true "
                          "also what peers told you (their reports and talks). Reading a "
                          "peer's words makes the rest of the turn private and read-only.",
                          schema({"query": "words to look for"},
                                 {"peers": "true to include what peers said (default false)"},
                                 {"peers": "boolean"}),
                          self.recall)
        return [
            Tool("delegate_to_coder",
                 "Give a coding task to your coder, who edits the workspace, runs the tests "
                 "and has the work committed. Returns its summary and the commit.",
                 schema({"goal": "what to build or fix, and how to test it"},
                        {"context": "files, constraints, prior results"}),
                 self.delegate),
            Tool("remember", "Keep a fact (or a lesson) in long-term memory.",
                 schema({"text": "what to remember"},
                        {"kind": f"one of {', '.join(MEMORY_KINDS)} (default fact)",
                         "importance": "0 to 1 (default 0.5)"},
                        {"importance": "number"}),
                 self.remember),
            recall,
            Tool("todo_list", "Show the todo list.", schema({}), self.todo_list),
            Tool("todo_add", "Add an item to the todo list.",
                 schema({"text": "the item"}, {"priority": "higher first (default 0)"},
                        {"priority": "integer"}),
                 self.todo_add),
            Tool("todo_update", "Change an item's status (open, doing, done, dropped) or text.",
                 schema({"id": "the item's number"}, {"status": "new status", "text": "new text"},
                        {"id": "integer"}),
                 self.todo_update),
        ]

    async def delegate(self, args: dict[str, Any]) -> str:
        result: CodeResult = await self._ask(
            "coder",
            CodeTask(self.task_id, str(args["goal"]), str(args.get("context", "")),
                     self.scope.private, self.scope.payer, self.scope.owner),
            timeout=CODER_TIMEOUT_S,
        )
        if result.commit:
            self.commits.append(result.commit)
            self.diffstats.append(result.diffstat)
        lines = [f"coder {'finished' if result.ok else 'failed'}: {result.summary}"]
        if result.commit:
            lines.append(f"committed {result.commit[:12]}:\n{result.diffstat}")
        return "\n".join(lines)

    async def remember(self, args: dict[str, Any]) -> str:
        kind = str(args.get("kind", "fact"))
        try:
            importance = float(args.get("importance", 0.5))
        except (TypeError, ValueError):
            raise ToolFailed("importance must be a number from 0 to 1") from None
        ref: MemoryRef = await self._ask(
            "memory", MemoryAdd(kind, str(args["text"]), importance, f"task {self.task_id}",
                                self.scope.origin)
        )
        return f"{'updated' if ref.merged else 'remembered'} as #{ref.id}"

    async def recall(self, args: dict[str, Any]) -> str:
        peers = args.get("peers") in (True, "true", "True", 1)
        hits: MemoryHits = await self._ask("memory", MemorySearch(
            str(args["query"]), RECALL_TOOL_LIMIT, origin=self.scope.recall_origin(peers)))
        self.scope.hear_origins(h.origin for h in hits.hits)
        return render_hits(hits) or "(nothing found)"

    async def todo_list(self, args: dict[str, Any]) -> str:
        return render_todos(await self._ask("memory", TodoList()))

    async def todo_add(self, args: dict[str, Any]) -> str:
        items: TodoItems = await self._ask(
            "memory", TodoAdd(str(args["text"]), integer(args.get("priority", 0), "priority"))
        )
        return render_todos(items)

    async def todo_update(self, args: dict[str, Any]) -> str:
        status = args.get("status")
        text = args.get("text")
        items: TodoItems = await self._ask(
            "memory",
            TodoUpdate(integer(args["id"], "id"), None if status is None else str(status),
                       None if text is None else str(text)),
        )
        return render_todos(items)

