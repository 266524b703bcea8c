"""What crosses the memory store's API: its records, its errors, and the checks on a
caller's values.

Every memory has an origin: whose words it holds. `operator` for what the entity's own
turns wrote (entityctl, autonomy, its todo list), `peer:<name>` for what a peer's turn
wrote (its talk, its report, its delegated task), and a comma-joined list of both kinds
when one turn held several (`operator,peer:entity-c`). What recall and merging make of
it is in store.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MEMORY_KINDS = ("fact", "lesson", "reflection", "episode")
OPERATOR = "operator"  # the origin of what the entity's own turns wrote
TODO_STATUSES = ("open", "doing", "done", "dropped")
MAX_ORIGIN = 4096

_ORIGIN_PART = re.compile(r"operator|peer:[a-z0-9-]{1,32}")


# ---- errors ----------------------------------------------------------------------------


class MemoryStoreError(Exception):
    """Base of the store's errors.

    MemoryStoreError
    ├── InvalidInput   a caller's value is unacceptable (kind, empty text, status, ...)
    ├── NotFound       no memory or todo with that id
    └── SchemaTooNew   the file was written by a newer entityd
    """


class InvalidInput(MemoryStoreError, ValueError):
    pass


class NotFound(MemoryStoreError, LookupError):
    pass


class SchemaTooNew(MemoryStoreError):
    pass


# ---- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    id: int
    kind: str
    text: str
    importance: float
    uses: int
    source: str
    created_at: float
    updated_at: float
    last_used_at: float | None
    superseded_by: int | None
    origin: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Recalled:
    """One recall result; `score` orders them, the parts show why (see store.py)."""

    memory: Memory
    score: float
    relevance: float
    recency: float
    bm25: float  # raw, positive: higher matches better


@dataclass(frozen=True, slots=True)
class Added:
    id: int
    merged: bool  # an existing memory absorbed this one instead of a new row


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory to import with `import_memories`."""

    kind: str
    text: str
    importance: float = 0.5
    source: str = ""
    origin: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Todo:
    id: int
    text: str
    status: str
    priority: int
    created_at: float
    updated_at: float
    closed_at: float | None


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    conversation: str
    role: str
    content: str
    data: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class UsageCall:
    """One LLM call's tokens and estimated cost, to store with `add_usage`."""

    task_id: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int | None  # micro-dollars; None: the model has no known price
    ts_ms: int = 0  # ms since the epoch; 0: the store's clock
    payer: str = ""  # "" the operator, else the peer whose budget paid


@dataclass(frozen=True, slots=True)
class HourUsage:
    hour: int  # unix seconds, the start of the hour
    provider: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int  # of the calls whose cost is known
    unknown_calls: int  # calls of no known cost


@dataclass(frozen=True, slots=True)
class TaskUsage:
    task_id: str
    payer: str
    first_ts_ms: int
    last_ts_ms: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int  # of the calls whose cost is known
    unknown_calls: int  # calls of no known cost


@dataclass(frozen=True, slots=True)
class UsageWindow:
    since: int  # unix seconds, the start of the first hour
    hours: list[HourUsage]  # oldest first
    tasks: list[TaskUsage]  # newest (last call) first


# ---- checks ----------------------------------------------------------------------------


def check_kind(kind: str) -> None:
    if kind not in MEMORY_KINDS:
        raise InvalidInput(f"unknown memory kind {kind!r} (one of {', '.join(MEMORY_KINDS)})")


def check_text(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise InvalidInput(f"{what} text is empty")
    return text


def check_importance(importance: float) -> float:
    if not isinstance(importance, int | float) or not 0.0 <= importance <= 1.0:
        raise InvalidInput(f"importance must be within 0..1, got {importance!r}")
    return float(importance)


def check_origin(origin: str) -> str:
    """`operator`, `peer:<name>` or a comma-joined list of them (module doc)."""
    if not origin or len(origin) > MAX_ORIGIN or not all(
            _ORIGIN_PART.fullmatch(part) for part in origin.split(",")):
        raise InvalidInput(f"origin {origin[:80]!r} is not operator, peer:<name> or a "
                           "comma-joined list of them")
    return origin


def check_status(status: str) -> None:
    if status not in TODO_STATUSES:
        raise InvalidInput(f"unknown todo status {status!r} (one of {', '.join(TODO_STATUSES)})")
