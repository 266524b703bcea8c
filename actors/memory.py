"""The memory actor: the entity's memories, todo list and conversation log over the bus.

It owns one MemoryStore (actors/memory_store/) and answers the memory kinds of
actors/messages.py. Every memory carries its origin (the operator's, or a peer's turn),
and a search may ask for one origin only: that is how a peer's turn recalls its own
memories and nobody else's. It also keeps the token use and estimated cost of each LLM
call (usage_add, told by the actor that made the call) and sums them per hour and per task
(usage_get); those kinds are in actors/llm/messages.py. A request with an unacceptable
value (unknown kind or status, empty text, unknown todo id, a limit below 1) gets an
`error` reply with code `bad_request`; the actor keeps serving. Events (no free text,
only ids and kinds): `fed.evt.<entity>.memory.added` {kind, id, merged} and
`fed.evt.<entity>.memory.todo_changed` {id, status, priority, change: added|updated}.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import protocol
from entityd import Actor
from protocol import Envelope, reasons

from .llm.messages import UsageAdd, UsageGet, UsageHour, UsageReport, UsageTask
from .memory_store import (
    MAX_RECALL,
    MemoryStore,
    MemoryStoreError,
    SchemaTooNew,
    Todo,
    UsageCall,
    UsageWindow,
)
from .messages import (
    History,
    HistoryEntry,
    HistoryGet,
    LogAppend,
    MemoryAdd,
    MemoryHit,
    MemoryHits,
    MemoryRef,
    MemorySearch,
    TodoAdd,
    TodoItem,
    TodoItems,
    TodoList,
    TodoUpdate,
)
from .state_file import opened

MAX_HISTORY = 1000
CLOSE_TIMEOUT = 10.0


class MemoryActor(Actor):
    name = "memory"
    accepts = (MemoryAdd, MemorySearch, TodoAdd, TodoUpdate, TodoList, LogAppend, HistoryGet,
               UsageAdd, UsageGet)

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._store: MemoryStore | None = None

    @property
    def store(self) -> MemoryStore:
        if self._store is None:
            raise RuntimeError("the memory actor's store is not open (on_start has not run)")
        return self._store

    async def on_start(self) -> None:
        self._store = await opened(self.path, lambda: MemoryStore.open(
            self.path, synchronous=self.synchronous), newer=(SchemaTooNew,))

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, exc: BaseException) -> None:
        await self._close()  # the replacement opens its own connection

    async def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await store.close()

    async def handle(self, envelope: Envelope) -> object | None:
        try:
            return await self._dispatch(envelope.message, envelope.typ)
        except MemoryStoreError as exc:
            return protocol.Error(reasons.BAD_REQUEST, str(exc))

    async def _dispatch(self, message: object, typ: str) -> object | None:
        store = self.store
        match message:
            case MemoryAdd(kind, text, importance, source, origin):
                added = await store.add_memory(kind, text, importance, source, origin)
                await self.ctx.emit("added", kind=kind, id=added.id, merged=added.merged)
                return MemoryRef(added.id, added.merged)
            case MemorySearch(query, limit, kinds, origin):
                if limit < 1:
                    return protocol.Error(reasons.BAD_REQUEST,
                                          f"limit must be at least 1, not {limit}")
                recalled = await store.recall(query, min(limit, MAX_RECALL), kinds,
                                              origin=origin)
                return MemoryHits([
                    MemoryHit(r.memory.id, r.memory.kind, r.memory.text, r.memory.importance,
                              r.memory.uses, r.memory.created_at, r.score, r.memory.origin)
                    for r in recalled
                ])
            case TodoAdd(text, priority):
                todo = await store.add_todo(text, priority)
                await self._todo_changed(todo, "added")
                return TodoItems([_item(todo)])
            case TodoUpdate(todo_id, status, text):
                if status is None and text is None:
                    return protocol.Error(reasons.BAD_REQUEST, "todo_update changes nothing: "
                                          "give a status or a text")
                todo = await store.update_todo(todo_id, status=status, text=text)
                await self._todo_changed(todo, "updated")
                return TodoItems([_item(todo)])
            case TodoList(include_done):
                return TodoItems([_item(t) for t in await store.list_todos(
                    include_done=include_done)])
            case LogAppend(conversation, role, content, data):
                await store.append_log(conversation, role, content, data)
                return None
            case HistoryGet(conversation, limit):
                if limit < 1:
                    return protocol.Error(reasons.BAD_REQUEST,
                                          f"limit must be at least 1, not {limit}")
                entries = await store.history(conversation, min(limit, MAX_HISTORY))
                return History([
                    HistoryEntry(e.id, e.conversation, e.role, e.content, e.created_at)
                    for e in entries
                ])
            case UsageAdd(task_id, provider, model, prompt, completion, cost, ts, payer):
                await store.add_usage(UsageCall(task_id, provider, model, prompt, completion,
                                                cost, ts, payer))
                return None
            case UsageGet(since_s, task_limit):
                return _usage(await store.usage(since_s, task_limit))
        raise TypeError(f"memory does not handle {typ}")  # a kind in `accepts` without a case

    async def _todo_changed(self, todo: Todo, change: str) -> None:
        await self.ctx.emit("todo_changed", id=todo.id, status=todo.status,
                            priority=todo.priority, change=change)


def _item(todo: Todo) -> TodoItem:
    return TodoItem(todo.id, todo.text, todo.status, todo.priority, todo.created_at,
                    todo.updated_at)


def _usage(window: UsageWindow) -> UsageReport:
    return UsageReport(
        window.since,
        [UsageHour(h.hour, h.provider, h.model, h.calls, h.prompt_tokens, h.completion_tokens,
                   h.cost_micros, h.unknown_calls) for h in window.hours],
        [UsageTask(t.task_id, t.payer, t.first_ts_ms, t.last_ts_ms, t.calls, t.prompt_tokens,
                   t.completion_tokens, t.cost_micros, t.unknown_calls) for t in window.tasks],
    )
