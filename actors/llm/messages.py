"""The kinds of token use and cost: each LLM call is told to the memory actor, which keeps
it (actors/memory_store/usage.py) and answers per hour and per task.

Costs are integers, micro-dollars (millionths of a US dollar), estimated from list prices
(actors/llm/cost.py); a call to a model without a price has its tokens counted and its
cost unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import kind

DAY_S = 86_400


@kind("usage_add")
@dataclass(frozen=True, slots=True)
class UsageAdd:
    """One LLM call's tokens and estimated cost, told to `<entity>/memory` by the actor
    that made it."""

    task_id: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int | None = None  # micro-dollars; nil: the model has no known price
    ts: int = 0  # ms since the epoch of the call; 0: when memory stores it
    payer: str = ""  # whose turn: "" the operator, else the peer whose budget paid


@kind("usage_get")
@dataclass(frozen=True, slots=True)
class UsageGet:
    """Token use and cost from the start of the hour `since_s` seconds ago until now."""

    since_s: int = DAY_S
    task_limit: int = 50  # the newest tasks listed (at most 200)


@dataclass(frozen=True, slots=True)
class UsageHour:
    """The calls to one model within one hour."""

    hour: int  # unix seconds, the start of the hour (UTC)
    provider: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int  # of the calls whose cost is known
    unknown_calls: int  # calls of no known cost, not in cost_micros


@dataclass(frozen=True, slots=True)
class UsageTask:
    """The calls of one task (its turn, its lessons, its coder's work)."""

    task_id: str
    payer: str  # "" the operator, else the peer whose budget paid
    first_ts: int  # ms since the epoch, its first call in the window
    last_ts: int  # ... and its last
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int  # of the calls whose cost is known
    unknown_calls: int  # calls of no known cost, not in cost_micros


@kind("usage")
@dataclass(frozen=True, slots=True)
class UsageReport:
    """The answer to `usage_get`: hours oldest first (the newest 2000 rows at most), tasks
    newest (last call) first."""

    since: int  # unix seconds: the start of the window
    hours: list[UsageHour]
    tasks: list[UsageTask]
