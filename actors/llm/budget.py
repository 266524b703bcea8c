"""Budgets that stop a runaway agent loop: tokens per sliding hour (the operator's, and
one per peer, so that peers never spend the operator's), steps per turn."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import BudgetExhausted

if TYPE_CHECKING:
    from .client import LLM, Completion

WINDOW_S = 3600.0
OPERATOR_SETTING = "llm.max_tokens_per_hour"
PEER_SETTING = "peers.max_tokens_per_hour"
# Peers with a budget kept at most; past it, budgets with nothing spent in the window
# (the same as a new one) are dropped first, then the least recently used.
MAX_PEER_BUDGETS = 1024


BUCKET_S = 10.0  # spends within one such span of the clock share a record


class TokenBudget:
    """At most `max_tokens_per_hour` tokens spent within any sliding hour; `setting`
    names the config key that sets it, for the message of a spent budget."""

    def __init__(
        self, max_tokens_per_hour: int, *, clock: Callable[[], float] = time.monotonic,
        setting: str = OPERATOR_SETTING, owner: str = "",
    ) -> None:
        if max_tokens_per_hour <= 0:
            raise ValueError(f"max_tokens_per_hour must be positive, got {max_tokens_per_hour}")
        self.limit = max_tokens_per_hour
        self.setting = setting
        self.owner = owner
        self._clock = clock
        self._spent: deque[tuple[float, int]] = deque()
        self._last_bucket = -1
        self._total = 0

    def __repr__(self) -> str:
        return f"TokenBudget(limit={self.limit}, used={self.used()})"

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - WINDOW_S:
            self._total -= self._spent.popleft()[1]

    def used(self) -> int:
        self._expire(self._clock())
        return self._total

    def remaining(self) -> int:
        return max(0, self.limit - self.used())

    def spend(self, tokens: int) -> None:
        if tokens < 0:
            raise ValueError(f"cannot spend a negative number of tokens ({tokens})")
        if tokens:
            now = self._clock()
            self._expire(now)
            bucket = int(now // BUCKET_S)
            if self._spent and bucket == self._last_bucket:
                # One record for the spends of a few seconds, kept until the last of them
                # leaves the window (never freed early): memory stays bounded whatever
                # the call rate (at most WINDOW_S / BUCKET_S records).
                self._spent[-1] = (now, self._spent[-1][1] + tokens)
            else:
                self._spent.append((now, tokens))
                self._last_bucket = bucket
            self._total += tokens

    def frees_in(self) -> float:
        """Seconds until some budget is available again (0 when some is left now)."""
        now = self._clock()
        self._expire(now)
        excess = self._total - self.limit
        if excess < 0:
            return 0.0
        for stamp, tokens in self._spent:
            excess -= tokens
            if excess < 0:
                return max(0.0, stamp + WINDOW_S - now)
        return 0.0  # unreachable: the whole window expiring frees everything

    def check(self) -> None:
        """Raise BudgetExhausted when no token is left in the current hour."""
        if self.remaining() > 0:
            return
        wait = self.frees_in()
        whose = f"{self.owner}'s " if self.owner else ""
        raise BudgetExhausted(
            "tokens",
            self.limit,
            f"{whose}token budget of {self.limit} per hour is spent; "
            f"it frees up in {_duration(wait)} ({self.setting})",
            frees_in=wait,
        )


class Budgets:
    """The operator's token budget and one per peer. A turn run for a peer (its talk,
    its delegated task, a wake it asked for) is paid from that peer's budget, so no peer
    can spend the operator's, nor another peer's."""

    def __init__(self, operator_per_hour: int, peer_per_hour: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.operator = TokenBudget(operator_per_hour, clock=clock)
        self.peer_per_hour = peer_per_hour
        self._clock = clock
        self._peers: dict[str, TokenBudget] = {}

    def of(self, payer: str) -> TokenBudget:
        """The budget that pays for `payer`'s turns: "" is the operator, else a peer."""
        if not payer:
            return self.operator
        budget = self._peers.pop(payer, None)  # re-inserted last: most recently used
        if budget is None:
            if len(self._peers) >= MAX_PEER_BUDGETS:
                self._prune()
            budget = TokenBudget(self.peer_per_hour, clock=self._clock, setting=PEER_SETTING,
                                 owner=payer)
        self._peers[payer] = budget
        return budget

    def _prune(self) -> None:
        for name in [n for n, b in self._peers.items() if b.used() == 0]:
            del self._peers[name]
        while len(self._peers) >= MAX_PEER_BUDGETS:
            del self._peers[next(iter(self._peers))]


class LLMSource(Protocol):
    """The daemon's model as its actors get it: one LLM per turn, metered against the
    budget of whoever pays for that turn ("" the operator, else a peer)."""

    def __call__(self, payer: str = "") -> LLM: ...

    def budget(self, payer: str = "") -> TokenBudget: ...


class Metered:
    """An LLM whose every call is checked against, then counted into, one budget."""

    def __init__(self, llm: LLM, budget: TokenBudget) -> None:
        self.llm = llm
        self.budget = budget

    async def generate(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None) -> Completion:
        self.budget.check()
        completion = await self.llm.generate(messages, tools)
        self.budget.spend(completion.usage.total_tokens)
        return completion


class StepBudget:
    """At most `max_steps` LLM steps in one turn; call step() before each."""

    def __init__(self, max_steps: int) -> None:
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.limit = max_steps
        self.used = 0

    def __repr__(self) -> str:
        return f"StepBudget(limit={self.limit}, used={self.used})"

    def remaining(self) -> int:
        return self.limit - self.used

    def step(self) -> None:
        if self.used >= self.limit:
            raise BudgetExhausted(
                "steps",
                self.limit,
                f"turn stopped after {self.limit} steps (llm.max_steps_per_turn)",
            )
        self.used += 1


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
